"""The explainer registry: every explainer by name, with its metadata (a new explainer is one
function with the common signature plus one ``EXPLAINERS.register`` line here)."""

from __future__ import annotations

from ..models.family import family_of, has_attention, label
from ..registry import Registry
from .gradcam import gradcam
from .gradients import gradient, input_x_gradient, integrated_gradients
from .lrp import ebp, lrp, lrp_a1b0
from .perturbation import occlusion, rise
from .rap import rap
from .rollout import grad_rollout, rollout

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
# Black-box: forward passes only, no gradient by construction (``black_box``: they explain
# models without autograd or layers to hook, e.g. an ONNX file run by onnxruntime).
EXPLAINERS.register("occlusion", occlusion, resolution="input", differentiable=False,
                    black_box=True)
EXPLAINERS.register("rise", rise, resolution="input", differentiable=False, black_box=True)
# Vision Transformers only (``attention``: the model's family card names its attention maps):
# maps on the patch grid, upsampled like Grad-CAM's; evaluation only.
EXPLAINERS.register("rollout", rollout, resolution="input", differentiable=False,
                    attention=True)
EXPLAINERS.register("grad_rollout", grad_rollout, resolution="input", differentiable=False,
                    attention=True)


def check_applicable(model, names) -> None:
    """``ValueError`` (one line) for an explainer that does not apply to ``model``: one its
    family card refuses (a ViT's LRP), or rollout without attention maps to read."""
    family = family_of(model)
    refused = family.refused_explainers(model) if family and family.refused_explainers else {}
    attention = has_attention(model)
    for name in names:
        if name in refused:
            raise ValueError(f"explainer {name!r} does not apply to {type(model).__name__} "
                             f"({label(family)}): {refused[name]}")
        if name in EXPLAINERS and EXPLAINERS.meta(name).get("attention") and not attention:
            raise ValueError(f"explainer {name!r} explains Vision Transformers (attention maps); "
                             f"{type(model).__name__} has none")
