"""Bug patches from elsewhere (SWE-smith instances, difflib-style diffs) and combined bugs: made into candidates on
the host, then validated and proven in real Docker sandboxes like the procedural ones."""

from __future__ import annotations

import difflib
import json
import subprocess

import pytest

from trajfactory.executors.pool import SandboxPool
from trajfactory.executors.swe_env import verify_gold
from trajfactory.schema import Source
from trajfactory.settings import SandboxConfig, SynthesisConfig, ValidationConfig
from trajfactory.sources import harvest_repo
from trajfactory.synthesizers.swe import combine, stage
from trajfactory.synthesizers.swe.external import changed_lines, external_candidates, normalize_patch
from trajfactory.synthesizers.swe.stage import build_environment
from trajfactory.synthesizers.swe.tasks import reverse_patch

LIMITS = SandboxConfig(memory="1g", cpus=1, pids=256, command_timeout_s=120)
CASE = "src/textkit/case.py"


def _difflib_patch(tree, file: str, old: str, new: str, prefixes: bool) -> str:
    text = (tree / file).read_text()
    assert old in text, old
    a, b = (f"a/{file}", f"b/{file}") if prefixes else (file, file)
    lines = difflib.unified_diff(text.splitlines(keepends=True), text.replace(old, new, 1).splitlines(keepends=True),
                                 a, b, "2024-01-01 00:00:00", "2024-01-01 00:00:01")
    return "".join(lines)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    work = tmp_path_factory.mktemp("external")
    source = harvest_repo("builtin:textkit", work / "mirrors")
    assert isinstance(source, Source), source
    return source, stage.checkout(source, work / "checkouts"), work


def test_difflib_patches_are_normalized_and_reversed_into_a_gold_fix(repo, tmp_path):
    source, tree, _ = repo
    for prefixes in (True, False):
        raw = _difflib_patch(tree, CASE, "return ", "return  ", prefixes)
        assert "diff --git" not in raw and "\t2024" in raw
        patch = normalize_patch(raw)
        assert patch.startswith(f"diff --git a/{CASE} b/{CASE}\n--- a/{CASE}\n+++ b/{CASE}\n") and "\t" not in patch
        copy = tmp_path / f"tree{prefixes}"
        subprocess.run(["cp", "-r", str(tree), str(copy)], check=True)
        subprocess.run(["git", "init", "-q"], cwd=copy, check=True)
        for p in (patch, reverse_patch(patch)):  # the bug applies, and its reverse (the gold fix) undoes it
            (copy / "p.diff").write_text(p)
            assert subprocess.run(["git", "apply", "p.diff"], cwd=copy).returncode == 0
        assert (copy / CASE).read_text() == (tree / CASE).read_text()
        assert changed_lines(patch)[CASE]


def test_swe_smith_instances_become_candidates_and_bad_ones_are_quarantined(repo, tmp_path):
    source, tree, _ = repo
    good = _difflib_patch(tree, CASE, "return ", "return not ", prefixes=False)
    path = tmp_path / "bugs.jsonl"
    rows = [{"instance_id": "textkit.x.func_pm_op_flip__1", "strategy": "func_pm_op_flip", "patch": good},
            {"instance_id": "docs-only", "patch": "--- README.md\n+++ README.md\n@@ -1 +1 @@\n-a\n+b\n"},
            {"instance_id": "stale", "patch": _difflib_patch(tree, CASE, "return ", "return 1 or ", True)
             .replace("return", "retrun", 2)},
            # a "bug" in a test: verification reverts a fix's changes to tests, so no fix could undo it
            {"instance_id": "edits-a-test", "patch": good + _difflib_patch(tree, "tests/test_case.py", "assert ",
                                                                            "assert not ", prefixes=False)},
            # a bug partly in a C extension's source: the image builds it once, so that part would never take effect
            {"instance_id": "edits-c", "patch": good + "--- a/textkit/_fast.c\n+++ b/textkit/_fast.c\n"
                                                       "@@ -1 +1 @@\n-int x = 1;\n+int x = 2;\n"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    candidates, bad = external_candidates(path, source, tree)
    [c] = candidates
    assert c.family == "func_pm_op_flip" and c.synthesizer == "swe.external" and c.entity.file == CASE
    assert c.params["instance_id"] == "textkit.x.func_pm_op_flip__1" and c.changed_lines
    assert c.entity.lineno <= c.changed_lines[0] <= c.entity.end_lineno
    assert {q.reason for q in bad} == {"no_python_change", "patch_failed", "protected_path", "compiled_source"}
    [c_source] = [q for q in bad if q.reason == "compiled_source"]
    assert "edits-c" in c_source.detail and "textkit/_fast.c" in c_source.detail
    [guarded] = [q for q in bad if q.reason == "protected_path"]
    assert "edits-a-test" in guarded.detail and "tests/test_case.py (test file)" in guarded.detail
    assert all(q.uri == source.uri and q.detail for q in bad)
    with pytest.raises(ValueError, match="no `patch`"):
        (tmp_path / "broken.json").write_text('[{"instance_id": "x"}]')
        external_candidates(tmp_path / "broken.json", source, tree)


@pytest.mark.docker
def test_external_and_combined_bugs_validate_and_their_gold_is_proven(docker_backend, repo, tmp_path):
    source, tree, work = repo
    env = build_environment(docker_backend, source)
    candidates, _ = stage.synthesize(source, SynthesisConfig(max_candidates_per_repo=24), work / "checkouts")
    ref = stage.reference(docker_backend, env, source, ValidationConfig(reference_runs=1), LIMITS)
    # an external bug: the first procedural candidate, written out the way SWE-smith's difflib patches look
    first = candidates[0]
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(tree), str(copy)], check=True)
    subprocess.run(["git", "init", "-q"], cwd=copy, check=True)
    subprocess.run(["git", "apply", "-"], input=first.patch, text=True, cwd=copy, check=True)
    bugged = (copy / first.entity.file).read_text()
    raw = "".join(difflib.unified_diff((tree / first.entity.file).read_text().splitlines(keepends=True),
                                       bugged.splitlines(keepends=True), first.entity.file, first.entity.file))
    (tmp_path / "bugs.json").write_text(json.dumps([{"instance_id": "ext-1", "patch": raw}]))
    outside, bad = external_candidates(tmp_path / "bugs.json", source, tree)
    assert len(outside) == 1 and not bad
    with SandboxPool(docker_backend, env, size=1, limits=LIMITS) as pool:
        validations = [stage.validate(pool, c, ref, ValidationConfig()) for c in candidates + outside]
        tasks = stage.tasks_from(source, env, candidates + outside, validations)
        proven = []
        with docker_backend.start(env, LIMITS) as sandbox:
            proven = [t for t in tasks if verify_gold(sandbox, t).passed]
        assert proven and len(proven) == len(tasks)
        if validations[-1].status == "valid":
            assert any(t.provenance.synthesizer == "swe.external" for t in proven)
        combos = combine.combine(proven, candidates + outside, tree, size=2, max_per_file=2)
        assert combos, "no two proven bugs of one file with different FAIL_TO_PASS sets"
        for c in combos:
            # (the external bug is the first procedural one written out again: one id, the same bug, twice here)
            parts = {p.candidate_id for p in candidates + outside if p.candidate_id in c.params["parts"]}
            assert len(parts) == 2 and len({frozenset(t.checks.FAIL_TO_PASS) for t in proven
                                             if t.validation.candidate_id in c.params["parts"]}) == 2
        more = [stage.validate(pool, c, ref, ValidationConfig()) for c in combos]
    combined = stage.tasks_from(source, env, combos, more)
    assert combined, [(v.status, v.detail) for v in more]
    with docker_backend.start(env, LIMITS) as sandbox:
        for task in combined:
            assert task.family == "combine_file" and verify_gold(sandbox, task).passed
            parts = set(task.provenance.params["parts"])
            union = {t for p in proven if p.validation.candidate_id in parts for t in p.checks.FAIL_TO_PASS}
            assert union <= set(task.checks.FAIL_TO_PASS)  # each part's failures stay failures of the whole
