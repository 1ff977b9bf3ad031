"""Attention rollout (Abnar & Zuidema 2020) and gradient-weighted rollout (Chefer et al. 2021)
for Vision Transformers, batched over (image, class) pairs.

Written here because no maintained package computes them on timm models with the call shape
of the other explainers: the attention probabilities come from the modules the family card
names (``models.family.Family.attention``: timm's ``attn_drop``, which the softmax output
passes through with the fused kernel off: ``models.family.exact_attention``), one forward pass
over ``cat([images, pairs])`` (``gradcam.pair_batch``) records them, and one backward gives
every pair's gradient (rows do not interact in eval mode).

- ``rollout``: per block the head-averaged attention plus the identity (the residual), rows
  renormalised, multiplied from the first block to the last; the class token's row over the
  patch tokens is the map. Class-agnostic: every pair of an image gets the same map.
- ``grad_rollout``: per block ``mean_h (dz_c/dA * A)^+`` (Chefer's relevance update
  ``R <- R + A_bar R`` from ``R = I``), so the map depends on the explained class.

Maps are on the patch grid (P x side x side), like Grad-CAM at a token layer.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn

from ..models.family import exact_attention, family_of
from .gradcam import frozen, pair_batch

__all__ = ["attention_modules", "recorded_attention", "grad_rollout", "grad_rollout_maps",
           "rollout", "rollout_maps"]


def attention_modules(model: nn.Module) -> tuple[list[nn.Module], int]:
    """The modules whose outputs are the attention probabilities, and the prefix tokens."""
    family = family_of(model)
    modules = family.attention(model) if family and family.attention else None
    if not modules:
        raise ValueError(f"attention rollout explains Vision Transformers (a model whose family "
                         f"card names its attention maps); {type(model).__name__} has none")
    return modules, family.tokens(model) or 0


@contextmanager
def recorded_attention(model: nn.Module):
    """Yields ``(maps, prefix)``: the list each block's attention probabilities are appended to
    by a forward pass inside (still in its graph), and the model's prefix-token count."""
    modules, prefix = attention_modules(model)
    seen: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _i, out: seen.append(out)) for m in modules]
    try:
        yield seen, prefix
    finally:
        for h in handles:
            h.remove()


def _record(model, images, image_index, classes, with_grads: bool):
    """``(attention maps per block P x H x T x T, their gradients or None, logits B x K)``.
    One pass over ``cat([images, pairs])``, or over ``images`` alone when the pairs are the
    images in order (one class each: matching's case)."""
    x, start = pair_batch(images, image_index)
    x = x.detach().requires_grad_(with_grads)
    with recorded_attention(model) as (seen, prefix), torch.set_grad_enabled(with_grads), \
            frozen(model), exact_attention(model):
        out = model(x)
        grads = None
        if with_grads:
            rows = torch.arange(start, len(x), device=out.device)
            grads = [g[start:] for g in torch.autograd.grad(out[rows, classes].sum(), seen)]
    return [a[start:].detach() for a in seen], grads, out[:len(images)].detach(), prefix


def _as_map(relevance: torch.Tensor, prefix: int) -> torch.Tensor:
    """The class token's row over the patch tokens, as P x side x side."""
    row = relevance[:, 0, prefix:]
    side = math.isqrt(row.shape[1])
    return row.reshape(len(row), side, side)


def rollout_maps(attn: list[torch.Tensor], prefix: int) -> torch.Tensor:
    """Attention rollout of per-block attention probabilities (each N x H x T x T) as N x side
    x side; differentiable, so matching can pull a student's rollout toward a teacher's."""
    eye = torch.eye(attn[0].shape[-1], device=attn[0].device, dtype=attn[0].dtype)
    joint = eye.expand(len(attn[0]), *eye.shape)
    for a in attn:
        a = a.mean(1) + eye
        joint = (a / a.sum(-1, keepdim=True)) @ joint
    return _as_map(joint, prefix)


def grad_rollout_maps(attn: list[torch.Tensor], grads: list[torch.Tensor],
                      prefix: int) -> torch.Tensor:
    """Chefer's gradient-weighted rollout from the attention probabilities and the explained
    score's gradients w.r.t. them, as N x side x side; differentiable through both."""
    relevance = torch.eye(attn[0].shape[-1], device=attn[0].device,
                          dtype=attn[0].dtype).repeat(len(attn[0]), 1, 1)
    for a, g in zip(attn, grads):
        relevance = relevance + (g * a).clamp(min=0).mean(1) @ relevance
    return _as_map(relevance, prefix)


def rollout(model: nn.Module, images: torch.Tensor, image_index: torch.Tensor,
            classes: torch.Tensor, layer: str | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention rollout for pairs ``(images[i_j], c_j)``; ``layer`` is ignored (every block's
    attention is rolled out)."""
    attn, _, logits, prefix = _record(model, images, image_index, classes, with_grads=False)
    return rollout_maps(attn, prefix), logits


def grad_rollout(model: nn.Module, images: torch.Tensor, image_index: torch.Tensor,
                 classes: torch.Tensor, layer: str | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient-weighted attention rollout (Chefer et al. 2021) for pairs ``(images[i_j],
    c_j)``; ``layer`` is ignored."""
    attn, grads, logits, prefix = _record(model, images, image_index, classes, with_grads=True)
    return grad_rollout_maps(attn, grads, prefix), logits
