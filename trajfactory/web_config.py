"""Settings of the web half of the factory (tutorials -> web tasks -> verified browser trajectories).

Only pydantic here, so `config.Recipe` can embed it as `web: WebConfig` without importing browsers.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from trajfactory.schema import content_hash

BUILTIN_DOCS = "builtin:docs"


class WebConfig(BaseModel):
    """What the web flow harvests, how many tasks it makes, how it runs them and where the dataset goes."""

    model_config = ConfigDict(extra="forbid")

    tutorials: list[str] = Field(default_factory=lambda: [BUILTIN_DOCS], min_length=1)
    """Tutorial sources: `builtin:docs` (the bundled docs served on loopback), http(s) URLs, folders, globs, dumps."""
    seed: int = 0
    """Seed of the bundled apps and of the pick of infeasible tasks."""
    infeasible_share: float = Field(0.25, ge=0, le=1)
    """Share of each site's tasks that also get an infeasible twin (at least one per site when > 0)."""
    browsers: int = Field(2, ge=1)
    """Chromium processes in the pool, and episodes run at once."""
    max_tasks_per_site: int | None = Field(None, ge=1)
    """Cap on feasible tasks per site (tutorials in URI order); None keeps all."""
    max_steps: int = Field(40, ge=1)
    """Browser actions per episode before it ends as `step_limit`."""
    max_pages: int = Field(200, ge=1)
    """Pages fetched per crawled tutorial site."""
    work_dir: str = "trajfactory-out/web-work"
    """Cached results, screenshots and the run journal; keep it to resume a killed run."""
    policies: list[Literal["replay", "model"]] = Field(default_factory=lambda: ["replay"], min_length=1)
    """Who acts in the browser: `replay` (tutorial-guided, model-free) and/or `model` (the served model)."""
    judge: bool = False
    """Also judge each trajectory with the model (goal + actions + final screenshot)."""
    dataset_name: str = "trajfactory-web"
    dataset_root: str = "trajfactory-out/datasets"

    @field_validator("tutorials")
    @classmethod
    def _known_builtin(cls, uris: list[str]) -> list[str]:
        for uri in uris:
            if uri.startswith("builtin:") and uri != BUILTIN_DOCS:
                raise ValueError(f"unknown built-in tutorial source {uri!r}; the only one is {BUILTIN_DOCS!r}")
        return uris

    def uses_model(self) -> bool:
        return "model" in self.policies or self.judge

    def digest(self) -> str:
        """Hash of everything that changes the data (not where it is written or how many browsers run)."""
        return content_hash(self.model_dump(exclude={"work_dir", "dataset_root", "browsers"}))
