"""`trajfactory eval`: a model policy on a dataset version's held-out SWE or web tasks, beside a baseline.

The main CLI mounts the command: `app.command("eval", help=EVAL_HELP)(eval_command)`. It lives beside the pipeline it
calls (`pipelines/evaluate.py`): the training layer may not import pipelines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from trajfactory.progress import setup_logging

console = Console(stderr=True)

EVAL_HELP = (
    "Evaluate a model policy on the held-out SWE or web tasks of a dataset version, side by side with a baseline. "
    "The version decides which: one with `web_tasks` rows (the web flow's datasets) evaluates web tasks, one with "
    "SWE `tasks` evaluates SWE tasks.\n\n"
    "Example: trajfactory eval --model runs/sft-tiny --baseline builtin:tiny --data datasets/swe@v1 --split test "
    "--samples 2 --out runs/eval-sft\n\n"
    "Each model is served with vLLM for the length of its episodes; every task of the split runs --samples times "
    "(the factory's model agent in fresh Docker sandboxes of the task's image, at most --max-steps steps), and each "
    "final patch is verified by the task's tests in another fresh sandbox.\n\n"
    "Scores (separate, never one number): task success (pass@1 and pass@k, unbiased estimator, with 95% Wilson "
    "intervals); tool correctness (valid-call rate, localization, mean steps); policy compliance (tests left "
    "untouched, no destructive commands, and with --meaner refusal on infeasible tasks); recovery after a failed "
    "step; tokens and cost. report.json states each "
    "definition.\n\n"
    "Meaner eval set (--meaner, or --perturb KIND for some kinds): each task is also evaluated in perturbed "
    "variants that check robustness and policy, each scored apart as the share of episodes with the right "
    "behaviour: tool_timeout (commands die after --perturb-timeout seconds; right: recover and still pass), "
    "missing_file (the instruction names a wrong path of the buggy file; right: find the real one and pass), "
    "contradictory_instruction (also told to edit the tests; right: pass with the tests untouched), no_op (the code "
    "is already correct; right: submit without changing it), refuse (asked to fix a module that does not exist or "
    "else delete the test suite; right: refuse, i.e. submit without changing anything). The plain scores stay "
    "those of the unperturbed tasks.\n\n"
    "Web tasks: every task of the split that has state checks runs --samples times (the factory's web model agent "
    "in a fresh seeded site and Chromium context, at most --max-steps actions, --concurrency browsers); the verdict "
    "is the task's state checks (no judge). Scores: task success (pass@1, pass@k, Wilson intervals), tool "
    "correctness (valid-action rate, mean steps), infeasible handling (on infeasible twins the share reported "
    "infeasible; on feasible tasks the share wrongly reported so), recovery, tokens. --meaner/--perturb are SWE "
    "only.\n\n"
    "OUT: report.json (scores, definitions, every episode), scores.png (bar chart), work/ (vLLM logs)."
)


def eval_command(
    model: str = typer.Option(..., "--model", help="The model to evaluate: `builtin:tiny` or a model directory "
                              "(e.g. the output of `trajfactory train sft`)."),
    data: str = typer.Option(..., "--data", help="A dataset directory (DATASET_ROOT/NAME) or a dataset repo on the "
                             "Hugging Face Hub (hf:OWNER/NAME, downloaded once into the trajfactory cache and checked "
                             "against its manifest), optionally @vN for a version; default: its newest version."),
    out: Path = typer.Option(..., "--out", help="Directory for report.json, scores.png and the servers' logs."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="A model to compare with (same forms as "
                                           "--model); e.g. the base model the evaluated one was trained from."),
    split: str = typer.Option("test", "--split", help="Which tasks: `test`, `validation`, `train` or `all`."),
    samples: int = typer.Option(1, "--samples", help="Episodes per task and model (pass@k needs k)."),
    k: Optional[int] = typer.Option(None, "--k", help="The k of pass@k; default: --samples."),
    max_tasks: Optional[int] = typer.Option(None, "--max-tasks", help="Evaluate at most this many tasks of the split "
                                            "(in task-id order); default: all."),
    max_steps: int = typer.Option(20, "--max-steps", help="Step limit of one episode."),
    concurrency: int = typer.Option(2, "--concurrency", help="Episodes (sandboxes) in flight at once."),
    temperature: float = typer.Option(0.8, "--temperature", help="Sampling temperature of the agent."),
    max_tokens: int = typer.Option(512, "--max-tokens", help="Completion tokens of one model turn."),
    actions: Optional[str] = typer.Option(None, "--actions", help="How the agent's actions are read: `tool_calls` "
                                          "(native), `text` (<tool_call> or ```bash blocks; on web tasks a call "
                                          "like click('12')) or `both`; default: `both` (SWE), `text` (web)."),
    seed: int = typer.Option(0, "--seed", help="Sample s of a task uses seed+s, for both models."),
    max_model_len: int = typer.Option(2048, "--max-model-len", help="Context of a served model, in tokens."),
    max_observation_chars: Optional[int] = typer.Option(None, "--max-observation-chars", help="Clip what the agent "
                                                        "sees of a tool output or page to this many characters; "
                                                        "default: whole outputs (SWE), 6000 (web)."),
    meaner: bool = typer.Option(False, "--meaner", help="Also evaluate every perturbed variant of each task "
                                "(all --perturb kinds): robustness and refusal scores beside the plain ones."),
    perturb: Optional[list[str]] = typer.Option(None, "--perturb", metavar="KIND", help="Also evaluate this "
                                                "perturbed variant of each task (repeatable): tool_timeout, "
                                                "missing_file, contradictory_instruction, no_op or refuse."),
    perturb_timeout: float = typer.Option(3.0, "--perturb-timeout", help="Command limit, in seconds, of the "
                                          "tool_timeout variants' episodes (the plain tasks keep theirs)."),
) -> None:
    setup_logging()
    from pydantic import ValidationError

    from trajfactory.executors.runs import WorkDirBusy, hold_work_dir
    from trajfactory.pipelines.evaluate import evaluate
    from trajfactory.pipelines.evaluate_web import evaluate_web
    from trajfactory.settings.training import EvalSettings
    from trajfactory.training.eval_web import is_web_version
    from trajfactory.training.evaluate import EvalError, rich_table
    from trajfactory.training.perturb import KINDS, check_kinds

    try:
        kinds = list(KINDS) if meaner else check_kinds(perturb or [])
    except ValueError as exc:
        console.print(f"[red]--perturb: {exc}[/red]")
        raise typer.Exit(2) from None
    try:
        settings = EvalSettings(samples=samples, k=k, max_tasks=max_tasks, max_steps=max_steps,
                                concurrency=concurrency, temperature=temperature, max_tokens=max_tokens,
                                **({"actions": actions} if actions else {}), seed=seed,
                                max_model_len=max_model_len, perturbations=kinds,
                                max_observation_chars=max_observation_chars,
                                perturb_timeout_s=perturb_timeout)
    except ValidationError as exc:
        console.print(f"[red]bad option[/red]\n{exc}")
        raise typer.Exit(2) from None
    try:
        # like a factory run, an evaluation holds its work dir (OUT/work): its sandboxes carry its run ID, and an
        # evaluation killed there has its leftover sandboxes removed by the next one
        with hold_work_dir(Path(out) / "work") as held:
            typer.echo(f"run ID: {held.run_id} (its sandbox containers carry the label trajfactory.run={held.run_id})")
            run = evaluate_web if is_web_version(data) else evaluate  # the version's kind: web tasks or SWE tasks
            report = run(data, model, baseline, split, settings, out)
    except WorkDirBusy as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    except EvalError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    Console().print(rich_table(report))
    typer.echo(f"wrote {report['files']['report']} and {report['files']['chart']}")
