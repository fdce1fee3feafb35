"""The recipe and all its sections: the one settings package, at the bottom (it imports only the records).

    from trajfactory.settings import Recipe, load_recipe
    recipe = load_recipe("recipe.yaml")      # errors name the file and the field

`recipe.py` holds the recipe itself, `swe.py` the SWE sections, `web.py` the web section, `model.py` the
`model:` section, `sandbox.py` the sandbox limits, `agents.py` the agents' sampling and episode budgets, and
`training.py` the `train:` section with the settings of `trajfactory train ...` and `trajfactory eval`.
"""

from trajfactory.settings.agents import (EpisodeLimits, ModelPolicyConfig, SamplingConfig, Section, WebAgentConfig,
                                         unique_policies)
from trajfactory.settings.cluster import ClusterConfig
from trajfactory.settings.model import BUILTIN_TINY, ModelConfig
from trajfactory.settings.recipe import DEFAULT_RECIPE, DatasetConfig, Recipe, RecipeError, load_recipe
from trajfactory.settings.sandbox import SandboxConfig
from trajfactory.settings.swe import (BUILTIN_REPOS, CombineConfig, JudgeConfig, LMRewriteConfig, ModelRolloutConfig, RepoSpec,
                                      RolloutConfig, SynthesisConfig, ValidationConfig)
from trajfactory.settings.web import BUILTIN_DOCS, WebConfig, WebJudgeConfig

__all__ = ["BUILTIN_DOCS", "BUILTIN_REPOS", "BUILTIN_TINY", "ClusterConfig", "CombineConfig", "DEFAULT_RECIPE", "DatasetConfig", "EpisodeLimits",
           "JudgeConfig", "LMRewriteConfig", "ModelConfig", "ModelPolicyConfig", "ModelRolloutConfig", "Recipe",
           "RecipeError", "RepoSpec", "RolloutConfig", "SamplingConfig", "SandboxConfig", "Section", "SynthesisConfig",
           "ValidationConfig", "WebAgentConfig", "WebConfig", "WebJudgeConfig", "load_recipe", "unique_policies"]
