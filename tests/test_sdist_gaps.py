"""What a real sdist leaves out of its suite is named in its quarantine reason, and a test requirement it leaves out
can be added in the recipe.

| package | what its sdist lacks |
|---|---|
| backoff 2.2.1 | any test file |
| jmespath 1.1.0 | `tests/__init__.py`, from which every test module imports `unittest` |
| peewee 4.5.3 | all of its suite but `tests/test_utils.py`, which imports `.base` from its package |
| funcy 2.1 | its `test_requirements.txt`: the tests import `whatever` |
| pycodestyle 2.15.0 | its `testing/` folder, which the tests import and its `setup.cfg` names |
| chardet 7.7.0 | its test data, which its conftest clones from GitHub while pytest collects |
| mccabe 0.7.0 | `hypothesis` and `hypothesmith`: imported under a guard, yet `@settings(...)` runs at import |
| cattrs 26.2.1 | what its optional extras install (`msgspec`, `bson`), and `yaml`: its maintainers' run installs every extra |
"""

from __future__ import annotations

import pytest

from trajfactory.pipelines import swe
from trajfactory.schema import Quarantine, ReferenceRun, Source
from trajfactory.settings import Recipe, RecipeError, load_recipe
from trajfactory.sources import harvest_repo
from trajfactory.synthesizers.swe import stage

from mining import LIMITS, QUICK


def _reference(backend, mirrors, uri: str, recipe: Recipe | None = None) -> ReferenceRun | Quarantine:
    source = harvest_repo(uri, mirrors)
    assert isinstance(source, Source), source
    env = swe.build_environment(recipe, source) if recipe else stage.build_environment(backend, source)
    assert not isinstance(env, Quarantine), env
    return stage.reference(backend, env, source, QUICK, LIMITS)


@pytest.mark.docker
def test_what_an_sdist_leaves_out_of_its_suite_is_named(docker_backend, mirrors):
    backoff = _reference(docker_backend, mirrors, "pypi:backoff==2.2.1")
    assert isinstance(backoff, Quarantine) and backoff.reason == "no_tests", backoff
    assert "the package ships no tests" in backoff.detail, backoff.detail
    jmespath = _reference(docker_backend, mirrors, "pypi:jmespath==1.1.0")
    assert isinstance(jmespath, Quarantine) and jmespath.reason == "collection_failed", jmespath
    assert "without its `tests/__init__.py`" in jmespath.detail and "mine the repository" in jmespath.detail
    peewee = _reference(docker_backend, mirrors, "pypi:peewee==4.5.3")
    assert isinstance(peewee, Quarantine) and peewee.reason == "collection_failed", peewee
    assert "`tests/test_utils.py` imports `.base` relative to its package `tests`, which this checkout holds without " \
        "its `tests/__init__.py` and `tests/base.py`" in peewee.detail and "Mine the repository" in peewee.detail
    funcy = _reference(docker_backend, mirrors, "pypi:funcy==2.1")
    assert isinstance(funcy, Quarantine) and funcy.reason == "collection_failed", funcy
    assert "the suite imports `whatever`" in funcy.detail and "`test_requirements`" in funcy.detail, funcy.detail
    pycodestyle = _reference(docker_backend, mirrors, "pypi:pycodestyle==2.15.0")
    assert isinstance(pycodestyle, Quarantine) and pycodestyle.reason == "collection_failed", pycodestyle
    assert "the suite imports `testing`, a folder of the project that its configuration names (setup.cfg:" in \
        pycodestyle.detail and "`test_requirements`" not in pycodestyle.detail, pycodestyle.detail
    chardet = _reference(docker_backend, mirrors, "pypi:chardet==7.7.0")
    assert isinstance(chardet, Quarantine) and chardet.reason == "needs_network", chardet
    assert "the suite reaches the network while pytest collects it (it fetches https://github.com/chardet/test-data.git)" \
        ", and a sandbox has none" in chardet.detail, chardet.detail
    mccabe = _reference(docker_backend, mirrors, "pypi:mccabe==0.7.0")
    assert isinstance(mccabe, Quarantine) and mccabe.reason == "collection_failed", mccabe
    assert "the suite imports `hypothesmith`, `hypothesis` under a guard (test_mccabe.py:10: `try: ... except " \
        "ImportError`) and then uses `settings`" in mccabe.detail and "`test_requirements`" in mccabe.detail, \
        mccabe.detail
    # the errors come before a long warnings summary, which fills the detail's tail: every missing module is named,
    # with the extra of the project that installs it where one does
    cattrs = _reference(docker_backend, mirrors, "pypi:cattrs==26.2.1")
    assert isinstance(cattrs, Quarantine) and cattrs.reason == "collection_failed", cattrs
    assert "the suite imports `msgspec` (the project's optional extra `msgspec` installs `msgspec>=0.21.1" in \
        cattrs.detail and "`yaml`, `bson` (the project's optional extra `bson` installs `pymongo>=4.4.0`), which " \
        "are not in the checkout" in cattrs.detail and "`test_requirements`" in cattrs.detail, cattrs.detail


@pytest.mark.docker
def test_a_test_requirement_the_sdist_leaves_out_is_added_in_the_recipe(docker_backend, mirrors, tmp_path):
    """funcy's entry names `whatever` (for every release `@latest:N` resolves to); its image installs it, and the
    suite runs."""
    recipe = Recipe(work_dir=str(tmp_path), sandbox=LIMITS,
                    repos=[{"uri": "pypi:funcy@latest:1", "test_requirements": ["whatever"]}])
    ref = _reference(docker_backend, mirrors, "pypi:funcy==2.1", recipe)
    assert isinstance(ref, ReferenceRun), ref
    assert len(ref.passing) > 100 and any(t.startswith("tests/test_seqs.py::") for t in ref.passing)


def test_a_test_requirement_pip_cannot_read_is_refused_naming_it(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("repos:\n  - uri: pypi:funcy==2.1\n    test_requirements: ['whatever', 'what ever>=']\n")
    with pytest.raises(RecipeError, match=r"'what ever>=' is not a requirement pip understands .* PEP 508"):
        load_recipe(recipe)
    entry = Recipe(repos=[{"uri": "pypi:Fun_Cy@latest:2"}]).repos[0].uri  # names compare as pip compares them
    assert swe.asks_for(entry, "pypi:fun-cy==2.1") and swe.asks_for(entry, "pypi:FUN.CY==2.0") and \
        swe.asks_for(entry, "pypi:Fun_Cy@latest:2")
    assert not swe.asks_for(entry, "pypi:funcy==2.1") and not swe.asks_for(entry, "pypi:fun-cy-extra==2.1")
