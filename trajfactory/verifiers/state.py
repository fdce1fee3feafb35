"""Web state checks (WebArena-style program checks, declared as data): evaluate `StatePredicate`s
against a site's state (its adapter's `state()`), derive predicates from a task's expected outcome and from the
state diff of a successful replay, and turn the result into a `Verdict`.

Activity log. Each bundled app exposes a server-side activity log (table `activity`: kind, object,
name, detail, user) beside its data tables, as real sites keep audit/analytics logs. The rules:

- Data first: when a gold replay changed application data (orders, cart, threads, issues ...), its
  checks come from the data diff exactly as before; log entries add nothing.
- Read-only tasks: when the replay changed no data, the new log entries of the checked kinds
  (`sign_in`, `sign_out`, `search`, `filter`, `view`) become checks on their stable fields only
  (kind, object, name; the user for sign-in/out), never ids, result counts, sessions or plain page
  views; plus "no rows added to or removed from" each data table (a read-only task stays read-only).
- Infeasible tasks: "state untouched" is judged on the data tables only. Reading (signing in,
  searching, browsing) is not touching: an infeasible task whose replay browses and then reports
  the missing feature still verifies; any data change fails it.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from trajfactory.schema import Evidence, StatePredicate, Trajectory, Verdict, WebTask, content_hash
from trajfactory.settings.sites import SiteFacts, site_facts

VERIFIER = "state"
VERSION = "2"
CREATED_RE = re.compile(r"\b(placed|created|added|posted|new|appears?|confirmed|submitted|in (?:your|the) (?:cart|basket|bag))\b", re.I)
STATUS_RE = re.compile(r"\b(?:status(?: is| of)?|marked(?: as)?|set to)\s+['\"]?([A-Za-z][A-Za-z ]{1,20}?)['\"]?(?=[.,;]|$)", re.I)
PLACE_WORDS = r"(?:of|in|to|on|at|from|under|inside|within)"
LOG_KINDS = {"sign_in": ("user",), "sign_out": ("user",), "search": (), "filter": (), "view": ()}
"""Log kinds a read-only check is derived from -> extra stable fields beyond kind, object and name."""
REFINED = {"search", "filter"}
"""Kinds a user refines by repeating: only the last entry per object becomes a check."""


def _facts(state: dict[str, Any]) -> SiteFacts:
    """The site facts of a state (its `app`): volatile columns, log tables, outcome words. Per site, declared by
    its adapter; a state of an unregistered site has none."""
    return site_facts(state.get("app")) or SiteFacts(name="unregistered")


def log_tables(state: dict[str, Any]) -> set[str]:
    """State tables that log reading (audit/analytics), not application data."""
    return set(_facts(state).log_tables)


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
    """table -> {added: rows, removed: rows, changed: [(row_before, row_after)]}; rows keyed by `id` when they have one.
    Volatile columns (the site's `SiteFacts.volatile`) are left out of every row."""
    out = {}
    facts = _facts(after or before)
    for table in sorted(set(before) | set(after)):
        b, a = before.get(table), after.get(table)
        if not isinstance(b, list) and not isinstance(a, list):
            continue
        drop = facts.volatile_columns(table)
        b, a = [_stable(r, drop) for r in b or []], [_stable(r, drop) for r in a or []]
        key = (lambda r: r.get("id")) if all("id" in r for r in b + a) else (lambda r: json.dumps(r, sort_keys=True))
        bk, ak = {key(r): r for r in b}, {key(r): r for r in a}
        d = {"added": [ak[k] for k in ak if k not in bk], "removed": [bk[k] for k in bk if k not in ak],
             "changed": [(bk[k], ak[k]) for k in ak if k in bk and bk[k] != ak[k]]}
        if any(d.values()):
            out[table] = d
    return out


def data_diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, list]]:
    """`state_diff` of the application data only (activity logs left out)."""
    logs = log_tables(after or before)
    return {t: d for t, d in state_diff(before, after).items() if t not in logs}


def _stable(row: dict[str, Any], volatile: set[str]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in volatile}


def _describe_log(where: dict[str, Any]) -> str:
    kind, obj, name = where.get("kind"), where.get("object"), where.get("name")
    if kind in ("sign_in", "sign_out"):
        return f"user {name!r} signed {'in' if kind == 'sign_in' else 'out'}"
    if kind == "search":
        return f"a search of {obj}s for {name!r} was made"
    if kind == "filter":
        return f"the {obj} list was filtered by {name!r}"
    return f"{obj} {name!r} was viewed"


def log_predicates(before: dict[str, Any], after: dict[str, Any]) -> list[StatePredicate]:
    """Checks of a read-only replay: one per distinct new log entry of a checked kind (stable fields only)."""
    preds, seen = [], set()
    for table in sorted(log_tables(after or before)):
        added = [r for r in state_diff(before, after).get(table, {}).get("added", []) if r.get("kind") in LOG_KINDS]
        # a refined search or filter counts once: the last one of its kind and object is the one the task ended on
        last = {(r["kind"], r.get("object")): i for i, r in enumerate(added) if r["kind"] in REFINED}
        for i, row in enumerate(added):
            if row["kind"] in REFINED and last[(row["kind"], row.get("object"))] != i:
                continue
            where = {k: row.get(k) for k in ("kind", "object", "name", *LOG_KINDS[row["kind"]])}
            key = (table, json.dumps(where, sort_keys=True))
            if key not in seen:
                seen.add(key)
                preds.append(StatePredicate(table=table, where=where, min_count=1, delta=True, origin="diff",
                                            description=_describe_log(where)))
    return preds


def unchanged_checks(initial: dict[str, Any]) -> list[StatePredicate]:
    """No data table gains or loses rows (activity logs may grow: reading is not touching)."""
    return [StatePredicate(table=table, count=0, delta=True, origin="manual", description=f"no rows added to or removed from {table}")
            for table, rows in sorted(initial.items()) if isinstance(rows, list) and table not in log_tables(initial)]


def predicates_from_diff(before: dict[str, Any], after: dict[str, Any]) -> list[StatePredicate]:
    """Predicates that hold after a successful replay and not before: new rows, changed fields, removed rows;
    for a replay that changed no data (a read-only task), the new activity-log entries (see the module doc)."""
    preds: list[StatePredicate] = []
    for table, d in data_diff(before, after).items():
        groups: dict[str, int] = {}
        for row in d["added"]:  # ids of new rows are not part of the outcome: match on content
            content = json.dumps({k: v for k, v in row.items() if k != "id"}, sort_keys=True)
            groups[content] = groups.get(content, 0) + 1
        for where, n in groups.items():
            preds.append(StatePredicate(table=table, where=json.loads(where), count=n, delta=True, origin="diff",
                                        description=f"{n} new row(s) in {table}"))
        for old, new in d["changed"]:
            fields = {k: v for k, v in new.items() if old.get(k) != v}
            preds.append(StatePredicate(table=table, where={"id": new["id"], **fields}, count=1, origin="diff",
                                        description=f"{table} #{new['id']}: {', '.join(f'{k}: {old.get(k)!r} -> {v!r}' for k, v in fields.items())}"))
        for row in d["removed"]:
            where = {"id": row["id"]} if "id" in row else row
            preds.append(StatePredicate(table=table, where=where, count=0, origin="diff", description=f"{table} row removed"))
    if preds:
        return preds
    logged = log_predicates(before, after)
    if not logged:  # nothing read or written that a check could tell from doing nothing
        return []
    read_only = [p.model_copy(update={"origin": "diff", "description": f"read-only: {p.description}"})
                 for p in unchanged_checks(before)]
    return logged + read_only


def _quoted(text: str) -> list[str]:
    return [next(g for g in m.groups() if g) for m in re.finditer(r"'([^']+)'|\"([^\"]+)\"|\u201c([^\u201d]+)\u201d", text)]


def _status_value(word: str, statuses: set[str], facts: SiteFacts) -> str:
    """The stored status an outcome's word means: the word itself, else a wording of it the site declares
    (`SiteFacts.synonyms`, e.g. the tracker's "Done" for `resolved`) that is one of the table's statuses."""
    key = lambda w: re.sub(r"[\s-]+", "_", w.strip().lower())  # noqa: E731 - "In progress" -> in_progress
    value = key(word)
    if value not in statuses:
        for group in facts.synonyms:
            keys = {key(w) for w in group}
            if value in keys and (hits := sorted(keys & statuses)):
                return hits[0]
    return value


def predicates_from_outcome(task: WebTask, initial: dict[str, Any]) -> list[StatePredicate]:
    """Predicates the expected outcome names: a created order/thread/reply/comment, an issue status, quoted names."""
    text = task.spec.expected_outcome
    # quoted names are values, not table words: "the permission 'Can view group'" names no group
    low = re.sub(r"'[^']+'|\"[^\"]+\"|\u201c[^\u201d]+\u201d", lambda m: " " * len(m.group(0)), text).lower()
    preds: list[StatePredicate] = []
    quoted = _quoted(text)
    table_words = _facts(initial).outcome_tables  # words of an outcome sentence -> state table
    named = {t: [m for w in words for m in re.finditer(rf"\b{w}s?\b", low)] for t, words in table_words.items() if t in initial}
    named = {t: ms for t, ms in named.items() if ms}
    # "Your reply appears at the end of the thread": a table named only as the place of another is no outcome
    place = {t for t, ms in named.items() if all(re.search(rf"\b{PLACE_WORDS}\s+(?:the|this|that|your|its|an?)\s+$", low[:m.start()])
                                                 for m in ms)}
    for table in table_words:
        if table not in named or (table in place and len(named) > len(place)):
            continue
        status = STATUS_RE.search(text)
        if status and initial[table] and "status" in initial[table][0]:
            value = _status_value(status.group(1), {r["status"] for r in initial[table]}, _facts(initial))
            preds.append(StatePredicate(table=table, where={"status": value}, text_contains=quoted, origin="outcome",
                                        description=f"a row of {table} has status {value!r}"))
        elif CREATED_RE.search(text):
            preds.append(StatePredicate(table=table, text_contains=quoted, min_count=1, delta=True, origin="outcome",
                                        description=f"a new row in {table}" + (f" mentioning {quoted}" if quoted else "")))
    return preds


def overreach(outcome: list[StatePredicate], before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What a replay added beyond what its outcome names: for each outcome check of new rows that names things
    (quoted text), the rows added to its table that it does not match (e.g. every permission granted where the
    tutorial grants one). Empty when the change stays within the stated outcome."""
    diff = data_diff(before, after)
    out = []
    for pred in outcome:
        if not (pred.delta and pred.text_contains):
            continue
        added = diff.get(pred.table, {}).get("added", [])
        extra = [r for r in added if not _matches(r, pred)]
        if extra:
            out.append(f"{len(extra)} new row(s) in {pred.table} beyond the outcome's {pred.text_contains} "
                       f"(e.g. {json.dumps(extra[0], sort_keys=True)})")
    return out


def verify_state(task: WebTask, trajectory: Trajectory | None, initial: dict[str, Any], final: dict[str, Any],
                 checks: list[StatePredicate] | None = None) -> Verdict:
    """The state verdict of one rollout: every predicate holds (feasible task), or the agent reported
    infeasibility and the state is unchanged (infeasible task)."""
    t0 = time.perf_counter()
    failed: list[dict[str, Any]] = []
    checks = task.checks if checks is None else checks
    reported = bool(trajectory and trajectory.steps and trajectory.steps[-1].tool == "report_infeasible")
    if not task.feasible:
        diff = data_diff(initial, final)  # reading (the activity log) is not touching
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
