"""Explainers: batched, multi-target attribution maps, registered by name."""

from .gradcam import frozen, gradcam, pair_gradcam, upsample, weighted_map
from .gradients import gradient, input_x_gradient, integrated_gradients
from .lrp import ebp, lrp, lrp_a1b0
from .perturbation import occlusion, rise
from .rap import rap

EXPLAINERS = {
    "gradcam": gradcam,
    "gradient": gradient,
    "input_x_gradient": input_x_gradient,
    "ig": integrated_gradients,
    "lrp": lrp,
    "lrp_a1b0": lrp_a1b0,
    "ebp": ebp,
    "rap": rap,
    "occlusion": occlusion,
    "rise": rise,
}

# Explainers that take ``layer`` and return maps at that layer's resolution (CAM-type); the
# others attribute to the input pixels and ignore ``layer``.
LAYER_RESOLUTION = frozenset({"gradcam"})

# Whether an explainer's maps can be differentiated w.r.t. the model's parameters (usable as a
# matching loss). The input-level methods are evaluation-only.
DIFFERENTIABLE = {
    "gradcam": True,
    "gradient": False,
    "input_x_gradient": False,
    "ig": False,
    # LRP / EBP go through zennit's rule hooks: evaluation only. zennit 0.5.1's hooks do pass
    # create_graph on, but its ParamMod rebuilds each rule's weights as fresh leaves from
    # ``param.data`` (and the BatchNorm-merging canonizer writes ``.data``), so a second-order
    # gradient misses how the rules depend on the weights: on a 4-5-3 ReLU MLP with
    # AlphaBeta(1, 0) the first layer's gradient was 15% off a finite-difference check.
    # A parameter-differentiable LRP needs the rules written by hand (future work).
    "lrp": False,
    "lrp_a1b0": False,
    "ebp": False,
    # RAP: hand-written propagation run under no_grad; evaluation only.
    "rap": False,
    # Black-box: forward passes only, no gradient by construction.
    "occlusion": False,
    "rise": False,
}

__all__ = ["DIFFERENTIABLE", "EXPLAINERS", "LAYER_RESOLUTION", "ebp", "explain", "frozen",
           "gradcam", "gradient", "input_x_gradient", "integrated_gradients", "lrp", "lrp_a1b0",
           "occlusion", "pair_gradcam", "rap", "rise", "upsample", "weighted_map"]


def __getattr__(name):
    """``explain`` is imported lazily (api.py imports this module)."""
    if name == "explain":
        from .api import explain
        return explain
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
