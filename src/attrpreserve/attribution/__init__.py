"""Explainers: batched, multi-target attribution maps, registered by name."""

from .gradcam import frozen, gradcam, pair_gradcam, upsample, weighted_map
from .gradients import gradient, input_x_gradient, integrated_gradients
from .lrp import ebp, lrp, lrp_a1b0
from .perturbation import occlusion, rise
from .rap import rap
from .explainers import EXPLAINERS
from .api import explain

__all__ = ["EXPLAINERS", "ebp", "explain", "frozen", "gradcam", "gradient", "input_x_gradient",
           "integrated_gradients", "lrp", "lrp_a1b0", "occlusion", "pair_gradcam", "rap", "rise",
           "upsample", "weighted_map"]

