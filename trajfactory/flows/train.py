"""The closed loop as a Prefect flow: one call into `pipelines/closed_loop.py` with the Prefect runner.

    train_flow(recipe, "trajfactory-out/datasets/trajfactory-swe-demo@v3")

SFT (and DPO when the recipe asks), then the evaluation of the trained model beside its base, each a Prefect task
whose output directory is keyed by the data's content digest, the model and the settings: a second run reuses them,
and a killed training run resumes from its last checkpoint. The before/after table is a Prefect table artifact.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from trajfactory.flows.runner import PrefectRunner
from trajfactory.pipelines.closed_loop import closed_loop
from trajfactory.settings import Recipe
from trajfactory.training.evaluate import table_rows


@flow(name="train-and-eval")
def train_flow(recipe: Recipe, data: str) -> dict:
    """The run's dataset version (SWE or web) -> a fine-tuned model -> its scores beside the untrained model's."""
    result = closed_loop(recipe, data, PrefectRunner())
    report = result["report"]
    sides = [s for s in ("model", "baseline") if s in report["models"]]
    create_table_artifact(
        table=[{"score": row[0], **{f"{side}: {report['models'][side]['spec']}": value
                                    for side, value in zip(sides, row[1:])}} for row in table_rows(report)],
        key="closed-loop-eval", description="The fine-tuned model beside the untrained one on held-out tasks")
    trained = result["training"][-1]
    get_run_logger().info("trained %s (%s steps%s), evaluated on %d held-out tasks: %s", trained["out"],
                          trained["steps"], ", reused" if trained["reused"] else "",
                          report["data"]["tasks_evaluated"], report["files"]["report"])
    return result
