"""Evaluation: task metrics, localization metrics, agreement metrics, faithfulness, bootstrap
statistics, cost, the streaming evaluator and the two-model audit.

Definitions and references: ``docs/metrics.md``; each function's docstring names the one it
implements.  Per-pair metrics return one value per (image, class) pair so callers can pool,
bootstrap or filter them.
"""

from . import agreement, cost, faithfulness, localization, stats, task
from .agreement import *  # noqa: F401,F403
from .auditing import audit
from .cost import *  # noqa: F401,F403
from .faithfulness import *  # noqa: F401,F403
from .localization import *  # noqa: F401,F403
from .realmasks import mask_localization
from .runner import (DEFINITIONS, collect_pairs, evaluate_models, model_cost, nan_to_none,
                     pair_set_masks)
from .stats import *  # noqa: F401,F403
from .task import *  # noqa: F401,F403

__all__ = [*localization.__all__, *agreement.__all__, *task.__all__, *cost.__all__,
           *faithfulness.__all__, *stats.__all__, "DEFINITIONS", "audit", "collect_pairs",
           "evaluate_models", "mask_localization", "model_cost", "nan_to_none",
           "pair_set_masks"]
