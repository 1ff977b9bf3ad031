"""Evaluation: task metrics, localization metrics, agreement metrics and cost.

Definitions and references: ``docs/metrics.md``; each function's docstring names the one it
implements.  Per-pair metrics return one value per (image, class) pair so callers can pool,
bootstrap or filter them.
"""

from .agreement import (
    argmax_agreement,
    center_of_mass_shift,
    cosine,
    spearman,
    topk_intersection,
    topk_iou,
    topk_sets,
)
from .cost import count_macs, count_nonzero_params, count_params, file_bytes, latency_ms
from .localization import (
    center_point_maps,
    energy_pointing_game,
    per_class_mean,
    pointing_hits,
    pointing_hits_tolerance,
    roc_auc,
)
from .task import mean_average_precision, per_image_average_precision, sample_f1

__all__ = [
    # localization
    "pointing_hits",
    "pointing_hits_tolerance",
    "per_class_mean",
    "center_point_maps",
    "roc_auc",
    "energy_pointing_game",
    # agreement
    "spearman",
    "cosine",
    "topk_sets",
    "topk_intersection",
    "topk_iou",
    "argmax_agreement",
    "center_of_mass_shift",
    # task
    "mean_average_precision",
    "per_image_average_precision",
    "sample_f1",
    # cost
    "count_params",
    "count_nonzero_params",
    "count_macs",
    "latency_ms",
    "file_bytes",
]

from .runner import evaluate_models, model_cost, nan_to_none  # noqa: E402

__all__ += ["evaluate_models", "model_cost", "nan_to_none"]
