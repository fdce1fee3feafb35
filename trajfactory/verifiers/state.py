"""Web state checks (WebArena-style program checks, declared as data): evaluate `StatePredicate`s
against an app's `/__state__` JSON, derive predicates from a task's expected outcome and from the
state diff of a successful replay, and turn the result into a `Verdict`.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from trajfactory.schema import Evidence, StatePredicate, Trajectory, Verdict, WebTask, content_hash

VERIFIER = "state"
VERSION = "1"
# columns whose values differ between runs of the same seed (random session tokens)
VOLATILE = {"session", "token"}
# words of an outcome sentence -> state table; only tables the app's state has are used
TABLE_WORDS = {
    "orders": ["order", "purchase"], "cart": ["cart", "basket", "bag"], "threads": ["thread", "topic", "discussion"],
    "posts": ["reply", "post", "message"], "issues": ["issue", "ticket", "bug"], "comments": ["comment"],
}
CREATED_RE = re.compile(r"\b(placed|created|added|posted|new|appears?|confirmed|submitted|in (?:your|the) (?:cart|basket|bag))\b", re.I)
STATUS_RE = re.compile(r"\b(?:status(?: is| of)?|marked(?: as)?|set to)\s+['\"]?([A-Za-z][A-Za-z ]{1,20}?)['\"]?(?=[.,;]|$)", re.I)
STATUS_SYNONYMS = {"done": "resolved", "doing": "in_progress", "to_do": "open", "archived": "closed"}


def _matches(row: dict[str, Any], pred: StatePredicate) -> bool:
    if any(row.get(k) != v for k, v in pred.where.items()):
        return False
    texts = [str(v).lower() for v in row.values() if isinstance(v, str)]
    return all(any(t.lower() in s for s in texts) for t in pred.text_contains)


def evaluate(pred: StatePredicate, state: dict[str, Any], initial: dict[str, Any] | None = None) -> tuple[bool, str]:
    """(passed, why) of one predicate; `initial` is needed by `delta` predicates."""
    if pred.table not in state:
        return False, f"state has no table {pred.table!r} (tables: {', '.join(k for k in state if isinstance(state[k], list))})"
    n = sum(_matches(r, pred) for r in state[pred.table])
    if pred.delta:
        if initial is None:
            return False, "delta predicate needs the initial state"
        n -= sum(_matches(r, pred) for r in initial.get(pred.table, []))
    ok = n == pred.count if pred.count is not None else n >= pred.min_count
    want = f"== {pred.count}" if pred.count is not None else f">= {pred.min_count}"
    return ok, f"{'new ' if pred.delta else ''}matching rows in {pred.table}: {n} (want {want})"


def state_diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, list]]:
    """table -> {added: rows, removed: rows, changed: [(row_before, row_after)]}; rows keyed by `id` when they have one."""
    out = {}
    for table in sorted(set(before) | set(after)):
        b, a = before.get(table), after.get(table)
        if not isinstance(b, list) and not isinstance(a, list):
            continue
        b, a = b or [], a or []
        key = (lambda r: r.get("id")) if all("id" in r for r in b + a) else (lambda r: json.dumps(_stable(r), sort_keys=True))
        bk, ak = {key(r): r for r in b}, {key(r): r for r in a}
        d = {"added": [ak[k] for k in ak if k not in bk], "removed": [bk[k] for k in bk if k not in ak],
             "changed": [(bk[k], ak[k]) for k in ak if k in bk and _stable(bk[k]) != _stable(ak[k])]}
        if any(d.values()):
            out[table] = d
    return out


def _stable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in VOLATILE}


def predicates_from_diff(before: dict[str, Any], after: dict[str, Any]) -> list[StatePredicate]:
    """Predicates that hold after a successful replay and not before: new rows, changed fields, removed rows."""
    preds: list[StatePredicate] = []
    for table, d in state_diff(before, after).items():
        groups: dict[str, int] = {}
        for row in d["added"]:  # ids of new rows are not part of the outcome: match on content
            content = json.dumps({k: v for k, v in _stable(row).items() if k != "id"}, sort_keys=True)
            groups[content] = groups.get(content, 0) + 1
        for where, n in groups.items():
            preds.append(StatePredicate(table=table, where=json.loads(where), count=n, delta=True, origin="diff",
                                        description=f"{n} new row(s) in {table}"))
        for old, new in d["changed"]:
            fields = {k: v for k, v in _stable(new).items() if old.get(k) != v}
            preds.append(StatePredicate(table=table, where={"id": new["id"], **fields}, count=1, origin="diff",
                                        description=f"{table} #{new['id']}: {', '.join(f'{k}: {old.get(k)!r} -> {v!r}' for k, v in fields.items())}"))
        for row in d["removed"]:
            where = {"id": row["id"]} if "id" in row else _stable(row)
            preds.append(StatePredicate(table=table, where=where, count=0, origin="diff", description=f"{table} row removed"))
    return preds


def _quoted(text: str) -> list[str]:
    return [next(g for g in m.groups() if g) for m in re.finditer(r"'([^']+)'|\"([^\"]+)\"|\u201c([^\u201d]+)\u201d", text)]


def predicates_from_outcome(task: WebTask, initial: dict[str, Any]) -> list[StatePredicate]:
    """Predicates the expected outcome names: a created order/thread/reply/comment, an issue status, quoted names."""
    text = task.spec.expected_outcome
    low = text.lower()
    preds: list[StatePredicate] = []
    quoted = _quoted(text)
    for table, words in TABLE_WORDS.items():
        if table not in initial or not any(re.search(rf"\b{w}s?\b", low) for w in words):
            continue
        status = STATUS_RE.search(text)
        if status and initial[table] and "status" in initial[table][0]:
            value = re.sub(r"\s+", "_", status.group(1).strip().lower())
            value = value if value in {r["status"] for r in initial[table]} else STATUS_SYNONYMS.get(value, value)
            preds.append(StatePredicate(table=table, where={"status": value}, text_contains=quoted, origin="outcome",
                                        description=f"a row of {table} has status {value!r}"))
        elif CREATED_RE.search(text):
            preds.append(StatePredicate(table=table, text_contains=quoted, min_count=1, delta=True, origin="outcome",
                                        description=f"a new row in {table}" + (f" mentioning {quoted}" if quoted else "")))
    return preds


def verify_state(task: WebTask, trajectory: Trajectory | None, initial: dict[str, Any], final: dict[str, Any],
                 checks: list[StatePredicate] | None = None) -> Verdict:
    """The state verdict of one rollout: every predicate holds (feasible task), or the agent reported
    infeasibility and the state is unchanged (infeasible task)."""
    t0 = time.perf_counter()
    failed: list[dict[str, Any]] = []
    checks = task.checks if checks is None else checks
    reported = bool(trajectory and trajectory.steps and trajectory.steps[-1].tool == "report_infeasible")
    if not task.feasible:
        diff = state_diff(initial, final)
        results = [("reported report_infeasible as the last action", reported,
                    f"last action: {trajectory.steps[-1].tool if trajectory and trajectory.steps else 'none'}"),
                   ("state unchanged", not diff, f"changed tables: {sorted(diff)}" if diff else "no change")]
    else:
        if not checks:
            results = [("task has state checks", False, "no predicates: derive them from the outcome or a replay diff")]
        else:
            results = [(p.description or p.model_dump_json(), *evaluate(p, final, initial)) for p in checks]
        if reported:
            results.append(("did not report infeasible on a feasible task", False, trajectory.steps[-1].arguments.get("reason", "")))
    for what, ok, why in results:
        if not ok:
            failed.append({"check": what, "why": why})
    passed_n = sum(ok for _, ok, _ in results)
    return Verdict(verdict_id=content_hash(task.task_id, trajectory.trajectory_id if trajectory else None, VERIFIER, VERSION),
                   task_id=task.task_id, trajectory_id=trajectory.trajectory_id if trajectory else None,
                   verifier=VERIFIER, verifier_version=VERSION, passed=not failed,
                   score=passed_n / len(results) if results else 0.0,
                   evidence=Evidence(detail=json.dumps({"failed": failed, "checked": len(results)}, sort_keys=True)),
                   duration_s=time.perf_counter() - t0)
