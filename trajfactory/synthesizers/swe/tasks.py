"""Turn a validated candidate into a `Task`: gold patch, template problem statement, difficulty."""

from __future__ import annotations

import re

from trajfactory.schema import (
    Candidate,
    Checks,
    Gold,
    Provenance,
    Source,
    SweEnvironment,
    Task,
    Validation,
    content_hash,
)

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@(.*)$")


def reverse_patch(patch: str) -> str:
    """The inverse unified diff (what `git apply -R` would apply): the bug patch's fix."""
    out: list[str] = []
    for line in patch.splitlines(keepends=True):
        if line.startswith("--- "):
            out.append("+++ " + line[4:].replace("a/", "b/", 1))
        elif line.startswith("+++ "):
            out.append("--- " + line[4:].replace("b/", "a/", 1))
        elif (m := _HUNK.match(line.rstrip("\n"))) is not None:
            old_start, old_len, new_start, new_len, tail = m.groups()
            old = old_start + ("," + old_len if old_len is not None else "")
            new = new_start + ("," + new_len if new_len is not None else "")
            out.append(f"@@ -{new} +{old} @@{tail}\n")
        elif line.startswith("-") and not line.startswith("--- "):
            out.append("+" + line[1:])
        elif line.startswith("+") and not line.startswith("+++ "):
            out.append("-" + line[1:])
        else:
            out.append(line)
    return "".join(out)


def changed_line_count(patch: str) -> int:
    return sum(
        1
        for line in patch.splitlines()
        if (line.startswith("+") or line.startswith("-")) and not line.startswith(("+++", "---"))
    )


def difficulty(candidate: Candidate, validation: Validation) -> str:
    """A coarse, model-free difficulty: size of the fix and breadth of the failure."""
    size = changed_line_count(candidate.patch)
    if candidate.scope == "class" or size > 8 or len(validation.FAIL_TO_PASS) > 10:
        return "hard"
    if size > 2 or len(validation.FAIL_TO_PASS) > 3:
        return "medium"
    return "easy"


def template_statement(repo: str, validation: Validation, max_tests: int = 5) -> str:
    """A problem statement that names the symptom (failing tests), never the fix or the location."""
    failing = validation.FAIL_TO_PASS
    shown = "\n".join(f"- `{t}`" for t in failing[:max_tests])
    more = f"\n- ... and {len(failing) - max_tests} more" if len(failing) > max_tests else ""
    return (
        f"Some tests of `{repo}` fail on the current code:\n\n{shown}{more}\n\n"
        "They passed before a recent change to the library's source. Find the defect in the "
        "library code and fix it so that these tests pass again, without breaking other tests. "
        "Do not modify the tests."
    )


def make_task(candidate: Candidate, validation: Validation, source: Source, image_name: str,
              python: str | None = None) -> Task:
    """Assemble the task record of a validated candidate; `python`, the version its sandboxes run."""
    if validation.status != "valid":
        raise ValueError(f"candidate {candidate.candidate_id} is {validation.status}, not valid")
    task_id = content_hash(source.name, candidate.base_commit, candidate.patch)
    p2p_method = (
        "coverage-selected: tests that execute the changed lines were run; tests that never "
        "execute them passed in the reference run"
        if validation.selection == "coverage"
        else "full-suite: every reference-passing test was run against the bug"
    )
    return Task(
        task_id=task_id,
        kind="swe",
        instance_id=f"{source.name}__{candidate.family}__{task_id[:8]}",
        instruction=template_statement(source.name, validation),
        environment=SweEnvironment(repo=source.name, base_commit=candidate.base_commit, image_name=image_name,
                                   python=python or None),
        bug_patch=candidate.patch,
        checks=Checks(
            FAIL_TO_PASS=validation.FAIL_TO_PASS,
            PASS_TO_PASS=validation.PASS_TO_PASS,
            p2p_method=p2p_method,
        ),
        gold=Gold(patch=reverse_patch(candidate.patch)),
        difficulty=difficulty(candidate, validation),
        family=candidate.family,
        entity=candidate.entity,
        validation=validation,
        provenance=Provenance(
            source_uri=source.uri,
            source_id=source.source_id,
            license=source.license,
            commit=source.commit,
            repo_slug=source.repo_slug,
            version=source.version,
            commit_date=source.commit_date.isoformat() if source.commit_date else None,
            synthesizer=candidate.synthesizer,
            synthesizer_version=candidate.synthesizer_version,
            params={"family": candidate.family, **candidate.params},
        ),
    )
