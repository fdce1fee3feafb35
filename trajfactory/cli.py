"""`trajfactory` command line: the whole factory (`run`) and one command per stage."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from trajfactory.config import RecipeError, load_recipe

app = typer.Typer(
    help="trajfactory: turn repositories into verified agent trajectories, written as versioned Parquet datasets.\n\n"
    "Start with `trajfactory run` (the embedded default recipe), or pass your own RECIPE.yaml.",
    no_args_is_help=True,
    add_completion=False,
)
sandbox_app = typer.Typer(help="Manage sandbox images and leftover containers.", no_args_is_help=True)
dataset_app = typer.Typer(help="Inspect dataset versions.", no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(dataset_app, name="dataset")


def _mount_models() -> None:
    from trajfactory.models.cli import model_app

    app.add_typer(model_app, name="model", help="Make, serve and query models (tiny local model, vLLM server).")


_mount_models()
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("httpx", "httpcore", "docker", "urllib3", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _records_dir(recipe) -> Path:
    return Path(recipe.work_dir) / "records"


def _save(recipe, name: str, records: list) -> None:
    from trajfactory.schema import write_records

    write_records(_records_dir(recipe) / f"{name}.jsonl", records)


def _load(recipe, name: str, model):
    from trajfactory.schema import read_records

    try:
        return read_records(_records_dir(recipe) / f"{name}.jsonl", model)
    except FileNotFoundError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _save_envs(recipe, envs: dict) -> None:
    path = _records_dir(recipe) / "environments.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: dataclasses.asdict(v) for k, v in envs.items()}, indent=1))


def _load_envs(recipe) -> dict:
    from trajfactory.executors.base import EnvironmentHandle

    path = _records_dir(recipe) / "environments.json"
    if not path.is_file():
        console.print(f"[red]{path}: missing; run `trajfactory synthesize` first[/red]")
        raise typer.Exit(2)
    return {k: EnvironmentHandle(**v) for k, v in json.loads(path.read_text()).items()}


def _print_yields(summary: dict) -> None:
    for name, rows in summary.items():
        if not rows:
            continue
        table = Table(title=f"yields {name.replace('_', ' ')}")
        for col in rows[0]:
            table.add_column(col)
        for row in rows:
            table.add_row(*(str(v) for v in row.values()))
        Console().print(table)


@app.command()
def run(recipe: Optional[Path] = RECIPE_ARG) -> None:
    """Run the whole factory: harvest → synthesize & validate → rollout → verify → dataset version."""
    _setup_logging()
    r = _recipe(recipe)
    from trajfactory.flows.swe import factory_flow

    result = factory_flow(r)
    if "summary" in result:
        _print_yields(result["summary"])
        counts = ", ".join(f"{n} {k}" for k, n in result["counts"].items())
        typer.echo(f"wrote {result['root']}/{result['version']} ({counts})")
    if result.get("web"):
        _report_web(result["web"])


def _report_web(web: dict) -> None:
    _print_yields(web.get("summary", {}))
    counts = ", ".join(f"{n} {k}" for k, n in web.get("counts", {}).items())
    typer.echo(f"wrote {web['root']}/{web['version']} ({counts})")


@app.command()
def web(recipe: Optional[Path] = RECIPE_ARG) -> None:
    """Run only the web half: tutorials → web tasks → replayed, state-checked browser trajectories → dataset."""
    _setup_logging()
    r = _recipe(recipe)
    if r.web is None:
        console.print("[red]the recipe has no `web:` section[/red]")
        raise typer.Exit(2)
    from trajfactory.flows.web import run_web

    _report_web(run_web(r.web))


@app.command()
def harvest(recipe: Optional[Path] = RECIPE_ARG) -> None:
    """Harvest the recipe's repositories (git URL, local path, pypi:NAME==VERSION) into pinned mirrors."""
    _setup_logging()
    r = _recipe(recipe)
    from trajfactory.flows.swe import harvest_flow

    sources, quarantine = harvest_flow(r)
    _save(r, "sources", sources)
    _save(r, "quarantine-harvest", quarantine)
    for s in sources:
        typer.echo(f"{s.name}\t{s.commit[:12]}\t{s.license or '-'}\t{s.uri}")
    for q in quarantine:
        typer.echo(f"QUARANTINED {q.uri}: {q.reason}: {q.detail}")


@app.command()
def synthesize(recipe: Optional[Path] = RECIPE_ARG) -> None:
    """Build sandbox images, synthesize bug candidates and validate them by running tests (needs `harvest`)."""
    _setup_logging()
    r = _recipe(recipe)
    from prefect.task_runners import ThreadPoolTaskRunner

    from trajfactory.flows.swe import synthesize_flow
    from trajfactory.schema import Source

    out = synthesize_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=r.sandbox.concurrency))(
        r, _load(r, "sources", Source))
    for name in ("candidates", "validations", "tasks", "quarantine"):
        _save(r, name if name != "quarantine" else "quarantine-synthesize", out[name])
    _save(r, "gold-verdicts", out.get("gold_verdicts", []))
    _save_envs(r, out["environments"])
    typer.echo(f"{len(out['candidates'])} candidates, {len(out['tasks'])} validated tasks, "
               f"{len(out['quarantine'])} quarantined")


@app.command()
def rollout(recipe: Optional[Path] = RECIPE_ARG) -> None:
    """Execute every task with the recipe's policy in a sandbox and record trajectories (needs `synthesize`)."""
    _setup_logging()
    r = _recipe(recipe)
    from prefect.task_runners import ThreadPoolTaskRunner

    from trajfactory.flows.swe import rollout_flow
    from trajfactory.schema import Task

    runner = ThreadPoolTaskRunner(max_workers=r.sandbox.concurrency)
    trajectories = rollout_flow.with_options(task_runner=runner)(r, _load(r, "tasks", Task), _load_envs(r))
    _save(r, "trajectories", trajectories)
    typer.echo(f"{len(trajectories)} trajectories")


@app.command()
def verify(recipe: Optional[Path] = RECIPE_ARG) -> None:
    """Test each trajectory's final repository state in a fresh sandbox (needs `rollout`)."""
    _setup_logging()
    r = _recipe(recipe)
    from prefect.task_runners import ThreadPoolTaskRunner

    from trajfactory.flows.swe import verify_flow
    from trajfactory.schema import Task, Trajectory

    runner = ThreadPoolTaskRunner(max_workers=r.sandbox.concurrency)
    verdicts = verify_flow.with_options(task_runner=runner)(
        r, _load(r, "tasks", Task), _load(r, "trajectories", Trajectory), _load_envs(r))
    _save(r, "verdicts", verdicts)
    typer.echo(f"{sum(v.passed for v in verdicts)}/{len(verdicts)} trajectories verified")


@app.command()
def build(recipe: Optional[Path] = RECIPE_ARG) -> None:
    """Write the stage records as a new immutable dataset version (needs `verify`)."""
    _setup_logging()
    r = _recipe(recipe)
    from trajfactory.datasets.yields import yields
    from trajfactory.flows.swe import build_flow
    from trajfactory.schema import Candidate, Quarantine, Task, Trajectory, Validation, Verdict

    tasks, trajs = _load(r, "tasks", Task), _load(r, "trajectories", Trajectory)
    verdicts = _load(r, "verdicts", Verdict)
    summary = yields(_load(r, "candidates", Candidate), _load(r, "validations", Validation), tasks, trajs, verdicts)
    records = {
        "tasks": tasks,
        "trajectories": trajs,
        "verdicts": _load(r, "gold-verdicts", Verdict) + verdicts,
        "quarantine": _load(r, "quarantine-harvest", Quarantine) + _load(r, "quarantine-synthesize", Quarantine),
    }
    version = build_flow(r, records, summary)
    _print_yields(summary)
    typer.echo(f"wrote {Path(r.dataset.root) / r.dataset.name}/{version}")


@sandbox_app.command("base-image")
def base_image() -> None:
    """Build the local base image every sandbox image starts from (debootstrap; cached)."""
    _setup_logging()
    from trajfactory.executors.images import ensure_base_image

    typer.echo(ensure_base_image())


@sandbox_app.command("cleanup")
def cleanup() -> None:
    """Remove containers that trajfactory started and that were left behind."""
    from trajfactory.executors.docker import cleanup_leftover_containers

    typer.echo(f"removed {cleanup_leftover_containers()} containers")


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


if __name__ == "__main__":
    app()
