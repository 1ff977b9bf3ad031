"""Explainers: batched, multi-target attribution maps, registered by name."""

from .gradcam import frozen, gradcam, pair_gradcam, upsample, weighted_map
from .gradients import gradient, input_x_gradient, integrated_gradients
from .lrp import ebp, lrp, lrp_a1b0

EXPLAINERS = {
    "gradcam": gradcam,
    "gradient": gradient,
    "input_x_gradient": input_x_gradient,
    "ig": integrated_gradients,
    "lrp": lrp,
    "lrp_a1b0": lrp_a1b0,
    "ebp": ebp,
}

# Whether an explainer's maps can be differentiated w.r.t. the model's parameters (usable as a
# matching loss). The input-level methods are evaluation-only.
DIFFERENTIABLE = {
    "gradcam": True,
    "gradient": False,
    "input_x_gradient": False,
    "ig": False,
    # LRP / EBP go through zennit's backward hooks without create_graph: evaluation only.
    # Second-order LRP (LRP maps as a matching loss) is future work.
    "lrp": False,
    "lrp_a1b0": False,
    "ebp": False,
}

__all__ = ["DIFFERENTIABLE", "EXPLAINERS", "ebp", "frozen", "gradcam", "gradient",
           "input_x_gradient", "integrated_gradients", "lrp", "lrp_a1b0", "pair_gradcam",
           "upsample", "weighted_map"]
