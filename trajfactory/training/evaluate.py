"""The data side of `trajfactory eval`: the held-out tasks of a dataset version, the settings of an evaluation, and
its report (report.json, a bar chart drawn with Pillow, a rich table). The rollouts and verdicts come from the SWE
pipeline's own functions (`pipelines/evaluate.py`, one layer up); the scores from `training/eval_metrics.py`.

    tasks, data = held_out_tasks("datasets/swe@v1", "test")      # Task records rebuilt from the `tasks` rows
    write_report(report, out)                                     # report.json + scores.png
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trajfactory.datasets.hub_pull import HUB_PREFIX, hub_origin
from trajfactory.schema import Checks, Entity, Gold, Provenance, SweEnvironment, Task, Validation
from trajfactory.training.common import data_identity, open_version
from trajfactory.training.perturb import KINDS

SPLITS = ("train", "validation", "test", "all")


class EvalError(ValueError):
    """An evaluation that cannot run: names the input that was wrong and what would be right."""


# ---------------------------------------------------------------- held-out tasks


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def task_from_row(row: dict[str, Any]) -> Task:
    """The `Task` of one `tasks` row (`Task.to_row` inverted: nested fields come back from structs or JSON)."""
    return Task(
        task_id=row["task_id"], kind=row.get("kind") or "swe", instance_id=row["instance_id"],
        instruction=row["problem_statement"], environment=SweEnvironment(**_json(row["environment"])),
        bug_patch=row["bug_patch"],
        checks=Checks(FAIL_TO_PASS=list(row["FAIL_TO_PASS"] or []), PASS_TO_PASS=list(row["PASS_TO_PASS"] or []),
                      p2p_method=row.get("p2p_method") or ""),
        gold=Gold(patch=row["patch"]), difficulty=row["difficulty"],
        difficulty_score=row.get("difficulty_score") or 0.0,
        curriculum=row.get("curriculum") or 0, family=row["family"], entity=Entity(**_json(row["entity"])),
        validation=Validation(**_json(row["validation"])), provenance=Provenance(**_json(row["provenance"])),
        statement_source=row.get("statement_source") or "template", statement_detail=row.get("statement_detail") or "",
        split=row.get("split") or "")


def open_split(data: str | Path, split: str):
    """A checked `split` and the version `data` names: (store, version, table reader, the reference errors name)."""
    if split not in SPLITS:
        raise EvalError(f"--split {split}: not a split; use one of {', '.join(SPLITS)}")
    store, version, read = open_version(data, EvalError)
    origin = hub_origin(store, version)
    ref = f"{HUB_PREFIX}{origin['repo_id']}@{version}" if origin else f"{store.root}@{version}"
    return store, version, read, ref


def held_out_tasks(data: str | Path, split: str, max_tasks: int | None = None) -> tuple[list[Task], dict[str, Any]]:
    """The SWE tasks of `split` (`all`: every split) of a dataset version (`DIR` or `hf:OWNER/NAME`; the latest unless
    `@vN`), in task-id order, and what identifies that data (with the Hub repo and commit of a pulled version)."""
    store, version, read, ref = open_split(data, split)
    rows = read("tasks")
    swe = [r for r in rows if (r.get("kind") or "swe") == "swe"]
    chosen = [r for r in swe if split == "all" or r.get("split") == split]
    if not chosen:
        found = {s: sum(r.get("split") == s for r in swe) for s in sorted({r.get("split") or "" for r in swe})}
        raise EvalError(f"--data {ref} --split {split}: no SWE tasks in split {split!r} of version {version} "
                        f"(SWE tasks per split: {found or 'none'}); choose another --split, or --split all")
    tasks = sorted((task_from_row(r) for r in chosen), key=lambda t: t.task_id)[:max_tasks]
    source = {**data_identity(store, version), "split": split, "tasks_in_split": len(chosen),
              "tasks_evaluated": len(tasks)}
    return tasks, source


# ---------------------------------------------------------------- the report

ROWS: list[tuple[str, tuple[str, ...], str]] = [
    ("pass@1", ("task_success", "pass@1"), "pct"),
    ("pass@k", ("task_success", "pass@k"), "pct"),
    ("valid-call rate", ("tool_correctness", "valid_call_rate"), "pct"),
    ("localization", ("tool_correctness", "localization_rate"), "pct"),
    ("mean steps", ("tool_correctness", "mean_steps"), "num"),
    ("tests untouched", ("compliance", "tests_untouched_rate"), "pct"),
    ("no destructive cmd", ("compliance", "no_destructive_rate"), "pct"),
    ("recovery", ("recovery", "recovery_rate"), "pct"),
    ("tokens / episode", ("usage", "tokens_per_episode"), "num"),
    ("cost (USD)", ("usage", "cost_usd"), "usd"),
]
SHORT = {"tool_timeout": "timeout", "missing_file": "missing file", "contradictory_instruction": "contradiction",
         "no_op": "no-op", "refuse": "refuse"}
PERTURBED_ROWS: list[tuple[str, tuple[str, ...], str]] = [
    ("refusal on infeasible", ("compliance", "refusal_rate"), "pct"),
    *((f"robust: {SHORT[kind]}", ("robustness", kind, "rate"), "pct") for kind in KINDS),
]
"""Rows of the perturbed variants (`--meaner`): shown only when some model's scores have them."""
WEB_ROWS: list[tuple[str, tuple[str, ...], str]] = [
    ("pass@1", ("task_success", "pass@1"), "pct"),
    ("pass@k", ("task_success", "pass@k"), "pct"),
    ("valid-action rate", ("tool_correctness", "valid_action_rate"), "pct"),
    ("mean steps", ("tool_correctness", "mean_steps"), "num"),
    ("infeasible reported", ("infeasible_handling", "infeasible_reported_rate"), "pct"),
    ("false infeasible", ("infeasible_handling", "false_infeasible_rate"), "pct"),
    ("recovery", ("recovery", "recovery_rate"), "pct"),
    ("tokens / episode", ("usage", "tokens_per_episode"), "num"),
    ("cost (USD)", ("usage", "cost_usd"), "usd"),
]
"""Rows of a web report (`"kind": "web"`, `training/eval_web.py`)."""


def _has(scores: dict, path: tuple[str, ...]) -> bool:
    node: Any = scores
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
    return isinstance(node, dict) and path[-1] in node


def _value(scores: dict, path: tuple[str, ...]) -> Any:
    node: Any = scores
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _ci(scores: dict, path: tuple[str, ...]) -> list[float] | None:
    """The 95% interval of a rate that has one: pass rates and robustness rates."""
    if path[0] == "task_success":
        return scores["task_success"].get(f"{path[1]}_ci95")
    if path[0] == "robustness":
        return _value(scores, (*path[:-1], "ci95"))
    return None


def rows_of(report: dict) -> list[tuple[str, tuple[str, ...], str]]:
    """The report's rows: every plain score, then the perturbed variants' scores that some model has (a web
    report: the web scores)."""
    if report.get("kind") == "web":
        return WEB_ROWS
    scores = [m["scores"] for m in report["models"].values()]
    return ROWS + [r for r in PERTURBED_ROWS if any(_has(s, r[1]) for s in scores)]


def _fmt(value: Any, kind: str, ci: list[float] | None = None) -> str:
    if value is None:
        return "n/a"
    if kind == "pct":
        text = f"{100 * value:.1f}%"
        return text + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")
    if kind == "usd":
        return f"{value:.4f}"
    return f"{value:.1f}"


def table_rows(report: dict) -> list[list[str]]:
    """[score, model, baseline] rows as printed (pass rates with their 95% CI)."""
    models = report["models"]
    out = []
    for label, path, kind in rows_of(report):
        row = [label if label != "pass@k" else f"pass@{models['model']['scores']['task_success']['k']}"]
        for side in ("model", "baseline"):
            if side not in models:
                continue
            s = models[side]["scores"]
            row.append(_fmt(_value(s, path), kind, _ci(s, path)))
        out.append(row)
    return out


def rich_table(report: dict):
    """The report as a rich Table: one row per score, the model beside its baseline."""
    from rich.table import Table

    models = report["models"]
    data = report["data"]
    table = Table(title=f"{data['dataset']}@{data['version']} split {data['split']}: {data['tasks_evaluated']} tasks "
                        f"x {report['settings']['samples']} samples (95% Wilson CI)")
    table.add_column("score")
    for side in ("model", "baseline"):
        if side in models:
            table.add_column(f"{side}: {models[side]['spec']}", justify="right")
    for row in table_rows(report):
        table.add_row(*row)
    return table


def scores_png(report: dict, path: str | Path) -> Path:
    """Grouped bars (model, baseline) of every rate in [0, 1], with the 95% CI of the pass and robustness rates as
    whiskers."""
    from PIL import Image, ImageDraw

    chart_rows = [r for r in rows_of(report) if r[2] == "pct"]
    width, height, left, top, bottom = max(760, 70 + 60 * len(chart_rows)), 420, 50, 40, 80
    models = report["models"]
    sides = [s for s in ("model", "baseline") if s in models]
    colours = {"model": (31, 119, 180), "baseline": (255, 127, 14)}
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((left, 10), f"trajfactory eval: {report['data']['dataset']}@{report['data']['version']} "
                          f"split {report['data']['split']}", fill="black")
    x0, x1, y0, y1 = left, width - 20, top, height - bottom
    draw.line([(x0, y0), (x0, y1), (x1, y1)], fill="black")
    for frac in (0.0, 0.5, 1.0):
        y = y1 - (y1 - y0) * frac
        draw.line([(x0 - 4, y), (x0, y)], fill="black")
        draw.text((8, y - 6), f"{int(frac * 100)}%", fill="black")
    group = (x1 - x0) / len(chart_rows)
    bar = group * 0.8 / max(1, len(sides))
    for i, (label, key, _) in enumerate(chart_rows):
        gx = x0 + i * group + group * 0.1
        for j, side in enumerate(sides):
            s = models[side]["scores"]
            value = _value(s, key)
            bx = gx + j * bar
            if value is None:
                draw.text((bx + 2, y1 - 14), "n/a", fill="gray")
                continue
            draw.rectangle([bx, y1 - (y1 - y0) * value, bx + bar - 2, y1], fill=colours[side])
            if ci := _ci(s, key):
                cx = bx + bar / 2 - 1
                ylo, yhi = y1 - (y1 - y0) * ci[0], y1 - (y1 - y0) * ci[1]
                draw.line([(cx, ylo), (cx, yhi)], fill="black")
                draw.line([(cx - 3, yhi), (cx + 3, yhi)], fill="black")
                draw.line([(cx - 3, ylo), (cx + 3, ylo)], fill="black")
        for n, word in enumerate(label.split(" ")[:3]):
            draw.text((gx, y1 + 6 + 12 * n), word, fill="black")
    for j, side in enumerate(sides):
        lx = x0 + 10 + j * 300
        draw.rectangle([lx, height - 22, lx + 12, height - 10], fill=colours[side])
        draw.text((lx + 18, height - 22), f"{side}: {models[side]['spec']}"[:45], fill="black")
    out = Path(path)
    img.save(out, format="PNG")
    return out


def write_report(report: dict, out: str | Path) -> dict[str, str]:
    """report.json and scores.png in `out` (made when missing); returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, sort_keys=False, default=str))
    tmp.replace(out / "report.json")
    chart = scores_png(report, out / "scores.png")
    return {"report": str(out / "report.json"), "chart": str(chart)}
