"""Explainers: batched, multi-target attribution maps, registered by name."""

from .gradcam import frozen, gradcam, pair_gradcam, upsample, weighted_map
from .gradients import gradient, input_x_gradient, integrated_gradients
from .lrp import ebp, lrp, lrp_a1b0
from .perturbation import occlusion, rise
from .rap import rap

from ..registry import Registry

# Each explainer with its metadata: ``resolution`` "layer" (CAM-type: takes ``layer`` and returns
# maps at that layer's resolution) or "input" (attributes to the pixels, ignores ``layer``), and
# ``differentiable``: whether its maps can be differentiated w.r.t. the model's parameters
# (usable as a matching loss); the input-level methods are evaluation-only.
EXPLAINERS: Registry = Registry("explainer")
EXPLAINERS.register("gradcam", gradcam, resolution="layer", differentiable=True)
EXPLAINERS.register("gradient", gradient, resolution="input", differentiable=False)
EXPLAINERS.register("input_x_gradient", input_x_gradient, resolution="input",
                    differentiable=False)
EXPLAINERS.register("ig", integrated_gradients, resolution="input", differentiable=False)
# LRP / EBP go through zennit's rule hooks: evaluation only. zennit 0.5.1's hooks do pass
# create_graph on, but its ParamMod rebuilds each rule's weights as fresh leaves from
# ``param.data`` (and the BatchNorm-merging canonizer writes ``.data``), so a second-order
# gradient misses how the rules depend on the weights: on a 4-5-3 ReLU MLP with AlphaBeta(1, 0)
# the first layer's gradient was 15% off a finite-difference check. A parameter-differentiable
# LRP needs the rules written by hand (matching.LRPMatching does, at the matched layer).
EXPLAINERS.register("lrp", lrp, resolution="input", differentiable=False)
EXPLAINERS.register("lrp_a1b0", lrp_a1b0, resolution="input", differentiable=False)
EXPLAINERS.register("ebp", ebp, resolution="input", differentiable=False)
# RAP: hand-written propagation run under no_grad; evaluation only.
EXPLAINERS.register("rap", rap, resolution="input", differentiable=False)
# Black-box: forward passes only, no gradient by construction.
EXPLAINERS.register("occlusion", occlusion, resolution="input", differentiable=False)
EXPLAINERS.register("rise", rise, resolution="input", differentiable=False)

__all__ = ["EXPLAINERS", "ebp", "explain", "frozen",
           "gradcam", "gradient", "input_x_gradient", "integrated_gradients", "lrp", "lrp_a1b0",
           "occlusion", "pair_gradcam", "rap", "rise", "upsample", "weighted_map"]


def __getattr__(name):
    """``explain`` is imported lazily (api.py imports this module)."""
    if name == "explain":
        from .api import explain
        return explain
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
