"""`trajfactory dataset ...`, `trajfactory view` and `trajfactory eval-instances`: look at dataset versions, export
them for trainers and harnesses, publish them to the Hub, review them, and evaluate exported SWE-bench instances.

The main CLI mounts these: `app.add_typer(dataset_app, name="dataset")`, `view` and `eval-instances`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from trajfactory.progress import setup_logging

dataset_app = typer.Typer(help="Inspect dataset versions, export them for trainers and harnesses, and publish them "
                          "to the Hugging Face Hub.", no_args_is_help=True)
console = Console(stderr=True)


@dataset_app.command("list")
def dataset_list(path: Path = typer.Argument(..., help="A dataset directory (DATASET_ROOT/NAME).")) -> None:
    """List the versions of a dataset with their row counts."""
    from trajfactory.datasets.store import DatasetStore

    store = DatasetStore(path)
    for v in store.versions():
        m = store.manifest(v)
        counts = ", ".join(f"{t} {info['rows']}" for t, info in m["tables"].items())
        typer.echo(f"{v}\tparent={m.get('parent')}\t{counts}")


@dataset_app.command("verify")
def dataset_verify(path: Path = typer.Argument(..., help="A dataset directory (DATASET_ROOT/NAME)."),
                   version: str = typer.Argument(..., help="Version to check, e.g. v1.")) -> None:
    """Check every shard of a version against the sha256 in its manifest."""
    from trajfactory.datasets.store import DatasetStore

    problems = DatasetStore(path).verify(version)
    for p in problems:
        typer.echo(p)
    typer.echo("ok" if not problems else f"{len(problems)} problems")
    raise typer.Exit(1 if problems else 0)


_PUSH_HELP = (
    "Publish dataset versions to the Hugging Face Hub: one commit and one tag `vN` per version.\n\n"
    "The repo holds each version's card (README.md, whose configs load each table), manifest.json and shards, laid "
    "out as in the version directory, so `load_dataset(REPO_ID, \"tasks\", revision=\"v2\")` loads v2; the default "
    "branch holds the newest version. Shards whose sha256 did not change since the version before are not uploaded "
    "again. A version already on the Hub with the same manifest is skipped; a tag with other content is an error.\n\n"
    "The token is read from the HF_TOKEN environment variable (the one huggingface_hub reads); it is never logged or "
    "written to any file. HF_ENDPOINT points the push at another Hub endpoint."
)


@dataset_app.command("push", help=_PUSH_HELP)
def dataset_push(
    path: Path = typer.Argument(..., help="A dataset directory (DATASET_ROOT/NAME) holding versions v1, v2, ..."),
    repo_id: str = typer.Argument(..., help="The Hub dataset repo, OWNER/NAME (created if missing)."),
    version: Optional[str] = typer.Option(None, "--version", help="Push only this version, e.g. v2. Default: every "
                                          "version not yet on the Hub, oldest first."),
    private: bool = typer.Option(False, "--private", help="Create the repo as private (when it does not exist yet)."),
) -> None:
    """Publish dataset versions to the Hugging Face Hub (see _PUSH_HELP)."""
    from trajfactory.datasets.hub import HubInputError, HubPushError, push_dataset

    if not sys.stderr.isatty():  # per-file upload bars would fill a log file; the per-version lines stay
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    try:
        results = push_dataset(path, repo_id, version=version, private=private, progress=typer.echo)
    except HubInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except HubPushError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    pushed = [r.version for r in results if r.status == "pushed"]
    skipped = [r.version for r in results if r.status == "skipped"]
    typer.echo(f"pushed {', '.join(pushed) or 'nothing'}" + (f"; already on the Hub: {', '.join(skipped)}" if skipped else ""))


VIEW_HELP = (
    "Browse a dataset version in your web browser and label its trajectories.\n\n"
    "Serves a page on this machine only (open the printed URL): the version's trajectories with filters (verdict, "
    "mutation family, web site, policy, split), each one's messages and tool calls, its diffs (final patch, the task's "
    "gold and bug patches), web screenshots, and its verdicts.\n\n"
    "Accept or reject a trajectory with a note; \"Save reviews\" writes your labels as a `reviews` table in a NEW "
    "version whose parent is the one you opened (every other table carried over unchanged; the opened version is "
    "never modified). Stop with Ctrl-C."
)


def view(
    dataset: Path = typer.Argument(..., help="A dataset directory (DATASET_ROOT/NAME), the one holding v1, v2, ...; "
                                   "e.g. trajfactory-out/datasets/trajfactory-swe-demo.", show_default=False),
    version: Optional[str] = typer.Option(None, "--version", help="The version to open, e.g. v2 (default: the newest).",
                                          show_default=False),
    port: int = typer.Option(8765, "--port", help="Port to serve on; 0 picks a free one."),
    host: str = typer.Option("127.0.0.1", "--host", help="Loopback address to bind (127.0.0.1 or localhost); any "
                             "other address is refused, so no other machine can reach the page."),
    reviewer: Optional[str] = typer.Option(None, "--reviewer", help="Name recorded with your labels (default: your "
                                           "login name).", show_default=False),
) -> None:
    """Serve the viewer (`datasets/viewer.py`) until Ctrl-C; the help text is VIEW_HELP."""
    import getpass
    import time

    from trajfactory.datasets.viewer import ViewerError, serve_viewer

    try:
        viewer = serve_viewer(dataset, version, host=host, port=port, reviewer=reviewer or getpass.getuser())
    except ViewerError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    except OSError as exc:
        console.print(f"[red]cannot serve on {host}:{port}: {exc.strerror or exc}[/red] (try another --port, or --port 0)")
        raise typer.Exit(2) from None
    typer.echo(f"viewing {dataset} {viewer.view.version} at {viewer.url}  (Ctrl-C to stop)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        viewer.close()
    if viewer.view.pending:
        console.print(f"[yellow]{len(viewer.view.pending)} unsaved labels were dropped (click \"Save reviews\" to "
                      "keep labels)[/yellow]")


EXPORT_HELP = (
    "Write one dataset version in the formats trainers and harnesses read, as plain files under OUT.\n\n"
    "sft/ and dpo/: TRL SFTTrainer / DPOTrainer rows (conversational, `tools` as a JSON string), one Parquet file "
    "per split, verified trajectories only (tests for SWE, state checks for web), rejected reviews left out. "
    "rl/: verl / SkyRL rows (data_source, prompt, ability, reward_model, extra_info) per split: point "
    "data.train_files at rl/train.parquet and data.val_files at rl/validation.parquet. swebench/: SWE-bench "
    "instances (instances.jsonl) with a git bundle per repository holding a branch per instance (the buggy "
    "state); `trajfactory eval-instances` runs them. The SWE-bench export needs the version's sandbox images "
    "(run it where the factory ran)."
)


@dataset_app.command("export", help=EXPORT_HELP)
def dataset_export(
    path: Path = typer.Argument(..., help="A dataset directory (DATASET_ROOT/NAME) holding versions v1, v2, ..."),
    out: Path = typer.Argument(..., help="Directory to write the exports into (created; files are replaced)."),
    version: Optional[str] = typer.Option(None, "--version", help="The version to export (default: the newest)."),
    only: Optional[str] = typer.Option(None, "--only", help="Comma-separated subset of sft,dpo,rl,swebench."),
    accepted_only: bool = typer.Option(False, "--accepted-only", help="SFT/DPO: only trajectories a reviewer "
                                       "accepted in `trajfactory view`."),
    backend: str = typer.Option("auto", "--backend", help="Sandbox backend for the SWE-bench export: auto, docker "
                                "or local."),
) -> None:
    """Export a dataset version (see EXPORT_HELP)."""
    setup_logging()
    from trajfactory.datasets.export import FORMATS, ExportError, export_version
    from trajfactory.executors import get_backend

    wanted = tuple(f.strip() for f in only.split(",")) if only else FORMATS
    try:
        report = export_version(path, out, version=version, formats_=wanted, accepted_only=accepted_only,
                                backend=get_backend(backend) if "swebench" in wanted else None, progress=typer.echo)
    except ExportError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    for name, what in report["exports"].items():
        typer.echo(f"{name}: {json.dumps(what)[:300]}")
    typer.echo(f"wrote {out} from {report['dataset']} {report['version']}")


EVAL_HELP = (
    "Evaluate predictions on exported SWE-bench instances, from the exported files alone.\n\n"
    "For each instance with a prediction: a fresh container of its image, the instance's branch fetched from the "
    "bundle beside FILE (repos/*.bundle) and checked out (it must be the instance's base_commit), the predicted "
    "patch applied (changes to tests and test configuration are reverted, tampering with the test machinery "
    "is refused), then FAIL_TO_PASS and PASS_TO_PASS run and parsed. Resolved: every one passed.\n\n"
    "PRED is a SWE-bench predictions file ({instance_id, model_patch} records as a JSON list, JSON lines or a dict "
    "by id), or `gold` to run each instance's own patch."
)


def eval_instances(
    file: Path = typer.Argument(..., help="instances.jsonl of a `trajfactory dataset export` (swebench/)."),
    predictions: str = typer.Option(..., "--predictions", help="Predictions file, or `gold`."),
    report: Optional[Path] = typer.Option(None, "--report", help="Where to write the JSON report (default: "
                                          "FILE's directory, eval-report.json)."),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds the tests of one instance may run."),
    workers: int = typer.Option(1, "--workers", help="Instances evaluated at once (one container each)."),
    backend: str = typer.Option("docker", "--backend", help="Sandbox backend: docker (the images are Docker "
                                "images) or local."),
) -> None:
    """Run exported instances on predictions (see EVAL_HELP)."""
    setup_logging()
    from trajfactory.datasets.swebench import REPOS, InstanceError, evaluate, load_instances, load_predictions
    from trajfactory.executors import get_backend

    try:
        instances = load_instances(file)
        preds = load_predictions(predictions, instances)
    except InstanceError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    if unknown := sorted(set(preds) - {i["instance_id"] for i in instances}):
        console.print(f"[yellow]{len(unknown)} prediction(s) name no instance of {file}: {', '.join(unknown[:5])}"
                      "[/yellow]")
    reports = evaluate(instances, preds, file.parent / REPOS, get_backend(backend), timeout=timeout,
                       workers=workers, progress=typer.echo)
    resolved = sum(r["resolved"] for r in reports)
    out = report or file.parent / "eval-report.json"
    out.write_text(json.dumps({"resolved": resolved, "total": len(reports),
                               "resolved_ids": [r["instance_id"] for r in reports if r["resolved"]],
                               "instances": reports}, indent=2) + "\n")
    table = Table("instance", "resolved", "F2P ok", "P2P ok", "note")
    for r in reports:
        st = r["tests_status"]
        table.add_row(r["instance_id"], "yes" if r["resolved"] else "no",
                      f"{len(st['FAIL_TO_PASS']['success'])}/{sum(map(len, st['FAIL_TO_PASS'].values()))}",
                      f"{len(st['PASS_TO_PASS']['success'])}/{sum(map(len, st['PASS_TO_PASS'].values()))}",
                      (r["error"] or "; ".join(r["refused"]))[:60])
    console.print(table)
    typer.echo(f"resolved {resolved}/{len(reports)}; report: {out}")
