"""Input-level gradient explainers, batched over (image, class) pairs.

All share the explainer call shape ``f(model, images, image_index, classes, layer=None)`` and
return ``(maps P x H x W, logits B x K)``, both detached. ``layer`` is ignored (these methods
attribute to the input pixels). The model's parameters receive no gradient (``frozen``).

They are not differentiable w.r.t. the model's parameters (no ``create_graph``); WCAM's input-map
term (``matching.losses``) differentiates the same formulas (``INPUT_MAP_FORMULAS``) itself.
"""

from __future__ import annotations

import torch
from torch import nn

from .gradcam import frozen, pair_batch


def pair_input_grads(model: nn.Module, images: torch.Tensor, image_index: torch.Tensor,
                     classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, d z_c / d x, logits)`` for every pair in one forward and one backward.

    ``x = images[image_index]`` (P x 3 x H x W). The forward runs on ``gradcam.pair_batch``'s
    batch: ``cat([images, x])``, whose first B rows are the model's normal outputs (reused as
    logits, no extra forward), or ``images`` alone when the pairs are the images in order. The
    model is in eval mode, so rows do not interact and the gradient of ``sum_j z_{c_j}(x_j)``
    w.r.t. ``x_j`` is exactly ``d z_{c_j} / d x_j``.
    """
    batch, start = pair_batch(images, image_index)
    batch = batch.detach().requires_grad_(True)
    with torch.enable_grad(), frozen(model):
        out = model(batch)
        rows = torch.arange(start, len(batch), device=out.device)
        (grads,) = torch.autograd.grad(out[rows, classes].sum(), batch)
    return batch[start:].detach(), grads[start:].detach(), out[:len(images)].detach()


def gradient_map(x: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """``max_channel |grads|``: vanilla gradient saliency from the input gradient."""
    return grads.abs().amax(dim=1)


def input_x_gradient_map(x: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """``sum_channel x * grads`` (signed)."""
    return (x * grads).sum(dim=1)


# The input-level maps by explainer name, from ``(x, d z / d x)``: one formula for the
# explainers here and for WCAM's differentiable input-map term (``matching.losses``).
INPUT_MAP_FORMULAS = {"gradient": gradient_map, "input_x_gradient": input_x_gradient_map}


def gradient(model: nn.Module, images: torch.Tensor, image_index: torch.Tensor,
             classes: torch.Tensor, layer: str | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Vanilla gradient saliency (Simonyan et al. 2014) for pairs ``(images[i_j], c_j)``.

    The map of pair j is ``max_channel |d z_{c_j} / d x_j|``: the gradient w.r.t. the input
    pixels, reduced over colour channels by the maximum of absolute values (the paper's
    reduction; equals captum ``Saliency(abs=True)`` followed by a max over channels).
    Returns ``(maps P x H x W, logits B x K)``; ``layer`` is ignored.
    """
    x, grads, logits = pair_input_grads(model, images, image_index, classes)
    return gradient_map(x, grads), logits


def input_x_gradient(model: nn.Module, images: torch.Tensor, image_index: torch.Tensor,
                     classes: torch.Tensor, layer: str | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Input x gradient: ``sum_channel x_j * d z_{c_j} / d x_j`` (signed) for each pair.

    Returns ``(maps P x H x W, logits B x K)``; ``layer`` is ignored.
    """
    x, grads, logits = pair_input_grads(model, images, image_index, classes)
    return input_x_gradient_map(x, grads), logits


def integrated_gradients(model: nn.Module, images: torch.Tensor, image_index: torch.Tensor,
                         classes: torch.Tensor, layer: str | None = None, steps: int = 32,
                         baseline: float = 0.0, method: str = "gausslegendre",
                         internal_batch_size: int | None = 256
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrated gradients (Sundararajan et al. 2017), summed over colour channels (signed).

    Computed by captum's ``IntegratedGradients`` (no hand-written copy): all P pairs go in as one
    input batch ``images[image_index]`` with ``target=classes``, ``n_steps=steps``, a constant
    ``baseline`` image and ``method`` ("gausslegendre" or "riemann_trapezoid").
    ``internal_batch_size`` bounds how many (pair, step) rows one forward holds (raised to at
    least P; None means all P x steps rows at once). The logits come from one extra plain
    forward under ``no_grad``. Returns ``(maps P x H x W, logits B x K)``; ``layer`` is ignored.
    """
    from captum.attr import IntegratedGradients

    with torch.no_grad():
        logits = model(images).detach()
    x = images[image_index].detach()
    if len(x) == 0:
        return x.new_zeros((0, *x.shape[2:])), logits
    ibs = None if internal_batch_size is None else max(int(internal_batch_size), len(x))
    with torch.enable_grad(), frozen(model):
        attr = IntegratedGradients(model).attribute(
            x, baselines=float(baseline), target=classes, n_steps=steps, method=method,
            internal_batch_size=ibs)
    return attr.detach().sum(dim=1), logits
