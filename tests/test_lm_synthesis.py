"""Model-backed synthesis: LM rewrite candidates and LM problem statements with a leak check (the judge:
test_judge.py). The real tiny vLLM model writes noise, so against it the plumbing is
asserted; a stdlib OpenAI stub scripts the replies whose handling must be exact."""

from __future__ import annotations

import ast
import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from openai_stub import Stub
from trajfactory.models.client import ModelClient, ModelError
from trajfactory.schema import Validation
from trajfactory.synthesizers.swe import rewrite, statements
from trajfactory.synthesizers.swe.tasks import reverse_patch, template_statement

DEMO_REPO = Path(__file__).resolve().parent.parent / "trajfactory" / "data" / "repos" / "textkit"
REJECT_REASONS = {"no_code", "syntax_error", "not_function", "wrong_name", "wrong_signature", "empty_body",
                  "unchanged", "model_error"}
TINY = {"temperature": 0.0, "max_tokens": 32}


def _function_source(file: str, name: str) -> str:
    source = (DEMO_REPO / file).read_text()
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == name)
    return ast.get_source_segment(source, node)


def _fenced(code: str) -> str:
    return f"Here is the implementation:\n\n```python\n{code}\n```\n"


MERGE_EQUIVALENT = '''def merge_ranges(ranges):
    """Merge overlapping or adjacent closed ranges."""
    out = []
    for lo, hi in sorted(ranges):
        if lo > hi:
            raise ValueError(f"range ({lo}, {hi}) ends before it starts")
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out'''


def _git_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "textkit"
    shutil.copytree(DEMO_REPO, repo, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "base"]):
        subprocess.run(cmd, cwd=repo, check=True)
    return repo


# ---------------------------------------------------------------- rewrite


@pytest.mark.parametrize("reply, reason", [
    ("I cannot help with that.", "no_code"),
    ("```python\ndef merge_ranges(ranges:\n    return\n```", "syntax_error"),
    ("```python\nx = 1\n```", "not_function"),
    ("```python\ndef merge(ranges):\n    return ranges\n```", "wrong_name"),
    ("```python\ndef merge_ranges(ranges, strict=False):\n    return ranges\n```", "wrong_signature"),
    ("```python\ndef merge_ranges(ranges):\n    \"\"\"Doc.\"\"\"\n    raise NotImplementedError\n```", "empty_body"),
    (_fenced(_function_source("src/textkit/stats.py", "merge_ranges")), "unchanged"),
])
def test_garbage_replies_are_rejected_with_reasons(reply, reason):
    target = next(t for t in rewrite.targets(DEMO_REPO) if t.entity.name == "merge_ranges")
    with pytest.raises(rewrite.Rejected) as exc:
        rewrite.splice(target, reply)
    assert exc.value.reason == reason


def test_stub_reimplementation_becomes_a_candidate_that_applies(stub, tmp_path):
    server = stub(lambda body: _fenced(MERGE_EQUIVALENT))
    repo = _git_repo(tmp_path)
    client = server.client()
    candidates, rejects = rewrite.generate_rewrites(
        repo, client, source_id="src", repo="textkit", base_commit="0" * 40,
        names={"merge_ranges", "percentile"}, sampling={"temperature": 0.2},
    )
    assert len(server.bodies) == len(client.requests) == 2
    # percentile got merge_ranges back: rejected with its reason, not dropped.
    assert [(r.reason, r.item_kind) for r in rejects] == [("wrong_name", "candidate")]
    assert "percentile" in rejects[0].detail
    (cand,) = candidates
    assert (cand.family, cand.scope, cand.synthesizer) == ("lm_rewrite", "function", "swe.lm_rewrite")
    assert cand.entity.name == "merge_ranges"
    assert cand.params["model"] == "stub-model" and cand.params["sampling"]["temperature"] == 0.2
    assert cand.changed_lines and cand.patch.startswith("diff --git a/src/textkit/stats.py")
    # The prompt showed the file with the body cut out, and the header and docstring kept.
    prompts = [b["messages"][-1]["content"] for b in server.bodies]
    prompt = next(p for p in prompts if "body of `merge_ranges` was removed" in p)
    assert rewrite.PLACEHOLDER in prompt and "def merge_ranges(ranges):" in prompt
    assert "merged[-1] = (previous_start" not in prompt
    # The header and docstring are untouched: only body lines change.
    assert not any(line.startswith(("-def ", "+def ", '-    """', '+    """')) for line in cand.patch.splitlines())
    (tmp_path / "c.diff").write_text(cand.patch)
    subprocess.run(["git", "apply", "--check", str(tmp_path / "c.diff")], cwd=repo, check=True)
    subprocess.run(["git", "apply", str(tmp_path / "c.diff")], cwd=repo, check=True)
    tree = ast.parse((repo / "src/textkit/stats.py").read_text())
    assert "out.append((lo, hi))" in ast.unparse(tree)
    # Reversing it restores the file: the gold patch is the reverse, as for procedural bugs.
    (tmp_path / "gold.diff").write_text(reverse_patch(cand.patch))
    subprocess.run(["git", "apply", str(tmp_path / "gold.diff")], cwd=repo, check=True)
    assert (repo / "src/textkit/stats.py").read_text() == (DEMO_REPO / "src/textkit/stats.py").read_text()


@pytest.mark.vllm
def test_tiny_model_rewrites_are_requested_and_garbage_is_rejected(vllm_server):
    client = ModelClient(vllm_server.base_url, "tiny")
    candidates, rejects = rewrite.generate_rewrites(
        DEMO_REPO, client, source_id="src", repo="textkit", base_commit="0" * 40, max_entities=2,
        sampling=TINY, max_context_chars=800,
    )
    assert len(client.requests) == 2 and all(r.status == 200 for r in client.requests)
    assert client.completion_tokens > 0
    assert len(candidates) + len(rejects) == 2
    assert {r.reason for r in rejects} <= REJECT_REASONS - {"model_error"}
    for c in candidates:  # noise that happens to be a valid function still must parse and apply
        assert c.family == "lm_rewrite" and c.params["model"] == "tiny"


# ---------------------------------------------------------------- statements

BUG_PATCH = """diff --git a/src/textkit/stats.py b/src/textkit/stats.py
--- a/src/textkit/stats.py
+++ b/src/textkit/stats.py
@@ -80,7 +80,7 @@
     for start, end in sorted(ranges):
         if start > end:
             raise ValueError(f"range ({start}, {end}) ends before it starts")
-        if merged and start <= merged[-1][1] + 1:
+        if merged and start <= merged[-1][1]:
             previous_start, previous_end = merged[-1]
             merged[-1] = (previous_start, max(previous_end, end))
         else:
"""
VALIDATION = Validation(candidate_id="c1", status="valid", FAIL_TO_PASS=["tests/test_stats.py::test_merge_ranges"],
                        PASS_TO_PASS=["tests/test_stats.py::test_mean"])
TEST_OUTPUT = "E       assert [(1, 3), (4, 9)] == [(1, 9)]\nFAILED tests/test_stats.py::test_merge_ranges\n1 failed"
CLEAN = ("merge_ranges does not merge adjacent ranges\n\nCalling `merge_ranges([(1, 3), (4, 6)])` returns "
         "`[(1, 3), (4, 6)]`. I expected adjacent closed ranges to be merged into `[(1, 6)]`, as the "
         "docstring says.")


@pytest.mark.parametrize("text, leaks", [
    (CLEAN, False),
    (CLEAN + "\nThe line `if merged and start <= merged[-1][1]:` looks wrong.", True),  # a `+` line
    (CLEAN + "\nMaybe it should be   start <=   merged[-1][1] + 1 instead.", True),  # a run of the fixed code
    (CLEAN + "\n@@ -80,7 +80,7 @@", True),  # a diff marker
    (CLEAN + "\n        else:", False),  # short, common lines are no leak
])
def test_leak_check(text, leaks):
    assert (statements.find_leak(text, BUG_PATCH) is not None) is leaks


def _statement(server: Stub):
    return asyncio.run(statements.write_statement(
        server.client(), repo="textkit", bug_patch=BUG_PATCH, validation=VALIDATION, test_output=TEST_OUTPUT))


@pytest.mark.parametrize("answer, source, reason", [
    (CLEAN + "\nThe check `if merged and start <= merged[-1][1]:` is off by one.", "template", "leak"),
    (CLEAN, "lm", "ok"),
    ((400, "prompt too long"), "template", "model_error"),
    (CLEAN.replace("merge", "me\x00rge\x1b[0m", 1), "template", "not_text"),  # gibberish bytes of a noisy model
    (CLEAN + "\n\ufffd\ufffd", "template", "not_text"),  # undecodable bytes
])
def test_statement_is_used_or_falls_back_to_the_template(stub, answer, source, reason):
    server = stub(lambda body: answer)
    result = asyncio.run(statements.write_statement(
        server.client(), repo="textkit", bug_patch=BUG_PATCH, validation=VALIDATION, test_output=TEST_OUTPUT))
    assert (result.source, result.reason) == (source, reason)
    assert result.text == (CLEAN if source == "lm" else template_statement("textkit", VALIDATION))
    if reason == "leak":
        assert "patch line" in result.detail
    if reason == "not_text":
        assert "control or undecodable" in result.detail
    # The model was given the failing tests and the test output.
    prompt = server.bodies[0]["messages"][-1]["content"]
    assert "tests/test_stats.py::test_merge_ranges" in prompt and "1 failed" in prompt


NAMES = statements.topics("merge_ranges", "src/textkit/stats.py", VALIDATION.FAIL_TO_PASS)
OFF_TOPIC = ("Login page crashes\n\nWhen I open the settings dialog and press save, the window closes and "
             "nothing is stored. I expected my preferences to be kept.")


def test_topics_are_the_changed_function_module_and_failing_tests():
    assert NAMES == ["merge_ranges", "stats", "test_merge_ranges"]
    assert statements.topics("Parser.parse", "pkg/__init__.py", ["t.py::TestP::test_ok[x-1]"]) == \
        ["Parser", "parse", "test_ok"]  # short names (`ok`) and `__init__` show nothing


@pytest.mark.parametrize("answer, source, reason", [
    (CLEAN, "lm", "ok"),  # names merge_ranges
    (OFF_TOPIC, "template", "off_topic"),
    (OFF_TOPIC + " The statistics look wrong.", "template", "off_topic"),  # `stats` only inside a word
    (OFF_TOPIC + " It happens in the stats module.", "lm", "ok"),
])
def test_a_statement_that_names_nothing_of_the_task_is_off_topic(stub, answer, source, reason):
    result = asyncio.run(statements.write_statement(
        stub(lambda body: answer).client(), repo="textkit", bug_patch=BUG_PATCH, validation=VALIDATION,
        test_output=TEST_OUTPUT, names=NAMES))
    assert (result.source, result.reason) == (source, reason)
    if reason == "off_topic":
        assert "merge_ranges" in result.detail and result.text == template_statement("textkit", VALIDATION)


@pytest.mark.vllm
def test_tiny_model_statement_is_requested(vllm_server):
    client = ModelClient(vllm_server.base_url, "tiny")
    result = asyncio.run(statements.write_statement(
        client, repo="textkit", bug_patch=BUG_PATCH, validation=VALIDATION, test_output=TEST_OUTPUT,
        sampling={"temperature": 0.0, "max_tokens": 64}))
    assert len(client.requests) == 1 and client.requests[0].status == 200
    assert result.source in ("lm", "template")
    if result.source == "lm":
        assert statements.find_leak(result.text, BUG_PATCH) is None
    else:
        assert result.reason in ("leak", "empty") and result.text == template_statement("textkit", VALIDATION)


def test_a_server_failure_is_no_statement_to_keep(stub):
    with pytest.raises(ModelError):
        _statement(stub(lambda body: (503, "overloaded")))


# ---------------------------------------------------------------- validation of an LM bug (docker)


@pytest.mark.docker
def test_subtly_wrong_reimplementation_is_validated_with_fail_to_pass(stub, docker_backend, tmp_path):
    from trajfactory.settings import ValidationConfig
    from trajfactory.settings import SandboxConfig
    from trajfactory.synthesizers.swe.stage import build_environment
    from trajfactory.executors.pool import SandboxPool
    from trajfactory.sources import harvest_repo
    from trajfactory.synthesizers.swe import stage

    off_by_one = _function_source("src/textkit/stats.py", "merge_ranges").replace("merged[-1][1] + 1", "merged[-1][1]")
    assert "+ 1" not in off_by_one
    server = stub(lambda body: _fenced(off_by_one))
    source = harvest_repo("builtin:textkit", tmp_path / "mirrors")
    env = build_environment(docker_backend, source)
    root = stage.checkout(source, tmp_path / "checkouts")
    candidates, rejects = rewrite.generate_rewrites(
        root, server.client(), source_id=source.source_id, repo=source.name, base_commit=source.commit,
        names={"merge_ranges"})
    assert not rejects and len(candidates) == 1
    limits = SandboxConfig(memory="1g", cpus=1, pids=256, command_timeout_s=120)
    cfg = ValidationConfig(reference_runs=1)
    ref = stage.reference(docker_backend, env, source, cfg, limits)
    with SandboxPool(docker_backend, env, size=1, limits=limits) as pool:
        validation = stage.validate(pool, candidates[0], ref, cfg)
    assert validation.status == "valid", validation
    assert "tests/test_stats.py::test_merge_ranges" in validation.FAIL_TO_PASS
    task = stage.tasks_from(source, env, candidates, [validation])[0]
    assert task.family == "lm_rewrite" and task.provenance.synthesizer == "swe.lm_rewrite"
