"""Claims an agent makes against what it observed (no components: trajectories as records)."""

from __future__ import annotations

from trajfactory.agents.oracle import passed
from trajfactory.schema import Final, Message, Policy, Trajectory
from trajfactory.verifiers.claims import contradictions

FAILED = "FFF.\n=================================== FAILURES ===================================\n" \
         "E   assert 1 == 2\n=========================== short test summary info ============================\n" \
         "FAILED tests/test_x.py::test_a - assert 1 == 2\n3 failed, 1 passed in 0.12s\n[exit code: 1]"
PASSED = "....\n4 passed in 0.10s\n[exit code: 0]"
NO_TESTS = "src/x.py:3:def f():\n[exit code: 0]"


def _traj(*turns: tuple[str, str]) -> Trajectory:
    messages = [Message(role="system", content="s"), Message(role="user", content="fix it")]
    for role, text in turns:
        messages.append(Message(role=role, content=text, tool_call_id="c" if role == "tool" else None))
    return Trajectory(trajectory_id="t", task_id="k", policy=Policy(name="p"), messages=messages, tools=[], steps=[],
                      final=Final(), exit_status="submitted")


def test_a_success_claim_after_failing_tests_is_a_contradiction():
    bad = _traj(("assistant", "Running the tests."), ("tool", FAILED), ("assistant", "The tests pass. Submitting."))
    [problem] = contradictions(bad)
    assert "turn 4" in problem and "3 failing" in problem
    # the claim answers to the LAST test run: a later passing run makes it true
    good = _traj(("tool", FAILED), ("assistant", "Fixing."), ("tool", NO_TESTS), ("tool", PASSED),
                 ("assistant", "Everything passes. Submitting."))
    assert contradictions(good) == []
    # honest words about a failure, and claims before any test ran, are no contradiction
    honest = _traj(("tool", FAILED), ("assistant", "The tests still fail (3 failed); applying the fix as a patch."),
                   ("assistant", "Some tests still fail (3 failed, 1 passed); submitting what I have."))
    assert contradictions(honest) == []
    assert contradictions(_traj(("assistant", "They pass now, I think."))) == []
    # a web-style user turn holding the observation counts as evidence too
    assert contradictions(_traj(("user", FAILED), ("assistant", "All tests pass."))) != []


def test_the_oracle_reads_test_results_the_same_way():
    assert passed(PASSED) and not passed(FAILED) and not passed(NO_TESTS)
    assert not passed("....\n4 passed in 0.1s\n[exit code: 1]")  # the command failed after the tests
