"""Which tests a removed base class reaches (`synthesizers/swe/base_removal.py`): the lines naming the class, its
subclasses and aliases, and the fallbacks to the whole suite, on a hand-written package."""

import ast
import textwrap

from trajfactory.schema import Candidate, Entity, ReferenceRun
from trajfactory.synthesizers.swe.attribution import References
from trajfactory.synthesizers.swe.base_removal import removed_base
from trajfactory.synthesizers.swe.validate import select_tests

EXC = """
class BaseError(Exception):
    pass


class Unfeasible(BaseError):
    def describe(self):
        return "unfeasible: " + super().__str__()


class Deeper(Unfeasible):
    pass
"""
ALGO = """
from pkg.exc import Unfeasible, Deeper as Deep


def solve(x: int) -> int:
    if x < 0:
        raise Unfeasible("negative")
    try:
        return check(x)
    except Deep:
        return 0


def check(x):
    if x > 100:
        raise Deep("too big")
    return x
"""
TESTS = """
import pytest
from pkg import algo, exc

__all__ = ["Unfeasible"]


def test_negative():
    with pytest.raises(exc.Unfeasible):
        algo.solve(-1)


def test_plain():
    assert algo.solve(3) == 3
"""
FILES = {"pkg/exc.py": EXC, "pkg/algo.py": ALGO, "tests/test_algo.py": TESTS}


def _refs(files: dict[str, str]) -> References:
    refs = References()
    for rel, source in files.items():
        refs.add(ast.parse(textwrap.dedent(source)), rel)
    return refs


def _class(name: str, source: str = EXC) -> ast.ClassDef:
    return next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == name)


def _line(source: str, text: str) -> int:
    return next(i for i, line in enumerate(source.splitlines(), 1) if text in line)


def test_a_removed_base_is_attributed_to_the_lines_naming_the_class_its_subclasses_and_aliases():
    out = removed_base(_class("Unfeasible"), "BaseError", "pkg/exc.py", _refs(FILES))
    assert out["names"] == ["Deep", "Deeper", "Unfeasible"]
    describe = _line(EXC, 'return "unfeasible')
    assert out["refs"] == {
        "pkg/exc.py": [[describe, describe]],  # its own method (a super() call)
        "pkg/algo.py": [[_line(ALGO, "raise Unfeasible")] * 2, [_line(ALGO, "except Deep")] * 2,
                        [_line(ALGO, 'raise Deep("too big")')] * 2],
        "tests/test_algo.py": [[_line(TESTS, "pytest.raises")] * 2],
    }
    # an undecorated function's annotations and a module's __all__ do not count as uses, nor do annotations under
    # decorators that never read them
    blind = "import typing\nfrom pkg.exc import Unfeasible\n\n\nclass K:\n    @property\n" \
            "    def p(self) -> Unfeasible:\n        pass\n\n    @typing.overload\n" \
            "    def q(self, e: Unfeasible) -> None: ...\n"
    assert removed_base(_class("Unfeasible"), "BaseError", "pkg/exc.py", _refs({**FILES, "pkg/k.py": blind}))[
        "import_time"] == {}


def test_a_use_at_import_time_reaches_the_whole_suite_when_the_reference_run_executed_it():
    cases = {
        "a registry": ("pkg/registry.py", "from pkg.exc import Unfeasible\nCODES = {Unfeasible: 3}\n", 2),
        "parametrized": ("tests/test_p.py", "import pytest\nfrom pkg import exc\n\n"
                                            "@pytest.mark.parametrize('e', [exc.Unfeasible])\ndef test_p(e):\n"
                                            "    pass\n", 4),
        "a decorated function's annotation": ("pkg/d.py", "import functools\nfrom pkg.exc import Unfeasible\n\n"
                                                          "@functools.singledispatch\ndef f(e: Unfeasible):\n"
                                                          "    pass\n", 5),
    }
    entity = Entity(file="pkg/exc.py", name="Unfeasible", kind="class", lineno=6, end_lineno=8, complexity=1)
    for what, (rel, source, line) in cases.items():
        out = removed_base(_class("Unfeasible"), "BaseError", "pkg/exc.py", _refs({**FILES, rel: source}))
        assert list(out["import_time"]) == [rel] and any(a <= line <= b for a, b in out["import_time"][rel]), out
        candidate = Candidate(candidate_id="b", source_id="s", repo="r", base_commit="0" * 40,
                              family="remove_base_class", scope="class", entity=entity, patch="",
                              params={"attribution": out})
        ran = ReferenceRun(image="i", tests={"t::a": "passed"}, passing=["t::a"],
                           coverage={rel: {line: ["<import>"]}, "pkg/algo.py": {6: ["t::a"]}})
        assert select_tests(candidate, ran, "coverage") == (["t::a"], "full"), what
        # a file the reference run never executed (an example script): its uses reach no test
        never = ran.model_copy(update={"coverage": {"pkg/algo.py": {_line(ALGO, "raise Unfeasible"): ["t::a"]}}})
        assert select_tests(candidate, never, "coverage") == (["t::a"], "coverage"), what


def test_uses_the_reading_cannot_follow_fall_back_to_the_whole_suite():
    cases = {
        "a string": {**FILES, "pkg/names.py": "def pick(m):\n    return getattr(m, 'Unfeasible')\n"},
        "a decorated subclass": {**FILES, "pkg/sub.py": "import dataclasses\nfrom pkg.exc import Unfeasible\n\n"
                                                       "@dataclasses.dataclass\nclass Odd(Unfeasible):\n    pass\n"},
    }
    for what, files in cases.items():
        out = removed_base(_class("Unfeasible"), "BaseError", "pkg/exc.py", _refs(files))
        assert "full" in out, (what, out)
    # a file nested deeper than the reading can follow (a generated expression): the whole suite, never a crash
    refs = _refs(FILES)
    refs.trees["pkg/deep.py"] = ast.Module(body=[ast.Expr(_nested(3000))], type_ignores=[])
    assert removed_base(_class("Unfeasible"), "BaseError", "pkg/exc.py", refs) == {
        "full": "pkg/deep.py is nested too deeply to read"}


def _nested(depth: int) -> ast.expr:
    node: ast.expr = ast.Name("x", ast.Load(), lineno=1, end_lineno=1)
    for _ in range(depth):
        node = ast.UnaryOp(ast.Not(), node, lineno=1, end_lineno=1)
    return node


def test_a_base_that_may_act_at_class_creation_falls_back_to_the_whole_suite():
    meta = EXC + "\n\nclass Meta(type):\n    pass\n\n\nclass Registered(metaclass=Meta):\n    pass\n" \
                 "\n\nclass Hooked:\n    def __init_subclass__(cls):\n        pass\n"
    refs = _refs({**FILES, "pkg/exc.py": meta})
    cls = _class("Unfeasible", meta)
    assert "refs" in removed_base(cls, "Exception", "pkg/exc.py", refs)  # a builtin type
    assert "refs" in removed_base(cls, "BaseError", "pkg/exc.py", refs)  # a plain class of the project
    assert "refs" in removed_base(cls, "collections.abc.Mapping", "pkg/exc.py", refs)  # an ABC of the stdlib
    for base in ("Registered", "Hooked", "Generic[T]", "SomewhereElse", "random.Random"):
        assert "full" in removed_base(cls, base, "pkg/exc.py", refs), base
    decorated = _class("Odd", "import dataclasses\n@dataclasses.dataclass\nclass Odd(BaseError):\n    pass\n")
    assert "full" in removed_base(decorated, "BaseError", "pkg/odd.py", refs)


def test_the_selection_runs_the_tests_that_ran_those_lines():
    refs = _refs(FILES)
    attribution = removed_base(_class("Unfeasible"), "BaseError", "pkg/exc.py", refs)
    raise_line, except_line = _line(ALGO, "raise Unfeasible"), _line(ALGO, "except Deep")
    ref = ReferenceRun(image="i", tests={"t::neg": "passed", "t::plain": "passed", "t::other": "passed"},
                       passing=["t::neg", "t::other", "t::plain"],
                       coverage={"pkg/algo.py": {raise_line: ["t::neg"], raise_line - 1: ["t::neg", "t::plain"]},
                                 "tests/test_algo.py": {_line(TESTS, "pytest.raises"): ["t::neg"]}})
    entity = Entity(file="pkg/exc.py", name="Unfeasible", kind="class", lineno=6, end_lineno=8, complexity=1)
    candidate = Candidate(candidate_id="b", source_id="s", repo="r", base_commit="0" * 40, family="remove_base_class",
                          scope="class", entity=entity, patch="", params={"attribution": attribution})
    assert select_tests(candidate, ref, "coverage") == (["t::neg"], "coverage")
    # a line naming the class that ran at import time, or in a fixture: the whole suite
    for marker in ("<import>", "<fixture>"):
        late = ref.model_copy(update={"coverage": {**ref.coverage, "pkg/algo.py": {except_line: [marker]}}})
        assert select_tests(candidate, late, "coverage") == (ref.passing, "full")
    # the whole suite where the attribution fell back
    full = candidate.model_copy(update={"params": {"attribution": {"full": "why"}}})
    assert select_tests(full, ref, "coverage") == (ref.passing, "full")
