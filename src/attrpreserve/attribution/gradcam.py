"""Differentiable, batched Grad-CAM over (image, class) pairs.

Written by hand because WCAM needs it differentiable in the model's parameters through the
channel weights (a double backward), and because one forward pass must serve every pair; captum's
LayerGradCam (the test oracle) does one target per input row and no create_graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.layers import LayerTap


def weighted_map(activation: torch.Tensor, grads: torch.Tensor, relu: bool = True) -> torch.Tensor:
    """``ReLU(sum_k alpha_k A_k)`` with ``alpha_k = sum_hw dz/dA_k`` (the WCAM/Grad-CAM map).

    ``activation`` and ``grads`` are P x C x H x W; returns P x H x W. Summing over space (not
    averaging) follows the paper's code; the scale cancels in every normalised use.
    """
    alpha = grads.sum(dim=(2, 3), keepdim=True)
    cam = (alpha * activation).sum(dim=1)
    return F.relu(cam) if relu else cam


def pair_gradcam(tap: LayerTap, output: torch.Tensor, classes: torch.Tensor,
                 create_graph: bool = False, relu: bool = True) -> torch.Tensor:
    """Grad-CAM maps of the pairs recorded by ``tap`` (see LayerTap) for logits ``classes``."""
    rows = tap.pair_rows(output.device)
    z = output[rows, classes].sum()
    (grads,) = torch.autograd.grad(z, tap.pair_activation, create_graph=create_graph)
    return weighted_map(tap.pair_activation, grads, relu)


def gradcam(model: nn.Module, images: torch.Tensor, image_index: torch.Tensor,
            classes: torch.Tensor, layer: str | None = None, relu: bool = True
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM for pairs ``(images[image_index[j]], classes[j])`` in one forward pass.

    Returns ``(maps P x h x w at layer resolution, logits B x K)``. The model's parameters get no
    gradient and the layers before ``layer`` are not differentiated.
    """
    with torch.enable_grad(), frozen(model), \
            LayerTap(model, layer, detach=True, index=image_index) as tap:
        out = model(images)
        maps = pair_gradcam(tap, out, classes, relu=relu)
    return maps.detach(), out[: len(images)].detach()


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of P x h x w maps to the input size (as Grad-CAM is usually shown)."""
    if maps.shape[-2:] == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def pair_batch(images: torch.Tensor, image_index: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(x, start)``: the one batch a pair explainer runs, ``cat([images, images[image_index]])``
    with pair j at row ``start + j`` (the first B rows are the plain outputs), or ``images``
    alone with ``start`` 0 when the pairs are the images in order (one class each: matching's
    case), so no image runs twice."""
    b = len(images)
    own = len(image_index) == b and torch.equal(
        image_index, torch.arange(b, device=image_index.device))
    return (images, 0) if own else (torch.cat([images, images[image_index]]), b)


class frozen:
    """Context manager: parameters of ``model`` do not require grad inside; restored after."""

    def __init__(self, model: nn.Module):
        self.params = [p for p in model.parameters() if p.requires_grad]

    def __enter__(self):
        for p in self.params:
            p.requires_grad_(False)
        return self

    def __exit__(self, *exc):
        for p in self.params:
            p.requires_grad_(True)
