"""The web factory as a Prefect flow: one call into `pipelines/web.py` with the Prefect runner.

Every gold replay, rollout and judgement is a cached Prefect task (`flows/tasks.py`), `web.browsers` at once,
so a run that is killed and started again redoes none that finished. With `web.policies: [model]` or
`web.judge: true` the flow needs a model: a caller that holds one passes `web_flow(recipe, endpoint=...)`,
else `run_web(recipe)` serves or reaches the recipe's `model:` for the run. With a `cluster:` section, the gold
replays, rollouts and judgements run on the Ray cluster's nodes (`flows/cluster.py`), each episode with the node's own
Chromium and site.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from trajfactory.executors.runs import hold_work_dir
from trajfactory.flows.cluster import cluster_session
from trajfactory.flows.runner import PrefectRunner, publish_yields
from trajfactory.models.service import ModelEndpoint
from trajfactory.pipelines import web
from trajfactory.settings import Recipe


@flow(name="web")
def web_flow(recipe: Recipe, endpoint: ModelEndpoint | None = None) -> dict:
    """Tutorials -> web tasks -> checked tasks -> verified trajectories -> one new dataset version."""
    with cluster_session(recipe.cluster, recipe.work_dir):
        result = web.run(recipe, PrefectRunner(), endpoint)
    publish_yields(result["summary"], prefix="web-yields")
    get_run_logger().info("web dataset %s %s: %s, %d trajectories verified", recipe.web.dataset_name,
                          result["version"], result["counts"], result["verified"])
    return result


def run_web(recipe: Recipe) -> dict:
    """The web flow with `web.browsers` episodes at once, holding the recipe's work dir for the run
    (`executors/runs.py`: WorkDirBusy while another run holds it); for the CLI."""
    if recipe.web is None:
        raise ValueError("the recipe has no `web:` section; add one (e.g. `web: {tutorials: [builtin:docs]}`)")
    with hold_work_dir(recipe.work_dir):
        return web_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=recipe.web.browsers))(recipe)
