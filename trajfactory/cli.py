"""`trajfactory` command line: the whole factory (`run`) and one command per stage."""

from __future__ import annotations

import errno
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.table import Table

from trajfactory.progress import setup_logging
from trajfactory.settings import RecipeError, load_recipe

app = typer.Typer(
    help="trajfactory: turn repositories into verified agent trajectories, written as versioned Parquet datasets.\n\n"
    "Start with `trajfactory run` (the embedded default recipe), or pass your own RECIPE.yaml.",
    no_args_is_help=True,
    add_completion=False,
)
sandbox_app = typer.Typer(help="Manage sandbox images and leftover containers.", no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")


def _mount() -> None:
    from trajfactory.datasets.cli import EVAL_HELP, VIEW_HELP, dataset_app, eval_instances, view
    from trajfactory.models.cli import model_app
    from trajfactory.pipelines.eval_cli import EVAL_HELP as MODEL_EVAL_HELP, eval_command
    from trajfactory.server.cli import deploy, server_app, worker
    from trajfactory.server.cluster_cli import cluster_app
    from trajfactory.training.cli import train_app

    app.add_typer(model_app, name="model", help="Make, serve and query models (tiny local model, vLLM server).")
    app.add_typer(dataset_app, name="dataset")
    app.command(help=VIEW_HELP)(view)
    app.command("eval-instances", help=EVAL_HELP)(eval_instances)
    app.add_typer(train_app, name="train")
    app.command("eval", help=MODEL_EVAL_HELP)(eval_command)
    app.add_typer(server_app, name="server")
    app.add_typer(cluster_app, name="cluster")
    app.command()(deploy)
    app.command()(worker)

console = Console(stderr=True)

RECIPE_ARG = typer.Argument(None, help="Recipe YAML file; omit it to use the embedded default recipe.",
                            show_default=False)


def _recipe(path: Optional[Path]):
    try:
        return load_recipe(path)
    except RecipeError as exc:
        console.print(f"[red]bad recipe[/red]\n{exc}")
        raise typer.Exit(2) from None


def _setup_logging() -> None:
    setup_logging()


def _hold_work_dir(stack: ExitStack, r) -> None:
    """This run holds the recipe's work dir until `stack` closes (executors/runs.py); a live run there stops it."""
    from trajfactory.executors.runs import WorkDirBusy, hold_work_dir

    try:
        held = stack.enter_context(hold_work_dir(r.work_dir))
    except WorkDirBusy as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"run ID: {held.run_id} (its sandbox containers carry the label trajfactory.run={held.run_id})")


@contextmanager
def _stops_cleanly(r) -> Iterator[None]:
    """A run whose ground failed for good (the Docker engine, Chromium, the model server after every retry, a full
    disk) stops with what failed and how to go on, not a traceback: its finished work is kept in the work dir."""
    from trajfactory.executors.base import InfrastructureError
    from trajfactory.models.client import ModelError

    try:
        yield
    except (InfrastructureError, ModelError, OSError) as exc:
        full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
        if (isinstance(exc, ModelError) and not exc.infrastructure) or (isinstance(exc, OSError) and not full):
            raise
        what = (f"no space left on the device of {exc.filename or r.work_dir} ({exc.strerror})" if full else
                f"the model server failed: {exc}" if isinstance(exc, ModelError) else str(exc))
        typer.secho(f"run stopped: {what}", fg="red", err=True)
        typer.echo(f"Finished work is kept in {r.work_dir}: once that is fixed, run the same command again to resume "
                   "(finished steps are not redone).")
        raise typer.Exit(1) from None


def _print_yields(summary: dict) -> None:
    for name, rows in summary.items():
        if not rows:
            continue
        table = Table(title=f"yields {name.replace('_', ' ')}")
        for col in rows[0]:
            table.add_column(col)
        for row in rows:
            table.add_row(*(str(v) for v in row.values()))
        # A log file or pipe is not 80 columns wide: keep the tables readable there too.
        Console(width=None if sys.stdout.isatty() else 200).print(table)


def _report_model(summary: dict) -> None:
    """One line each for the model's usage and the judge's agreement with the tests, when there were any."""
    total = next((row for row in summary.get("model_usage", []) if row["stage"] == "total"), None)
    if total:
        typer.echo(f"model usage ({total['model']}): {total['requests']} requests ({total['failed_requests']} failed), "
                   f"{total['prompt_tokens']} prompt + {total['completion_tokens']} completion tokens, "
                   f"{total['latency_s']:.1f} s in requests, estimated cost ${total['cost_usd']:.4f}")
    for row in summary.get("judge_agreement", []):
        agree = "n/a" if row["agreement"] is None else f"{row['agreement']:.3f}"
        kappa = "n/a" if row["kappa"] is None else f"{row['kappa']:.3f}"
        typer.echo(f"judge vs tests: agreement {agree} on {row['answered']} answered, kappa {kappa}, "
                   f"{row['abstained']} of {row['n']} abstained")


@app.command()
def run(recipe: Optional[Path] = RECIPE_ARG) -> None:
    """Run the whole factory: harvest → synthesize & validate → rollout → verify (tests, and the model
    judge) → dataset version. A recipe with a `model:` section serves that model (or uses its external
    endpoint) for the whole run and prints what the model work cost. A recipe with a `train:` section then
    closes the loop: it fine-tunes a model on the new version's verified trajectories and prints its scores
    on held-out tasks beside the untrained model's."""
    _setup_logging()
    r = _recipe(recipe)
    from trajfactory.flows.swe import factory_flow

    with ExitStack() as stack:
        _hold_work_dir(stack, r)
        stack.enter_context(_stops_cleanly(r))
        result = factory_flow(r)
        _report_run(r, result)


def _report_run(r, result: dict) -> None:
    if "summary" in result:
        _print_yields(result["summary"])
        _report_model(result["summary"])
        counts = ", ".join(f"{n} {k}" for k, n in result["counts"].items())
        typer.echo(f"wrote {result['root']}/{result['version']} ({counts})")
        _export(r, result)
    if result.get("web"):
        _report_web(result["web"])
        _export(r, result["web"])
    if result.get("closed_loop"):
        _report_closed_loop(result["closed_loop"])
    if result.get("closed_loop_error"):
        console.print(f"[red]closed loop not run: {result['closed_loop_error']}[/red]")
        raise typer.Exit(1)


def _report_closed_loop(loop: dict) -> None:
    """What was trained (or reused) and the before/after table of the evaluation."""
    from trajfactory.training.evaluate import rich_table

    for stage in loop["training"]:
        how = "reused" if stage["reused"] else (f"resumed from step {stage['resumed_from_step']}"
                                                 if stage["resumed_from_step"] else "trained")
        if stage["kind"] == "grpo":
            typer.echo(f"grpo: {stage['out']} ({how}: {stage['steps']} steps, {stage['episodes']} episodes on "
                       f"{stage['rows_used']} tasks, mean reward per step {stage['reward_per_step']})")
        else:
            typer.echo(f"{stage['kind']}: {stage['out']} ({how}: {stage['steps']} steps on {stage['rows_used']} "
                       f"rows, final loss {stage['final_loss']:.4f})")
    report = loop["report"]
    data = report["data"]
    before = report["models"].get("baseline", {}).get("spec", "not run")
    typer.echo(f"eval: {Path(report['files']['report']).parent} ({'reused' if report['reused'] else 'evaluated'}: "
               f"{data['tasks_evaluated']} tasks of split {data['split']}; before = {before})")
    Console(width=None if sys.stdout.isatty() else 250).print(rich_table(report))
    typer.echo(f"wrote {report['files']['report']} and {report['files']['chart']}")


def _export(r, result: dict) -> None:
    """The recipe's exports (`dataset.exports`) of the version a run wrote, under `dataset.export_root`."""
    if not r.dataset.exports:
        return
    from trajfactory.datasets.export import export_version
    from trajfactory.executors import get_backend

    name = Path(result["root"]).name
    out = Path(r.dataset.export_root) / name / result["version"]
    backend = get_backend(r.sandbox.backend) if "swebench" in r.dataset.exports else None
    report = export_version(result["root"], out, version=result["version"], formats_=tuple(r.dataset.exports),
                            backend=backend, progress=typer.echo)
    made = ", ".join(f"{k} {sum(v.values()) if all(isinstance(n, int) for n in v.values()) else v.get('instances', v)}"
                     for k, v in report["exports"].items())
    typer.echo(f"exported {name} {result['version']} to {out} ({made})")


def _report_web(web: dict) -> None:
    _print_yields(web.get("summary", {}))
    counts = ", ".join(f"{n} {k}" for k, n in web.get("counts", {}).items())
    typer.echo(f"wrote {web['root']}/{web['version']} ({counts})")


@app.command()
def web(recipe: Optional[Path] = RECIPE_ARG) -> None:
    """Run only the web half: tutorials → web tasks → replayed (and, when `web.policies` lists `model`, model-driven),
    state-checked browser trajectories → dataset."""
    _setup_logging()
    r = _recipe(recipe)
    if r.web is None:
        console.print("[red]the recipe has no `web:` section[/red]")
        raise typer.Exit(2)
    from trajfactory.executors.runs import WorkDirBusy
    from trajfactory.flows.web import run_web

    try:
        result = run_web(r)  # holds the work dir; a web model policy or judge uses the recipe's `model:`
    except WorkDirBusy as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    _report_web(result)


def _stage(flow_name: str, recipe: Optional[Path], concurrent: bool = True) -> dict:
    """Run one stage flow; a missing input record file names the stage to run first."""
    _setup_logging()
    r = _recipe(recipe)
    from prefect.task_runners import ThreadPoolTaskRunner

    from trajfactory.flows import swe

    flow = getattr(swe, flow_name)
    if concurrent:
        flow = flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=r.sandbox.concurrency))
    try:
        with ExitStack() as stack:
            _hold_work_dir(stack, r)
            stack.enter_context(_stops_cleanly(r))
            return flow(r)
    except FileNotFoundError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


@app.command()
def harvest(recipe: Optional[Path] = RECIPE_ARG) -> None:
    """Harvest the recipe's repositories (git URL, local path, pypi:NAME==VERSION) into pinned mirrors."""
    out = _stage("harvest_flow", recipe)
    typer.echo(f"{out['sources']} repositories harvested, {out['quarantined']} quarantined")


@app.command()
def synthesize(recipe: Optional[Path] = RECIPE_ARG) -> None:
    """Build sandbox images, synthesize bug candidates (procedural, and LM rewrites with a model) and validate
    them by running tests; write problem statements (needs `harvest`)."""
    out = _stage("synthesize_flow", recipe)
    typer.echo(f"{out['candidates']} candidates, {out['tasks']} validated tasks, {out['quarantine']} quarantined")


@app.command()
def rollout(recipe: Optional[Path] = RECIPE_ARG) -> None:
    """Execute the tasks with the recipe's policies (oracle and/or the model) in sandboxes and record
    trajectories (needs `synthesize`)."""
    typer.echo(f"{_stage('rollout_flow', recipe)['trajectories']} trajectories")


@app.command()
def verify(recipe: Optional[Path] = RECIPE_ARG) -> None:
    """Test each trajectory's final repository state in a fresh sandbox, and judge it with the model when the
    recipe enables `judge:` (needs `rollout`)."""
    out = _stage("verify_flow", recipe)
    typer.echo(f"{out['passed']}/{out['verdicts']} trajectories verified")
    if out.get("judge_agreement"):
        from trajfactory.datasets.yields import judge_rows

        _report_model({"judge_agreement": judge_rows(out["judge_agreement"])})


@app.command()
def build(recipe: Optional[Path] = RECIPE_ARG) -> None:
    """Write the stage records as a new immutable dataset version (needs `verify`)."""
    out = _stage("build_flow", recipe, concurrent=False)
    _print_yields(out["summary"])
    _report_model(out["summary"])
    typer.echo(f"wrote {out['root']}/{out['version']}")


@sandbox_app.command("base-image")
def base_image(python: Optional[str] = typer.Option(
        None, "--python", help="The sandbox Python whose image to build: 3.11 (Debian bookworm, the default), "
        "3.13 (Debian trixie) or 3.9 (Debian bullseye), as a recipe's sandbox.python chooses it.")) -> None:
    """Build the local base image every sandbox image starts from (debootstrap; cached): prints its image id."""
    _setup_logging()
    from trajfactory.executors.images import base_image_tag, ensure_base_image

    try:
        tag = base_image_tag(python)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--python") from exc
    typer.echo(ensure_base_image(tag))


CLEANUP_HELP = (
    "Remove sandbox containers that trajfactory started and that were left behind (a killed run leaves its "
    "containers running).\n\n"
    "With --run ID: only the containers of that run. With --work-dir DIR: those of every run recorded in that "
    "work dir (the recipe's `work_dir`), refused while a run holds it. With neither: EVERY container trajfactory "
    "started, those of runs still going included, so use it only when no run is going.\n\n"
    "With --cluster ADDRESS (a recipe's `cluster.address`): on the engine of every node of that Ray cluster as "
    "well.\n\n"
    "A run also removes, as it starts, the containers that earlier runs of its work dir left behind (on the "
    "nodes' engines too when its recipe has a `cluster:` section).")


RUN_OPT = typer.Option(None, "--run", metavar="ID", show_default=False,
                       help="Remove only the containers of this factory run: its ID is printed at the start of the "
                       "run (`run ID: ...`) and recorded in WORK_DIR/runs.jsonl.")
WORK_DIR_OPT = typer.Option(None, "--work-dir", metavar="DIR", show_default=False,
                            help="Remove the containers of every run recorded in this work dir (a recipe's "
                            "`work_dir`).")

CLUSTER_OPT = typer.Option(None, "--cluster", metavar="HOST:PORT", show_default=False,
                           help="Also on every node's engine of the Ray cluster whose head is at HOST:PORT (the "
                           "recipe's `cluster.address`); with --run or alone, not with --work-dir.")


@sandbox_app.command("cleanup", help=CLEANUP_HELP)
def cleanup(run_id: Optional[str] = RUN_OPT, work_dir: Optional[Path] = WORK_DIR_OPT,
            cluster: Optional[str] = CLUSTER_OPT) -> None:
    from trajfactory.executors.docker import cleanup_leftover_containers, engine_available
    from trajfactory.executors.runs import RUN_LABEL, WorkDirBusy, cleanup_work_dir

    if run_id and work_dir:
        console.print("[red]give --run or --work-dir, not both[/red]")
        raise typer.Exit(2)
    if cluster:
        if work_dir:
            console.print("[red]--cluster goes with --run ID (or alone), not with --work-dir[/red]")
            raise typer.Exit(2)
        from trajfactory.flows.cluster import cluster_session, remove_on_nodes
        from trajfactory.settings import ClusterConfig

        try:
            config = ClusterConfig(address=cluster)
        except ValueError as exc:
            console.print(f"[red]--cluster: {exc.errors()[0]['msg'] if hasattr(exc, 'errors') else exc}[/red]")
            raise typer.Exit(2) from None
        with cluster_session(config):
            per_node = remove_on_nodes({run_id} if run_id else None)
        for node, removed in sorted(per_node.items()):
            typer.echo(f"node {node}: removed {removed} containers" + (f" of run {run_id}" if run_id else ""))
        if not engine_available():
            return
    if work_dir:
        try:
            typer.echo(f"removed {cleanup_work_dir(work_dir)} containers of the runs of {work_dir}")
        except (WorkDirBusy, FileNotFoundError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        return
    removed = cleanup_leftover_containers({RUN_LABEL: run_id} if run_id else None)
    typer.echo(f"removed {removed} containers" + (f" of run {run_id}" if run_id else ""))


_mount()

if __name__ == "__main__":
    app()
