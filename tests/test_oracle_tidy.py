"""What a submission holds: the oracle looks at `git status` before it submits and removes what the test runs wrote
into the checkout (pyparsing 3.3's examples tests write railroad diagrams there, and an oracle patch of 100 KB of
HTML was cut at the output limit and did not apply); a submitted patch larger than the output limit is kept whole.

A fixture package whose tests write a 230 KB page into the checkout, mined and solved in real Docker sandboxes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mining import LIMITS, mine
from trajfactory.agents.oracle import OraclePolicy
from trajfactory.executors.base import apply_patch
from trajfactory.executors.swe_env import prepare_episode, run_swe_episode
from trajfactory.executors.swe_tools import run_tool
from trajfactory.training.eval_metrics import destructive_commands
from trajfactory.verifiers.claims import contradictions

pytestmark = pytest.mark.docker


def test_the_oracle_leaves_what_the_tests_wrote_out_of_its_patch_and_a_large_patch_is_submitted_whole(
        docker_backend, mirrors, tmp_path):
    repo = tmp_path / "writes_artifacts"
    shutil.copytree(Path(__file__).parent / "fixtures" / "writes_artifacts", repo)
    mined = mine(docker_backend, mirrors, tmp_path, str(repo), ("diagram.py",), n=1)
    task = next(t for t in mined.tasks if "tests/test_diagram.py::test_render_writes_the_page" in
                [*t.checks.FAIL_TO_PASS, *t.checks.PASS_TO_PASS])

    traj = run_swe_episode(task, OraclePolicy(), docker_backend, mined.env, LIMITS, max_steps=20)
    commands = [json.loads(m.tool_calls[0].function.arguments).get("command", "") for m in traj.messages
                if m.role == "assistant" and m.tool_calls]
    assert traj.exit_status == "submitted", traj.exit_status
    status = commands.index("git status --short")
    assert "?? diagrams/" in traj.steps[status].observation  # the related tests' run wrote the page
    assert commands[status + 1] == "rm -rf -- diagrams/" and commands[-1] == ""  # then the submission
    assert destructive_commands(traj) == []  # by name, not `git clean -f`
    assert [ln for ln in traj.final.patch.splitlines() if ln.startswith("diff --git")] == [
        "diff --git a/diagram.py b/diagram.py"], traj.final.patch[:500]
    assert contradictions(traj) == []

    # a model's submission that keeps the page: whole, though its observation is cut to the output limit
    with docker_backend.start(mined.env, LIMITS) as sandbox:
        prepare_episode(sandbox, task)
        wrote = sandbox.execute("python -m pytest -q -p no:cacheprovider tests/test_diagram.py", timeout=120)
        assert (wrote.exit_code, "grammar.html") == (1, sandbox.execute("ls diagrams").output.strip()), wrote.output
        submitted = run_tool(sandbox, "submit", {}, timeout=120)
        assert submitted.done and submitted.exit_code == 0 and submitted.error is None
        assert len(submitted.patch) > 200_000 > LIMITS.output_limit >= len(submitted.observation) - 200
        assert "characters of the patch not shown" in submitted.observation
        sandbox.reset()
        assert apply_patch(sandbox, task.bug_patch, "/tmp/bug.diff") is None
        assert apply_patch(sandbox, submitted.patch, "/tmp/submitted.diff") is None
        assert len(sandbox.read_file("diagrams/grammar.html")) > 200_000
        # a fix that writes terminal colours into a file: the patch keeps them, its observation does not
        sandbox.reset()
        sandbox.write_file("colours.py", 'RED = "\x1b[31mred\x1b[0m"\n')
        coloured = run_tool(sandbox, "submit", {}, timeout=120)
        assert "\x1b[31m" in coloured.patch and "\x1b" not in coloured.observation, coloured.observation
        assert '+RED = "red"' in coloured.observation, coloured.observation
