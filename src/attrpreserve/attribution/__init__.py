"""Explainers: batched, multi-target attribution maps, registered by name."""

from .gradcam import frozen, gradcam, pair_gradcam, upsample, weighted_map
from .gradients import gradient, input_x_gradient, integrated_gradients

EXPLAINERS = {
    "gradcam": gradcam,
    "gradient": gradient,
    "input_x_gradient": input_x_gradient,
    "ig": integrated_gradients,
}

# Whether an explainer's maps can be differentiated w.r.t. the model's parameters (usable as a
# matching loss). The input-level methods are evaluation-only.
DIFFERENTIABLE = {
    "gradcam": True,
    "gradient": False,
    "input_x_gradient": False,
    "ig": False,
}

__all__ = ["DIFFERENTIABLE", "EXPLAINERS", "frozen", "gradcam", "gradient", "input_x_gradient",
           "integrated_gradients", "pair_gradcam", "upsample", "weighted_map"]
