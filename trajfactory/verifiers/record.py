"""The verdict of record of each web trajectory: the task's state checks where it has any, else a confident judge pass.

A task without state checks (a read-only tutorial, kept only when the judge is on) is verified only by a judge
pass at least `min_confidence` sure; an abstention never verifies. (SWE trajectories have the tests as theirs.)
"""

from __future__ import annotations

from typing import Iterable

from trajfactory.schema import Trajectory, Verdict, WebTask, WebVerification
from trajfactory.verifiers import judge as judge_verifier, state as state_verifier


def verification(tasks: Iterable[WebTask], trajectories: Iterable[Trajectory], verdicts: Iterable[Verdict],
                 min_confidence: float = 0.8) -> list[WebVerification]:
    """The verdict of record of each trajectory: state checks where the task has any, else a confident judge pass."""
    by_task = {t.task_id: t for t in tasks}
    state = {v.trajectory_id: v for v in verdicts if v.verifier == state_verifier.VERIFIER}
    judged = {v.trajectory_id: v for v in verdicts if v.verifier == judge_verifier.VERIFIER}
    out = []
    for tr in trajectories:
        task, s, j = by_task.get(tr.task_id), state.get(tr.trajectory_id), judged.get(tr.trajectory_id)
        status = "not_judged" if j is None else "abstain" if judge_verifier.is_abstention(j) else "verdict"
        confidence = judge_verifier.judge_confidence(j) if j is not None else None
        row = dict(trajectory_id=tr.trajectory_id, task_id=tr.task_id, policy=tr.policy.name, state_passed=s.passed if s else None,
                   judge_status=status, judge_passed=j.passed if status == "verdict" else None, judge_confidence=confidence)
        if task is not None and task.checks:
            ok = s is not None and s.passed
            why = "state checks passed" if ok else "state checks failed" if s is not None else "no state verdict recorded"
            out.append(WebVerification(**row, verified=ok, verified_by="state", reason=why))
        elif status == "verdict":
            ok = bool(j.passed and confidence is not None and confidence >= min_confidence)
            why = (f"no state checks; the judge passed it with confidence {confidence:.2f}" if ok else
                   f"no state checks; the judge {'passed' if j.passed else 'failed'} it with confidence "
                   f"{confidence:.2f} (a pass needs >= {min_confidence})")
            out.append(WebVerification(**row, verified=ok, verified_by="judge", reason=why))
        else:
            why = "no state checks and the judge abstained" if status == "abstain" else "no state checks and no judge verdict"
            out.append(WebVerification(**row, verified=False, verified_by="none", reason=why))
    return out
