"""SWE-bench / SWE-smith instances that reproduce, and a harness that evaluates predictions on them.

Export (`export_instances`): the environment of an instance is its image (`image_name`, the repository installed at
`environment_setup_commit`, the clean commit) plus a branch named after the instance in a git bundle, the way
SWE-smith keeps a mirror with a branch per instance. The branch's tip, `base_commit`, is the clean commit with the
task's bug committed on top (fixed author and date, so the hash is the same on every export): the gold `patch`
applies there and fixes the failing tests. The export directory holds::

    instances.jsonl                 # one SWE-bench instance per line
    repos/<owner__name>.<commit12>.bundle

Evaluation (`evaluate`) reads those files alone: for each instance with a prediction, a fresh container of its
image, the instance's branch fetched from the bundle and checked out (its hash must be `base_commit`), the
prediction applied under the factory's guard (test files reverted, tampering refused, canary tests), then
FAIL_TO_PASS and PASS_TO_PASS run by the harness and parsed from its own record. Resolved means every one passed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from trajfactory.datasets.formats import SWEBENCH_KEYS, swebench_instances
from trajfactory.datasets.scan import expand
from trajfactory.executors.base import Backend, EnvironmentHandle, Sandbox, SandboxError, apply_patch
from trajfactory.executors.swe_env import test_in_place
from trajfactory.schema import Checks
from trajfactory.settings import SandboxConfig

log = logging.getLogger(__name__)

INSTANCES = "instances.jsonl"
REPOS = "repos"
FIXED_DATE = "2000-01-01T00:00:00+00:00"
_BUNDLE_IN_SANDBOX = "/tmp/trajfactory-instances.bundle"
_GIT = "git -c core.hooksPath=/dev/null -c commit.gpgsign=false -c core.fsmonitor="


class InstanceError(ValueError):
    """An instances or predictions file that cannot be evaluated: names the file and what is wrong."""


def bundle_name(repo: str, setup_commit: str) -> str:
    """File name of the bundle holding the branches of one repository image."""
    return f"{repo.replace('/', '__')}.{setup_commit[:12]}.bundle"


def _provenance(row: dict) -> dict:
    prov = row.get("provenance") or {}
    return json.loads(prov) if isinstance(prov, str) else prov


def _commit_buggy_state(sandbox: Sandbox, row: dict) -> str:
    """Commit the task's bug on the clean commit as branch `instance_id`; returns the commit's hash."""
    sandbox.reset()
    if (err := apply_patch(sandbox, row["bug_patch"], "/tmp/trajfactory-bug.diff")) is not None:
        raise SandboxError(f"the bug patch does not apply: {err[-300:]}")
    date = _provenance(row).get("commit_date") or FIXED_DATE
    iid = row["instance_id"]
    res = sandbox.execute(
        f"export GIT_AUTHOR_DATE='{date}' GIT_COMMITTER_DATE='{date}' && git add -A && "
        f"{_GIT} -c user.name=trajfactory -c user.email=trajfactory@localhost commit -q --no-verify "
        f"-m '{iid}' -m 'The task bug, applied to {row['base_commit'][:12]}.' && "
        f"{_GIT} branch -f '{iid}' HEAD && git rev-parse HEAD", timeout=120)
    if res.exit_code != 0:
        raise SandboxError(f"the buggy state could not be committed: {res.output[-300:]}")
    return res.output.split()[-1]


def export_instances(task_rows: Iterable[dict], out_dir: str | Path, backend: Backend, *,
                     progress: Callable[[str], None] = log.info) -> tuple[list[dict], list[dict]]:
    """Write `instances.jsonl` and the repository bundles under `out_dir`: (instances, problems).

    A task whose buggy state cannot be made (its image is gone, its bug no longer applies) is left out and reported
    in `problems` ({task_id, reason}); the others are written.
    """
    out = Path(out_dir)
    (out / REPOS).mkdir(parents=True, exist_ok=True)
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for row in task_rows:
        if row.get("kind", "swe") == "swe":
            groups.setdefault((row["image_name"], row["repo"], row["base_commit"]), []).append(row)
    base_commits: dict[str, str] = {}
    problems: list[dict] = []
    kept: list[dict] = []
    for (image, repo, commit), rows in sorted(groups.items()):
        slug = _provenance(rows[0]).get("repo_slug") or repo
        progress(f"export: {len(rows)} instance branch(es) of {slug} at {commit[:12]}")
        try:
            sandbox = backend.start(EnvironmentHandle(backend.name, expand(image), repo, commit), SandboxConfig())
        except Exception as exc:  # noqa: BLE001 — an image that is gone loses its tasks, not the export
            problems += [{"task_id": r["task_id"], "reason": f"environment {image} cannot start: {exc}"} for r in rows]
            continue
        try:
            branches = []
            for row in sorted(rows, key=lambda r: r["instance_id"]):
                try:
                    base_commits[row["task_id"]] = _commit_buggy_state(sandbox, row)
                except SandboxError as exc:
                    problems.append({"task_id": row["task_id"], "reason": str(exc)})
                    continue
                branches.append(row["instance_id"])
                kept.append(row)
            if not branches:
                continue
            res = sandbox.execute(f"git bundle create -q {_BUNDLE_IN_SANDBOX} "
                                  + " ".join(f"'refs/heads/{b}'" for b in branches), timeout=300)
            if res.exit_code != 0:
                raise SandboxError(f"git bundle failed: {res.output[-300:]}")
            (out / REPOS / bundle_name(slug, commit)).write_bytes(sandbox.read_file(_BUNDLE_IN_SANDBOX))
        finally:
            sandbox.close()
    instances = swebench_instances(kept, base_commits=base_commits)
    with open(out / INSTANCES, "w") as f:
        for inst in instances:
            f.write(json.dumps(inst, sort_keys=True) + "\n")
    return instances, problems


# ---------------------------------------------------------------- evaluation


def _read_json_records(path: Path, what: str) -> list[dict]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise InstanceError(f"{what} {path}: cannot be read ({exc.strerror})") from None
    try:
        data = json.loads(text)
        records = data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InstanceError(f"{what} {path}, line {n}: not JSON ({exc.msg}); expected a JSON list or "
                                    "one JSON object per line") from None
    for n, rec in enumerate(records, 1):
        if not isinstance(rec, dict):
            raise InstanceError(f"{what} {path}: record {n} is {type(rec).__name__}, expected a JSON object")
    return records


def load_instances(path: str | Path) -> list[dict]:
    """SWE-bench instances from a JSON list or JSON lines file; each must carry every SWE-bench key."""
    path = Path(path)
    instances = _read_json_records(path, "instances file")
    for n, inst in enumerate(instances, 1):
        missing = [k for k in SWEBENCH_KEYS if k not in inst]
        if missing:
            raise InstanceError(f"instances file {path}: record {n} ({inst.get('instance_id', '?')}) lacks "
                                f"{', '.join(missing)}; an exported instance has {', '.join(SWEBENCH_KEYS)}")
    return instances


def load_predictions(path: str | Path, instances: list[dict]) -> dict[str, str]:
    """instance id -> patch, from SWE-bench predictions ({instance_id, model_patch} records, as a list, JSON lines
    or a dict by id); `gold` takes every instance's own `patch`."""
    if str(path) == "gold":
        return {i["instance_id"]: i["patch"] for i in instances}
    path = Path(path)
    records = _read_json_records(path, "predictions file")
    if len(records) == 1 and "instance_id" not in records[0] and all(isinstance(v, dict) for v in records[0].values()):
        records = [{"instance_id": k, **v} for k, v in records[0].items()]
    out = {}
    for n, rec in enumerate(records, 1):
        if "instance_id" not in rec or "model_patch" not in rec:
            raise InstanceError(f"predictions file {path}: record {n} needs `instance_id` and `model_patch` "
                                f"(got {', '.join(sorted(rec)) or 'no keys'})")
        out[rec["instance_id"]] = rec["model_patch"] or ""
    return out


def _report(inst: dict, *, applied: bool, resolved: bool, evidence: Any = None, error: str = "",
            seconds: float = 0.0) -> dict:
    status = {}
    for key in ("FAIL_TO_PASS", "PASS_TO_PASS"):
        outcomes = getattr(evidence, key, []) if evidence is not None else []
        status[key] = {"success": [o.test for o in outcomes if o.outcome == "passed"],
                       "failure": [o.test for o in outcomes if o.outcome != "passed"]}
    return {"instance_id": inst["instance_id"], "resolved": resolved, "patch_applied": applied,
            "tests_status": status, "reverted": list(getattr(evidence, "reverted", []) or []),
            "refused": list(getattr(evidence, "refused", []) or []),
            "error": error or (getattr(evidence, "detail", "") if not resolved and evidence is not None
                               and not (status["FAIL_TO_PASS"]["success"] or status["FAIL_TO_PASS"]["failure"])
                               else ""),
            "duration_s": round(seconds, 3)}


def evaluate_one(inst: dict, patch: str, bundles: Path, backend: Backend, *, timeout: float = 300.0) -> dict:
    """One instance's report: fresh sandbox, its branch from the bundle, the patch guarded, its tests run."""
    started = time.monotonic()
    bundle = bundles / bundle_name(inst["repo"], inst["environment_setup_commit"])
    if not bundle.is_file():
        return _report(inst, applied=False, resolved=False, error=f"bundle {bundle.name} is missing from {bundles}")
    handle = EnvironmentHandle(backend.name, expand(inst["image_name"]), inst["repo"], inst["environment_setup_commit"])
    try:
        sandbox = backend.start(handle, SandboxConfig())
    except Exception as exc:  # noqa: BLE001 — one instance's missing image fails that instance only
        return _report(inst, applied=False, resolved=False,
                       error=f"image {inst['image_name']} cannot start ({exc}); build it by running the factory "
                             "on the recipe that made the export, or `docker load` it")
    try:
        sandbox.write_file(_BUNDLE_IN_SANDBOX, bundle.read_bytes())
        iid = inst["instance_id"]
        res = sandbox.execute(
            f"{_GIT} fetch -q {_BUNDLE_IN_SANDBOX} 'refs/heads/{iid}:refs/heads/{iid}' && "
            f"{_GIT} checkout -q -f '{iid}' && rm -f {_BUNDLE_IN_SANDBOX} && git rev-parse HEAD", timeout=120)
        lines = res.output.split()
        if res.exit_code != 0 or not lines:
            return _report(inst, applied=False, resolved=False, seconds=time.monotonic() - started,
                           error=f"branch {iid} could not be checked out from {bundle.name}: {res.output[-300:]}")
        if lines[0] != inst["base_commit"]:
            return _report(inst, applied=False, resolved=False, seconds=time.monotonic() - started,
                           error=f"branch {iid} is at {lines[0][:12]}, but the instance's base_commit is "
                                 f"{inst['base_commit'][:12]}")
        checks = Checks(FAIL_TO_PASS=_tests(inst["FAIL_TO_PASS"]), PASS_TO_PASS=_tests(inst["PASS_TO_PASS"]))
        # the branch's last commit is the task's bug: its files get canaries, and what it removed a fix may put back
        bug = sandbox.execute(f"{_GIT} diff --no-ext-diff --no-textconv HEAD~1 HEAD", timeout=120)
        if bug.exit_code != 0:
            return _report(inst, applied=False, resolved=False, seconds=time.monotonic() - started,
                           error=f"the bug commit of branch {iid} could not be read: {bug.output[-300:]}")
        # the instance's own fix (`patch`, as SWE-bench has it) tells a test bound to its name or place from a forgery
        passed, evidence, seconds = test_in_place(sandbox, checks, patch, bug.output, timeout=timeout, started=started,
                                                  gold=inst.get("patch") or None)
        applied = not str(getattr(evidence, "detail", "")).startswith("the submitted patch does not apply")
        return _report(inst, applied=applied, resolved=passed, evidence=evidence, seconds=seconds)
    except Exception as exc:  # noqa: BLE001 — an engine failure fails this instance, never the others
        return _report(inst, applied=False, resolved=False, error=f"{type(exc).__name__}: {exc}",
                       seconds=time.monotonic() - started)
    finally:
        sandbox.close()


def _tests(value: Any) -> list[str]:
    return list(json.loads(value) if isinstance(value, str) else value or [])


def evaluate(instances: list[dict], predictions: dict[str, str], bundles: str | Path, backend: Backend, *,
             timeout: float = 300.0, workers: int = 1,
             progress: Callable[[str], None] = log.info) -> list[dict]:
    """Reports of the instances that have a prediction, in the instances' order."""
    todo = [i for i in instances if i["instance_id"] in predictions]
    done = 0

    def one(inst: dict) -> dict:
        nonlocal done
        report = evaluate_one(inst, predictions[inst["instance_id"]], Path(bundles), backend, timeout=timeout)
        done += 1
        progress(f"[{done}/{len(todo)}] {inst['instance_id']}: "
                 f"{'resolved' if report['resolved'] else 'unresolved'}"
                 f"{' (' + report['error'][:120] + ')' if report['error'] else ''}")
        return report

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, todo))
