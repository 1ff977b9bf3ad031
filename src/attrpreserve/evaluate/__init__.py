"""Evaluation: task metrics, localization metrics, agreement metrics and cost.

Definitions and references: ``docs/metrics.md``; each function's docstring names the one it
implements.  Per-pair metrics return one value per (image, class) pair so callers can pool,
bootstrap or filter them.
"""

from . import agreement, cost, localization, task
from .agreement import *  # noqa: F401,F403
from .cost import *  # noqa: F401,F403
from .localization import *  # noqa: F401,F403
from .runner import evaluate_models, model_cost, nan_to_none
from .task import *  # noqa: F401,F403

__all__ = [*localization.__all__, *agreement.__all__, *task.__all__, *cost.__all__,
           "evaluate_models", "model_cost", "nan_to_none"]
