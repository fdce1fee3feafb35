from pathlib import Path

import pytest

from trajfactory.settings import RecipeError, load_recipe


def test_default_recipe_loads_and_has_a_stable_digest():
    recipe = load_recipe(None)
    assert [r.uri for r in recipe.repos][0] == "builtin:textkit"
    assert recipe.digest() == load_recipe(None).digest()


def test_digest_ignores_where_things_are_written(tmp_path):
    a = load_recipe(None)
    b = a.model_copy(update={"work_dir": str(tmp_path)})
    assert a.digest() == b.digest()
    c = a.model_copy(update={"synthesis": a.synthesis.model_copy(update={"seed": 7})})
    assert a.digest() != c.digest()


@pytest.mark.parametrize(
    "text, field",
    [
        ("repos: 3\n", "repos"),
        ("repos: []\n", "(top level)"),
        ("repos: []\nweb:\n  browsers: 0\n", "web.browsers"),
        ("repos:\n  - uri: pypi:inflection\n", "repos.0.uri"),
        ("repos:\n  - uri: builtin:nope\n", "repos.0.uri"),
        ("repos:\n  - builtin:textkit\n  - pypi:inflection\n", "repos.1.uri"),  # the shorthand is checked alike
        ("repos:\n  - [builtin:textkit]\n", "repos.0"),
        ("repos:\n  - uri: x\nvalidation:\n  selection: fast\n", "validation.selection"),
        ("repos:\n  - uri: x\nsandbox:\n  concurrency: 0\n", "sandbox.concurrency"),
        ("repos:\n  - uri: x\nsynthesis:\n  sed: 1\n", "synthesis.sed"),
    ],
)
def test_bad_recipe_names_file_and_field(tmp_path: Path, text, field):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(path) in str(err.value)
    assert f"field `{field}`" in str(err.value)


def test_a_repository_entry_may_be_its_uri_alone(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("repos:\n  - pypi:inflection@latest:2\n  - uri: builtin:textkit\n    test_requirements: [six]\n")
    repos = load_recipe(path).repos
    assert [(r.uri, r.test_requirements) for r in repos] == [("pypi:inflection@latest:2", []),
                                                              ("builtin:textkit", ["six"])]


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("repos: [\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "missing.yaml")


@pytest.mark.parametrize("section, named", [
    ("rollout:\n  policies: [oracle, model]\n", "rollout.policies: [model]"),
    ("judge:\n  enabled: true\n", "judge.enabled"),
    ("synthesis:\n  statements: model\n", "synthesis.statements: model"),
    ("synthesis:\n  lm_rewrite: {enabled: true}\n", "synthesis.lm_rewrite.enabled"),
])
def test_a_model_step_without_a_model_section_names_the_field(tmp_path, section, named):
    path = tmp_path / "recipe.yaml"
    path.write_text("repos:\n  - uri: builtin:textkit\n" + section)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(path) in str(err.value) and named in str(err.value) and "`model:`" in str(err.value)
    path.write_text("repos:\n  - uri: builtin:textkit\n" + section + "model:\n  serve: builtin:tiny\n")
    assert load_recipe(path).uses_model()


def test_model_serve_and_base_url_are_exclusive(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("repos:\n  - uri: builtin:textkit\nmodel:\n  serve: builtin:tiny\n  base_url: http://127.0.0.1:1/v1\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert "field `model`" in str(err.value) and "exactly one of `serve:`" in str(err.value)
    path.write_text("repos:\n  - uri: builtin:textkit\nmodel:\n  serve: null\n  base_url: http://127.0.0.1:1/v1\n")
    recipe = load_recipe(path)
    assert recipe.model.base_url and not recipe.uses_model()  # a model section alone asks for no model work


def test_the_default_recipe_runs_every_model_step_with_the_tiny_model():
    recipe = load_recipe(None)
    assert recipe.uses_model() and recipe.model.serve == "builtin:tiny"
    assert recipe.rollout.policies == ["oracle", "model"] and recipe.judge.enabled
    assert recipe.synthesis.lm_rewrite.enabled and recipe.synthesis.statements == "model"


@pytest.mark.parametrize("section, field", [
    ("rollout:\n  policies: [oracle, oracle]\n", "rollout.policies"),
    ("web:\n  policies: [replay, replay]\n", "web.policies"),
])
def test_a_policy_named_twice_is_an_error_naming_the_list(tmp_path, section, field):
    path = tmp_path / "recipe.yaml"
    path.write_text("repos:\n  - uri: builtin:textkit\n" + section)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert f"field `{field}`" in str(err.value) and "name each policy once" in str(err.value)


@pytest.mark.parametrize("text, expected", [
    ("repos: [{uri: builtin:textkit}]\nsandbox: {memroy: 2g}\n",
     r"field `sandbox.memroy`: Extra inputs are not permitted \(did you mean `memory`\?\); the keys of sandbox: "
     r"backend, command_timeout_s, concurrency, cpus, disk, memory, output_limit, pids"),
    ("reops: [{uri: builtin:textkit}]\nweb: {tutorials: [builtin:docs]}\n",
     r"field `reops`: .*\(did you mean `repos`\?\); the keys of the recipe: .*dataset, judge, model, name, repos"),
    ("repos: [{uri: builtin:textkit, revison: v1}]\n",
     r"field `repos.0.revison`: Extra inputs are not permitted; the keys of repos: bug_patches, ignore_tests, test_env, test_requirements, uri"),
    ("repos: [{uri: builtin:textkit}]\ntrain: {sft: {max_step: 3}}\n",
     r"field `train.sft.max_step`: .*\(did you mean `max_steps`\?\); the keys of train.sft: batch_size, "),
])
def test_an_unknown_key_gets_the_valid_keys_and_the_closest_match(tmp_path, text, expected):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=expected):
        load_recipe(path)


@pytest.mark.parametrize("path", ["/etc/tests", "../other/tests", "tests/../../x", " "])
def test_an_ignored_test_path_outside_the_repository_is_an_error_naming_it(tmp_path, path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"repos:\n  - uri: builtin:textkit\n    ignore_tests: [tests/ok.py, '{path}']\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe)
    assert "field `repos.0.ignore_tests`" in str(err.value) and f"{path!r} is not a path inside the repository" \
        in str(err.value), str(err.value)
    recipe.write_text("repos:\n  - uri: builtin:textkit\n    ignore_tests: [tests/slow/, ' tests/test_gil.py']\n")
    assert load_recipe(recipe).repos[0].ignore_tests == ["tests/slow", "tests/test_gil.py"]


@pytest.mark.parametrize("entry, expected", [
    ("{'MSGPACK PURE': '1'}", "'MSGPACK PURE' is not an environment variable name"),
    ("{PYTHONPATH: /tmp/x}", "'PYTHONPATH' is the sandbox's own"),
    ("{TRAJFACTORY_ADDOPTS: -p no:x}", "'TRAJFACTORY_ADDOPTS' is the sandbox's own"),
    ("{PATH: /tmp}", "'PATH' is the sandbox's own"),
    ("{X: \"a\\nb\"}", "the value of 'X' holds a newline"),
])
def test_a_test_variable_the_sandbox_relies_on_or_no_name_at_all_is_an_error_naming_it(tmp_path, entry, expected):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"repos:\n  - uri: builtin:textkit\n    test_env: {entry}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe)
    assert "field `repos.0.test_env`" in str(err.value) and expected in str(err.value), str(err.value)
    recipe.write_text("repos:\n  - uri: builtin:textkit\n    test_env: {MSGPACK_PUREPYTHON: '1'}\n")
    assert load_recipe(recipe).repos[0].test_env == {"MSGPACK_PUREPYTHON": "1"}
