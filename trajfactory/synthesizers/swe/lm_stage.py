"""The model-backed steps of SWE synthesis as plain library calls: LM rewrite candidates for a
source, and model-written problem statements for accepted tasks (with the failing tests' output
they are written from). Each returns what the client recorded (`ModelUsage`) beside its records.
"""

from __future__ import annotations

from pathlib import Path

from trajfactory.executors.base import Sandbox, apply_patch
from trajfactory.executors.testrun import run_tests
from trajfactory.models.client import ModelClient
from trajfactory.runtime import run_sync
from trajfactory.schema import Candidate, ModelUsage, Quarantine, Source, Task
from trajfactory.settings import SynthesisConfig
from trajfactory.synthesizers.swe import rewrite, statements
from trajfactory.synthesizers.swe.stage import checkout

BUG_PATCH_PATH = "/tmp/trajfactory-bug.diff"
MAX_OUTPUT_CHARS = 20_000


def lm_rewrite(source: Source, cfg: SynthesisConfig, checkout_root: str | Path, client: ModelClient
               ) -> tuple[list[Candidate], list[Quarantine], ModelUsage]:
    """LM rewrite candidates of the source's pinned checkout, the rejected replies, and the model usage."""
    lm = cfg.lm_rewrite
    tree = checkout(source, checkout_root)
    candidates, rejects = rewrite.generate_rewrites(
        tree, client, source_id=source.source_id, repo=source.name, base_commit=source.commit,
        min_complexity=cfg.min_complexity, max_entities=lm.max_entities, samples_per_entity=lm.samples_per_entity,
        sampling={"temperature": lm.temperature, "max_tokens": lm.max_tokens}, seed=cfg.seed,
        max_context_chars=lm.max_context_chars,
    )
    rejects = [q.model_copy(update={"uri": source.uri}) for q in rejects]
    return candidates, rejects, ModelUsage.of_client("lm_rewrite", client)


def failing_output(sandbox: Sandbox, task: Task, *, timeout: float) -> str:
    """What a user sees: the FAIL_TO_PASS tests run on the task's buggy state (a fresh or reset sandbox)."""
    sandbox.reset()
    if (err := apply_patch(sandbox, task.bug_patch, BUG_PATCH_PATH)) is not None:
        return f"(the bug patch did not apply: {err[-300:]})"
    run = run_tests(sandbox, list(task.checks.FAIL_TO_PASS), timeout=timeout)
    if run.timed_out:
        return f"(the failing tests did not finish within {timeout:.0f}s)"
    return run.output[-MAX_OUTPUT_CHARS:]


async def _statement(client: ModelClient, task: Task, test_output: str, max_tokens: int | None,
                     max_context_chars: int) -> statements.StatementResult:
    async with client:
        return await statements.write_statement(
            client, repo=task.environment.repo, bug_patch=task.bug_patch, validation=task.validation,
            test_output=test_output, sampling={"max_tokens": max_tokens} if max_tokens else None,
            max_patch_chars=max_context_chars // 2, max_output_chars=max_context_chars // 2,
            names=statements.topics(task.entity.name, task.entity.file, task.checks.FAIL_TO_PASS),
        )


def write_statement(client: ModelClient, task: Task, test_output: str, *, max_tokens: int | None = None,
                    max_context_chars: int = 6000) -> tuple[Task, ModelUsage]:
    """The task with a model-written statement, or with the template one and the reason it was kept.

    The task id does not change: it is a hash of the bug, not of its description.
    """
    result = run_sync(_statement(client, task, test_output, max_tokens, max_context_chars))
    detail = result.reason if not result.detail else f"{result.reason}: {result.detail}"
    updated = task.model_copy(update={"instruction": result.text, "statement_source": result.source,
                                      "statement_detail": detail[:500]})
    return updated, ModelUsage.of_client("statements", client)
