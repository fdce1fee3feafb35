"""Procedural bug synthesis: entities, the thirteen families, splicing and git-style patches."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

from trajfactory.schema import content_hash
from trajfactory.synthesizers.swe.entities import complexity, list_entities, parse_file
from trajfactory.synthesizers.swe.mutations import FAMILIES
from trajfactory.synthesizers.swe.procedural import generate_candidates, resolve_families, unified_diff

SAMPLE = '''\
"""Shapes and summaries."""
import contextlib


class Base:
    kind = "base"


class Shape(Base, metaclass=type):
    """A shape."""

    def __init__(self, width, height):
        self.width = width
        self.height = height

    def area(self):
        # area is width times height
        if self.width < 0 or self.height < 0 or self.width > 100:
            raise ValueError("négatif")
        return self.width * self.height

    @property
    def perimeter(self):
        total = 0
        for side in (self.width, self.height):
            total += 2 * side
        return total


def summarize(values, limit=10):
    """Summarize values."""
    result = []
    count = 0
    seen = set()
    for v in values:
        if v in seen:
            continue
        seen.add(v)
        if v > limit:
            result.append(limit)
        else:
            result.append(v)
        count += 1
    with contextlib.suppress(KeyError):
        result.append(count)
    try:
        total = sum(result) - count - 1
    except TypeError:
        total = 0
    return result, total, (count + 1 + limit) % 7


def label(name, n):
    text = "é-" + name * 2
    while n > 0:
        n -= 1
    return text'''  # no newline at the end: patches must say so

# Entities where a family has no site: (family, entity name).
NEGATIVE = '''\
class Plain:
    def __init__(self, value):
        setattr(self, "value", value)


class Obj(object):
    def __init__(self):
        pass


def plain(a, b):
    """Doc."""
    return combine(a, b)


def classify(x, y):
    if x < y:
        return "low"
    elif x > y:
        return "high"


def pair(a, b):
    return a + b


def same(a):
    return a - a
'''
CANNOT = [
    ("remove_base_class", "Plain"), ("remove_base_class", "Obj"), ("remove_methods", "Plain"),
    ("shuffle_methods", "Plain"), ("invert_if_else", "classify"), ("invert_if_else", "plain"),
    ("shuffle_statements", "plain"), ("remove_assignment", "plain"), ("remove_conditional", "plain"),
    ("remove_loop", "classify"), ("remove_wrapper", "classify"), ("break_chains", "pair"),
    ("change_constants", "plain"), ("change_operator", "plain"), ("swap_operands", "same"),
]


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode())
    return root


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return _write(tmp_path / "repo", {"pkg/shapes.py": SAMPLE, "pkg/negative.py": NEGATIVE})


def _generate(root: Path, **kw):
    kw.setdefault("min_complexity", 1)
    return generate_candidates(root, source_id="src", repo="demo", base_commit="abc123", **kw)


def _git(cwd: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, input=stdin, text=True, capture_output=True)


def _entity_nodes(root: Path, file: str) -> dict[str, ast.AST]:
    return {e.name: node for e, node in parse_file(root, file).entities}


# ---------------------------------------------------------------- families


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_produces_candidates_where_it_applies(repo: Path, family: str):
    candidates, errors = _generate(repo, families=[family])
    assert errors == []
    assert candidates, f"{family} produced nothing on the sample"
    scope = "class" if family in {"remove_base_class", "remove_methods", "shuffle_methods"} else "function"
    for c in candidates:
        assert (c.family, c.scope, c.synthesizer) == (family, scope, "swe.procedural")
        assert (c.entity.kind == "class") == (scope == "class")
        assert c.candidate_id == content_hash("demo", "abc123", c.patch)
        assert c.params and c.changed_lines


@pytest.mark.parametrize("family,entity", CANNOT)
def test_family_never_applies_where_it_cannot(repo: Path, family: str, entity: str):
    node = _entity_nodes(repo, "pkg/negative.py")[entity]
    assert not FAMILIES[family].applies(node)
    candidates, _ = _generate(repo, families=[family], max_per_entity=5)
    assert not [c for c in candidates if c.entity.file == "pkg/negative.py" and c.entity.name == entity]


def test_full_run_leaves_entities_alone_where_families_cannot_apply(repo: Path):
    candidates, _ = _generate(repo, max_per_entity=5)
    negative = {(c.family, c.entity.name) for c in candidates if c.entity.file == "pkg/negative.py"}
    assert not negative & set(CANNOT)
    assert ("change_operator", "classify") in negative  # `<` and `>` are there to change


def test_unknown_family_is_an_error_naming_it():
    with pytest.raises(ValueError, match="no_such_family"):
        resolve_families(["no_such_family"])


# ---------------------------------------------------------------- patches


def _removed_lines(patch: str) -> list[int]:
    lines, old = [], 0
    for line in patch.splitlines():
        if m := re.match(r"@@ -(\d+)(?:,(\d+))? ", line):
            old = int(m.group(1)) - (1 if m.group(2) != "0" else 0)
        elif line.startswith("-") and not line.startswith("---"):
            old += 1
            lines.append(old)
        elif line.startswith(" "):
            old += 1
    return lines


def test_patches_apply_parse_and_round_trip(repo: Path):
    crlf = "def crlf(a, b):\r\n    if a > b:\r\n        return a - b\r\n    return b - a\r\n"
    _write(repo, {"pkg/crlf.py": crlf, "pkg/semi.py": "def semi(a):\n    x = a + 1; y = x * 2\n    return x - y\n"})
    assert _git(repo, "init", "-q").returncode == 0
    _git(repo, "add", "-A")
    commit = _git(repo, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "base")
    assert commit.returncode == 0, commit.stderr
    candidates, _ = _generate(repo, max_per_entity=3)
    assert {c.entity.file for c in candidates} >= {"pkg/shapes.py", "pkg/crlf.py", "pkg/semi.py"}
    for c in candidates:
        path = repo / c.entity.file
        before = path.read_bytes()
        check = _git(repo, "apply", "--check", "-", stdin=c.patch)
        assert check.returncode == 0, f"{c.family}: {check.stderr}\n{c.patch}"
        assert _git(repo, "apply", "-", stdin=c.patch).returncode == 0
        after = path.read_bytes()
        assert after != before
        mutated = ast.parse(after.decode())
        original = ast.parse(before.decode())
        assert ast.dump(mutated) != ast.dump(original), c.patch
        assert _git(repo, "apply", "-R", "-", stdin=c.patch).returncode == 0
        assert path.read_bytes() == before
        assert _git(repo, "status", "--porcelain").stdout == ""
        removed = _removed_lines(c.patch)
        assert set(removed) <= set(c.changed_lines)
        # A diff may place a removed blank line just outside the entity; nothing else lies outside.
        outside = [n for n in c.changed_lines if not c.entity.lineno <= n <= c.entity.end_lineno]
        assert all(not before.decode().splitlines()[n - 1].strip() for n in outside), c.patch


def test_semicolon_statement_falls_back_to_unparsing_the_entity(tmp_path: Path):
    root = _write(tmp_path, {"m.py": "def semi(a):\n    x = a + 1; y = x * 2\n    return x - y\n"})
    candidates, _ = _generate(root, families=["remove_assignment"], max_per_entity=4)
    assert candidates and all(c.params["splice"] == "entity" for c in candidates)


def test_no_newline_at_end_of_file_is_marked(repo: Path):
    candidates, _ = _generate(repo, families=["change_operator", "remove_loop"], max_per_entity=4)
    last = [c for c in candidates if c.entity.name == "label"]
    assert last and all("\\ No newline at end of file" in c.patch for c in last)


def test_unified_diff_changed_lines_for_insertion_and_replacement():
    patch, changed = unified_diff("f.py", "a\nb\nc\n", "a\nb\nx\nc\n")
    assert changed == [2] and "+x\n" in patch and patch.startswith("diff --git a/f.py b/f.py\n")
    _, changed = unified_diff("f.py", "a\nb\nc\nd\n", "a\nB\nc\n")
    assert changed == [2, 4]


# ---------------------------------------------------------------- minimality


def test_change_operator_diff_is_one_line_and_keeps_comments(repo: Path):
    candidates, _ = _generate(repo, families=["change_operator"], max_per_entity=4)
    area = [c for c in candidates if c.entity.name == "Shape.area"]
    assert area
    for c in area:
        body = [line for line in c.patch.splitlines()[3:] if line[:1] in "+-"]
        assert len(body) == 2 and body[0][0] == "-" and body[1][0] == "+", c.patch
        assert "# area is width times height" not in [line[1:].strip() for line in body]
        assert c.params["splice"] == "segment"


def test_sample_is_spliced_by_segments_with_original_formatting(repo: Path):
    candidates, _ = _generate(repo, max_per_entity=3)
    shapes = [c for c in candidates if c.entity.file == "pkg/shapes.py"]
    assert shapes and all(c.params["splice"] == "segment" for c in shapes)
    # Double quotes would turn single under ast.unparse: no touched line may flip them.
    assert not any("'négatif'" in c.patch for c in shapes)


def test_deleting_the_only_statement_of_a_block_leaves_pass(repo: Path):
    candidates, _ = _generate(repo, families=["remove_assignment"], max_per_entity=10)
    line = SAMPLE.splitlines().index("    except TypeError:") + 2
    (handler,) = [c for c in candidates if c.changed_lines == [line]]
    assert "-        total = 0\n+        pass\n" in handler.patch


def test_invert_if_else_swaps_bodies_without_negating(repo: Path):
    (c,) = [c for c in _generate(repo, families=["invert_if_else"])[0] if c.entity.name == "summarize"]
    assert "if v > limit:" not in [line[1:].strip() for line in c.patch.splitlines() if line[:1] in "+-"]
    assert "+            result.append(v)" in c.patch


ELIF = "def f(x, y):\n    if x < y:\n        return 1\n    elif x > y:\n        return 2\n    return 0\n"
ELSE_IF = ELIF.replace("    elif x > y:\n        return 2", "    else:\n        if x > y:\n            return 2")


@pytest.mark.parametrize("src", [ELIF, ELSE_IF])
def test_removing_an_elif_drops_the_branch_by_segment(tmp_path: Path, src: str):
    candidates, _ = _generate(_write(tmp_path, {"m.py": src}), families=["remove_conditional"], max_per_entity=5)
    (inner,) = [c for c in candidates if c.params["lineno"] > 2]
    changes = [line for line in inner.patch.splitlines()[3:] if line[:1] in "+-"]
    assert inner.params["splice"] == "segment" and all(line.startswith("-") for line in changes)
    assert changes[0] in ("-    elif x > y:", "-    else:")


def test_removing_the_only_base_drops_the_parentheses(tmp_path: Path):
    root = _write(tmp_path, {"m.py": "class A(dict):\n    def get(self, k):\n        return k\n"})
    (c,) = _generate(root, families=["remove_base_class"])[0]
    assert "-class A(dict):\n+class A:\n" in c.patch
    assert {k: c.params[k] for k in ("base", "splice")} == {"base": "dict", "splice": "segment"}
    # nothing names A outside its own definition, and `dict` is a builtin type: the tests that ran A.get
    assert c.params["attribution"] == {"refs": {"m.py": [[3, 3]]}, "import_time": {}, "names": ["A"]}


# ---------------------------------------------------------------- selection


def test_same_seed_same_candidates_and_seeds_vary(repo: Path):
    ids = [c.candidate_id for c in _generate(repo, seed=7)[0]]
    assert ids == [c.candidate_id for c in _generate(repo, seed=7)[0]]
    others = {tuple(c.candidate_id for c in _generate(repo, seed=s)[0]) for s in range(1, 6)}
    assert any(set(o) != set(ids) for o in others)


def test_candidates_are_deduplicated(tmp_path: Path):
    # One site with one possible change: every draw yields the same diff.
    root = _write(tmp_path, {"m.py": "def eq(a, b):\n    return a == b\n"})
    candidates, _ = _generate(root, families=["change_operator"], max_per_entity=5)
    assert len(candidates) == 1 and "+    return a != b" in candidates[0].patch
    many, _ = _generate(tmp_path, max_per_entity=5)
    assert len({c.patch for c in many}) == len(many)


def test_max_candidates_caps_the_run(repo: Path):
    assert len(_generate(repo, max_candidates=5)[0]) == 5


def test_complexity_threshold_excludes_trivial_functions(tmp_path: Path):
    root = _write(tmp_path, {"m.py": "def trivial(a, b):\n    return a + b\n"})
    assert _generate(root, min_complexity=3)[0] == []
    assert _generate(root, min_complexity=1)[0]


def test_complexity_formula():
    tree = ast.parse(
        "def f(xs):\n"
        "    if xs and xs[0] or not xs:\n        pass\n"
        "    for x in xs:\n        y = [a for a in x if a]\n"
        "    try:\n        pass\n    except E:\n        pass\n"
        "    return 1 if xs else 2\n"
    )
    # 1 + if + (and: 1) + (or: 1) + for + comprehension(1 + 1 if) + except + ternary
    assert complexity(tree.body[0]) == 9


# ---------------------------------------------------------------- entities


def test_entities_names_kinds_and_decorator_lines(repo: Path):
    entities, errors = list_entities(repo)
    assert errors == []
    by_name = {(e.file, e.name): e for e in entities}
    assert by_name[("pkg/shapes.py", "Shape")].kind == "class"
    perimeter = by_name[("pkg/shapes.py", "Shape.perimeter")]
    assert perimeter.kind == "method" and SAMPLE.splitlines()[perimeter.lineno - 1].strip() == "@property"
    assert by_name[("pkg/shapes.py", "summarize")].kind == "function"


def test_unparseable_file_is_reported_not_raised(repo: Path):
    _write(repo, {"pkg/broken.py": "def ok():\n    return 1\n\ndef broken(:\n    pass\n"})
    candidates, errors = _generate(repo)
    assert [f for f, _ in errors] == ["pkg/broken.py"]
    assert "line 4" in errors[0][1]
    assert candidates and all(c.entity.file != "pkg/broken.py" for c in candidates)
    assert list_entities(repo)[1] == errors


def test_test_docs_build_and_env_files_are_not_mutated(tmp_path: Path):
    body = SAMPLE.split("\n\n\ndef summarize")[1]
    skipped = [
        "tests/test_a.py", "pkg/tests/helpers.py", "pkg/test_b.py", "pkg/c_test.py", "conftest.py",
        "setup.py", "docs/conf.py", "examples/demo.py", ".hidden/h.py", "build/lib/b.py",
        "myenv/lib/site.py", "pkg.egg-info/x.py", "bin/update-tables.py",
    ]
    files = {rel: "def summarize" + body for rel in skipped} | {"myenv/pyvenv.cfg": "home = /usr\n"}
    root = _write(tmp_path, files | {"pkg/real.py": "def summarize" + body})
    candidates, _ = _generate(root)
    assert candidates and {c.entity.file for c in candidates} == {"pkg/real.py"}
    assert {e.file for e in list_entities(root)[0]} == {"pkg/real.py"}


def test_files_a_fix_may_not_change_are_never_mutated(tmp_path: Path):
    """A bug in a file verification reverts a fix's changes to (test helpers, start-up hooks) could never be fixed."""
    from trajfactory.synthesizers.swe.entities import iter_source_files

    for rel in ("pkg/core.py", "testing/helpers.py", "noxfile.py", "sitecustomize.py", "pkg/conftest.py",
                "tests/util.py", "pkg/test_core.py", "benchmarks/bench_core.py", "pkg/check_core.py",
                "specs/core.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("def f(x):\n    return x + 1\n")
    assert iter_source_files(tmp_path) == ["pkg/check_core.py", "pkg/core.py", "specs/core.py"]
    # the project's own collection rules: a pattern of its own, a catch-all pattern under its testpaths
    (tmp_path / "pytest.ini").write_text("[pytest]\npython_files = check_*.py *.py\ntestpaths = specs\n")
    assert iter_source_files(tmp_path) == ["pkg/core.py"]
