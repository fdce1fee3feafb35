"""The flow a deployment runs on its schedule: the factory on a recipe FILE, read when the run starts, so an edit of
the recipe (one more repository, say) changes the next scheduled run, and the run writes the next version of the
dataset on top of the last (`trajfactory deploy`, `server/deploy.py`), or none when nothing changed since it."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from prefect import flow, get_run_logger

from trajfactory.executors.runs import hold_work_dir
from trajfactory.flows.swe import factory_flow
from trajfactory.settings import load_recipe


@contextlib.contextmanager
def _in_dir(path: str | None):
    """Relative paths of the recipe (work_dir, dataset.root) mean what they meant where it was deployed."""
    before = os.getcwd()
    if path:
        os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@flow(name="trajfactory-scheduled")
def scheduled_factory_flow(recipe_path: str, run_dir: str | None = None) -> dict:
    """The whole factory on the recipe at `recipe_path` (read at run time), run from `run_dir`."""
    with _in_dir(run_dir):
        recipe = load_recipe(Path(recipe_path))
        with hold_work_dir(recipe.work_dir) as held:
            get_run_logger().info("recipe %s, run ID %s", recipe_path, held.run_id)
            result = factory_flow(recipe, only_if_new=True)
    return {k: v for k, v in result.items() if k != "summary"}
