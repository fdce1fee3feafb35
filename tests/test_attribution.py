"""Which tests a class-level candidate reaches (`synthesizers/swe/attribution.py`), on hand-written classes, and
on the removed-method and reordered-methods candidates the synthesizer makes for a real package."""

import ast
import textwrap

from trajfactory.synthesizers.swe.attribution import References, removed_method, shuffled_methods
from trajfactory.schema import Candidate, Entity, ReferenceRun, Source
from trajfactory.settings import SynthesisConfig
from trajfactory.sources import harvest_repo
from trajfactory.synthesizers.swe import stage
from trajfactory.synthesizers.swe.validate import select_tests


def _class(source: str) -> ast.ClassDef:
    return next(n for n in ast.parse(textwrap.dedent(source)).body if isinstance(n, ast.ClassDef))


def _method(cls: ast.ClassDef, name: str):
    return next(s for s in cls.body if getattr(s, "name", None) == name)


def _refs(*sources: str) -> References:
    refs = References()
    for s in sources:
        refs.add(ast.parse(textwrap.dedent(s)))
    return refs


PLAIN = """
class C:
    def __init__(self):
        self.x = 1

    def area(self, k):
        '''The area.'''
        y = self.x * k
        return y

    def other(self):
        return 2
"""


def test_a_plain_method_is_attributed_by_its_body_lines():
    cls = _class(PLAIN)
    # the docstring is line 7, the body ends at line 9
    assert removed_method(cls, _method(cls, "area"), _refs(PLAIN)) == {"lines": [7, 9]}


def test_a_method_tests_can_notice_without_running_it_falls_back_to_the_whole_suite():
    cls = _class(PLAIN)
    area = _method(cls, "area")
    assert "full" in removed_method(cls, area, _refs(PLAIN, "def test_it(c):\n    assert hasattr(c, 'area')"))
    assert "full" in removed_method(cls, area, None)
    # the class's own body refers to it
    aliased = _class(PLAIN + "    size = area\n")
    assert "full" in removed_method(aliased, _method(aliased, "area"), _refs(PLAIN))
    # a use inside a function body runs only when called, and is then covered
    assert removed_method(cls, area, _refs(PLAIN, "def use(c):\n    return c.area(2)")) == {"lines": [7, 9]}
    # a bare name in another class's body or at module level is that scope's own, never the method
    assert removed_method(cls, area, _refs(PLAIN, "class D(C):\n    area = other\n", "area = 3\n")) == \
        {"lines": [7, 9]}


def _candidate(attribution: dict) -> Candidate:
    entity = Entity(file="m.py", name="C", kind="class", lineno=2, end_lineno=12, complexity=1)
    return Candidate(candidate_id="c", source_id="s", repo="r", base_commit="0" * 40, family="remove_methods",
                     scope="class", entity=entity, patch="", params={"attribution": attribution})


def test_an_attribute_use_outside_function_bodies_reaches_every_test_only_if_the_reference_run_executed_it():
    cls = _class(PLAIN)
    area = _method(cls, "area")
    cases = {
        "import": ("import m\nAREA_DOC = m.C.area.__doc__\n", 2),
        "collection": ("import pytest, m\n@pytest.mark.parametrize('f', [m.C.area])\ndef test_it(f):\n    pass\n", 3),
    }
    for what, (source, line) in cases.items():
        refs = References()
        refs.add(ast.parse(PLAIN), "m.py")
        refs.add(ast.parse(source), "tests/test_u.py")
        out = removed_method(cls, area, refs)
        assert out["lines"] == [7, 9] and list(out["import_time"]) == ["tests/test_u.py"], what
        assert any(a <= line <= b for a, b in out["import_time"]["tests/test_u.py"]), (what, out)
        body = {7: ["t::a"], 8: ["t::a"], 9: ["t::a"]}
        ran = ReferenceRun(image="i", tests={"t::a": "passed", "t::b": "passed"}, passing=["t::a", "t::b"],
                           coverage={"m.py": body, "tests/test_u.py": {line: ["<import>"]}})
        assert select_tests(_candidate(out), ran, "coverage") == (["t::a", "t::b"], "full"), what
        # the file never ran in the reference run (the docs' conf.py, an example script): the body's tests only
        never = ran.model_copy(update={"coverage": {"m.py": body}})
        assert select_tests(_candidate(out), never, "coverage") == (["t::a"], "coverage"), what


def test_what_defining_or_calling_a_method_does_decides_too():
    sources = {
        "cached": "import functools\nclass C:\n    @functools.lru_cache\n    def f(self):\n        return 1\n",
        "abstract": "import abc\nclass C(abc.ABC):\n    @abc.abstractmethod\n    def f(self):\n        return 1\n",
        "generator": "class C:\n    def f(self):\n        yield 1\n",
        "coroutine": "class C:\n    async def f(self):\n        return 1\n",
        "docstring only": "class C:\n    def f(self):\n        '''Nothing to do.'''\n",
        "dataclass": "import dataclasses\n@dataclasses.dataclass\nclass C:\n    x: int = 0\n    def f(self):\n"
                     "        return 1\n",
        "metaclass": "class C(metaclass=M):\n    def f(self):\n        return 1\n",
    }
    for what, source in sources.items():
        cls = _class(source)
        assert "full" in removed_method(cls, _method(cls, "f"), References()), what
    dunders = ("class C:\n    def __iter__(self):\n        yield 1\n",
               "class C:\n    def __len__(self):\n        ...\n")
    for dunder in dunders:
        cls = _class(dunder)
        reason = removed_method(cls, cls.body[0], References(), "m.py")["full"]
        assert "Python uses it without naming it" in reason, dunder
    sized = _class("class C:\n    def __len__(self):\n        return 1\n")
    assert "full" in removed_method(sized, sized.body[0], _refs("getattr(x, '__len__')"), "m.py")
    assert removed_method(sized, sized.body[0], References(), "m.py") == {"lines": [3, 3]}
    eq = _class("class C:\n    def __eq__(self, other):\n        return True\n")
    assert "full" in removed_method(eq, _method(eq, "__eq__"), References())  # it also sets __hash__ = None
    prop = _class("class C:\n    @property\n    def f(self):\n        return 1\n")
    assert removed_method(prop, _method(prop, "f"), References()) == {"lines": [4, 4]}


GENERATOR = '''
class C:
    def __init__(self):
        self.items = [1, 2]

    def pairs(self):
        for i in self.items:
            yield i, i

    def hook(self):
        """Subclasses fill it in."""
'''
USES = '''
def total(c):
    return sum(a for a, _ in c.pairs())


def make(c):
    gen = c.pairs
    return gen


def named(pairs):
    return pairs


def probe(c):
    return hasattr(c, "hook")
'''


def test_a_method_whose_call_runs_no_body_line_is_attributed_by_the_lines_that_name_it():
    refs = References()
    refs.add(ast.parse(GENERATOR), "pkg/c.py")
    refs.add(ast.parse(USES), "pkg/use.py")
    refs.add(ast.parse("from pkg import use\n\ndef test_total():\n    assert use.total(None) == 0\n"), "tests/t.py")
    cls = _class(GENERATOR)
    out = removed_method(cls, _method(cls, "pairs"), refs, "pkg/c.py")
    # the two attribute uses inside function bodies and the generator's own body; a bare `pairs` is a parameter
    assert out == {"refs": {"pkg/c.py": [[7, 8]], "pkg/use.py": [[3, 3], [7, 7]]}, "import_time": {}}
    # a docstring only, named as a string in a function body
    hook = removed_method(cls, _method(cls, "hook"), refs, "pkg/c.py")
    assert hook == {"refs": {"pkg/c.py": [[11, 11]], "pkg/use.py": [[16, 16]]}, "import_time": {}}
    assert "full" in removed_method(cls, _method(cls, "pairs"), refs)  # no file given: the whole suite
    entity = Entity(file="pkg/c.py", name="C", kind="class", lineno=2, end_lineno=11, complexity=1)
    candidate = Candidate(candidate_id="c", source_id="s", repo="r", base_commit="0" * 40, family="remove_methods",
                          scope="class", entity=entity, patch="", params={"attribution": out})
    tests = ["t::a", "t::b", "t::c"]
    ran = ReferenceRun(image="i", tests={t: "passed" for t in tests}, passing=tests,
                       coverage={"pkg/use.py": {3: ["t::a"], 7: ["t::b"]}, "pkg/c.py": {4: ["t::c"]}})
    assert select_tests(candidate, ran, "coverage") == (["t::a", "t::b"], "coverage")
    # a line naming it that ran outside any test (at import time): every test can reach it
    imported = ran.model_copy(update={"coverage": {"pkg/use.py": {3: ["<import>"]}}})
    assert select_tests(candidate, imported, "coverage")[1] == "full"
    # used outside function bodies in a file the reference run executed: the whole suite
    refs.add(ast.parse("from pkg.c import C\nPAIRS = C.pairs\n"), "pkg/table.py")
    early = removed_method(cls, _method(cls, "pairs"), refs, "pkg/c.py")
    assert early["import_time"] == {"pkg/table.py": [[2, 2]]}
    ran_table = ran.model_copy(update={"coverage": {**ran.coverage, "pkg/table.py": {2: ["<import>"]}}})
    assert select_tests(candidate.model_copy(update={"params": {"attribution": early}}), ran_table,
                        "coverage")[1] == "full"
    # a plain method named as a string: the tests that ran its body and the ones that ran the string's line; a
    # module's `__all__` does not count, and a string at module level is a use at import time
    plain = _class(PLAIN)
    refs = _refs(PLAIN)
    refs.add(ast.parse(PLAIN), "pkg/c.py")
    refs.add(ast.parse("__all__ = ['area']\n\ndef test_it(c):\n    assert hasattr(c, 'area')\n"), "tests/t.py")
    assert removed_method(plain, _method(plain, "area"), refs, "pkg/c.py") == {
        "refs": {"pkg/c.py": [[7, 9]], "tests/t.py": [[4, 4]]}, "import_time": {}}
    refs.add(ast.parse("NAMES = ['area']\n"), "pkg/names.py")
    assert removed_method(plain, _method(plain, "area"), refs, "pkg/c.py")["import_time"] == {"pkg/names.py": [[1, 1]]}


def test_reordering_is_judged_by_what_the_class_body_sees():
    assert "none" in shuffled_methods(_class(PLAIN))
    sources = {
        "alias": "class C:\n    def f(self):\n        return 1\n    def g(self):\n        return 2\n    h = f\n",
        "setter": "class C:\n    @property\n    def x(self):\n        return 1\n    @x.setter\n    def x(self, v):\n"
                  "        pass\n",
        "twice": "class C:\n    def f(self):\n        return 1\n    def f(self):\n        return 2\n",
        "registry": "class C:\n    @register\n    def f(self):\n        return 1\n    def g(self):\n        return 2\n",
        "default": "class C:\n    def f(self, n=next(counter)):\n        return n\n    def g(self, n=next(counter)):\n"
                   "        return n\n",
        "decorated class": "@total_ordering\nclass C:\n    def __lt__(self, o):\n        return 1\n"
                           "    def __eq__(self, o):\n        return 1\n",
    }
    for what, source in sources.items():
        assert "full" in shuffled_methods(_class(source)), what


def test_the_synthesizer_records_the_attribution_on_a_real_package(tmp_path):
    # isodate 0.7.2 (30 candidates, seed 0): Duration's `__radd__ = __add__` pins its method order; removing `__str__` or `__sub__` is
    # noticed only by the tests that ran them
    source = harvest_repo("pypi:isodate==0.7.2", tmp_path / "mirrors")
    assert isinstance(source, Source), source
    candidates, _ = stage.synthesize(source, SynthesisConfig(max_candidates_per_repo=30, seed=0), tmp_path / "co")
    by_family = {}
    for c in candidates:
        by_family.setdefault(c.family, []).append(c.params.get("attribution"))
    removed = by_family["remove_methods"]  # a method used in its class only: its lines; one named elsewhere: refs
    assert any(set(a) == {"lines"} for a in removed), removed
    assert all(set(a) == {"lines"} or (a["refs"] and all((tmp_path / "co").glob(f"*/{f}") for f in a["refs"]))
               for a in removed), removed
    assert by_family["shuffle_methods"] and all("__add__" in a["full"] for a in by_family["shuffle_methods"])
    # LocalTimezone(tzinfo): a datetime type is a plain base, the lines naming the class are found, and the module-level
    # `LOCAL = LocalTimezone()` is kept as a use at import time (the selection then runs the whole suite)
    (base,) = by_family["remove_base_class"]
    assert base["names"] == ["LocalTimezone"] and list(base["import_time"]) == ["src/isodate/tzinfo.py"]
    assert all(c.params.get("attribution") is None for c in candidates if c.scope == "function")
    # every entity knows where its body starts (a body line is attributed within the body, `validate.select_tests`)
    assert all(c.entity.lineno <= c.entity.body_lineno <= c.entity.end_lineno for c in candidates)
