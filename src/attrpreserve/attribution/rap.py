"""Relative Attributing Propagation (RAP; Nam, Gur, Choi, Wolf & Lee, AAAI 2020), batched.

Written by hand: neither captum nor zennit (this project's attribution libraries) has RAP, and
the authors' code is a standalone re-implementation of VGG/ResNet with its own layer classes,
not a library to call (pnpxai carries a port of it, not a dependency here). This module
propagates relevance layer by layer through any Sequential-style chain of supported layers.

Rules (relevance flows from the output back to the input; ``a_j`` are a layer's inputs,
``z_jk = a_j w_jk`` their contributions to output unit ``k``):

1. Output layer (the last Linear), *absolute influence normalisation*. The contributions
   ``z_j = a_j w_cj`` to the logit ``z_c`` are LRP-0 relevance; RAP keeps their magnitude only,
   rescaled so that the layer's total is the logit (bias included)::

       R_j = |z_j| / sum_i |z_i| * z_c

   Units that push the logit down influence it as much as those that push it up; which of them
   are relevant is decided by the relative propagation below.
2. Hidden Conv2d / Linear layers, *relative influence* and *uniform shifting*. With
   ``P_k = sum_j z_jk^+`` and ``N_k = sum_j |z_jk^-|``::

       R'_j = sum_k R_k * (z_jk^+ / P_k + |z_jk^-| / (P_k + N_k))
       R_j  = R'_j - (sum_i R'_i - sum_k R_k) / #{i : R'_i != 0}     (only where R'_j != 0)

   Unit k's relevance goes in full to its positive contributions; its negative contributions
   get an extra share by their relative (absolute) influence. That hands out
   ``R_k (1 + N_k / (P_k + N_k))``, more than ``R_k``; the shift takes the excess back equally
   from every unit with non-zero relevance, which restores the layer total and makes the least
   influential units negative (irrelevant): the bi-polar map.
3. Input layer (the first Conv2d / Linear), the z^B rule with bounds ``l, h`` = the minimum and
   maximum of the sample's input (as the authors' code does; ``bounds=(l, h)`` overrides)::

       R_j = sum_k (a_j w_jk - l w_jk^+ - h w_jk^-) / sum_i (a_i w_ik - l w_ik^+ - h w_ik^-) * R_k

4. ReLU, Dropout, Identity: relevance unchanged. MaxPool2d / AdaptiveMaxPool2d: to the
   position of the maximum (winner takes all). AvgPool2d / AdaptiveAvgPool2d: in proportion to
   the inputs (z-rule). Flatten / Unflatten and reshapes between layers: reshaped back.

What is conserved: for every pair, the signed sum (positive plus negative relevance) of every
layer's relevance equals the pair's logit ``z_c`` -- the first step normalises to it, the shift
restores it exactly at every hidden layer, and the z^B rule conserves it -- so the input map
sums to ``z_c``. Exceptions: a unit whose z^B denominator is 0 drops its relevance (the authors'
code does too), and a hidden layer with no non-zero unit cannot be shifted.

Simplified with respect to the authors' code, and why:

* BatchNorm is folded into the Conv2d / Linear it follows (running statistics, eval mode), not
  given a rule of its own: the authors' BatchNorm rule passes relevance through nearly unchanged,
  and folding makes the contribution signs those of the function actually computed.
* Hidden layers split contributions by the sign of ``a_j w_jk`` in one pass. The authors' code
  runs separate passes for positive and negative inputs, each conserving ``R`` (so the total
  doubles where both occur). The two agree whenever a layer's inputs are non-negative (every
  layer after a ReLU); the pixels go through the z^B rule instead.
* Negative relevance ``R_k < 0`` is handed out with the same shares as positive relevance, as
  the authors' Linear layer does (their Conv2d layer routes the full share of negative relevance
  through the negative contributions instead); one rule serves both layer types here.
* Biases of hidden layers get no relevance (the authors' bias handling is commented out too);
  the uniform shift keeps the total. The output layer's bias only scales the first step.

Batching: one forward of the B images (activations recorded by hooks), then one propagation
for all P pairs, each pair's rows gathered from its image's activations; rows never mix, so a
pair's map does not depend on the others. A single image is forwarded as two identical rows:
on CPU a one-row convolution takes another kernel and rounds differently (~1e-7) from a
many-row one, and such a difference can flip a max-pool's winner at a near tie (seen on 2 of
1093 scenes pairs, a 2e-5 change in the map); from two rows on, a row's activations are
bitwise independent of the batch.

Supported layers: Conv2d (zero padding), Linear, BatchNorm1d/2d directly after one of them,
ReLU, Dropout, Identity, Flatten, Unflatten, MaxPool2d, AdaptiveMaxPool2d, AvgPool2d,
AdaptiveAvgPool2d. The layers must form a chain (each layer's input is the previous layer's
output, up to a reshape) ending in a Linear layer (then only Dropout / Identity / Flatten).
Residual additions (ResNet), concatenations, squeeze-excitation products (MobileNetV3) and other
activations raise a ValueError that names the offending layer. The chain itself (recording,
BatchNorm folding, the walk back) is ``attribution.chain``, shared with the differentiable LRP;
this module holds RAP's rule objects. Other layer types join through
``chain.register_layer_kind``: compress.quantize registers its quant stubs and global max-pool, so the
fake-quant (QAT) model is explained as the chain it computes -- each fused Conv-BN-ReLU block is
one affine unit with the fake-quantized, BatchNorm-folded weight it actually used, and the
activation fake-quants pass relevance on unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from .chain import (Reshape, Rule, Step, build_chain, linear_op, output_layer, per_row, row_sums,
                    safe_divide, transpose_op, walk)


def first_rule(x: torch.Tensor, w_c: torch.Tensor, logit: torch.Tensor) -> torch.Tensor:
    """Absolute influence normalisation: ``|x w_c| / sum |x w_c| * logit`` per row."""
    z = (x * w_c).abs()
    return safe_divide(z, per_row(row_sums(z), z)) * per_row(logit, z)


def _forward_stacked(step: Step, x: torch.Tensor, weights: list) -> torch.Tensor:
    """``cat([op(x, w) for w in weights], dim=1)``, one call with the weights stacked when the
    layer has no groups."""
    if getattr(step.module, "groups", 1) != 1:
        return torch.cat([linear_op(step, x, w) for w in weights], dim=1)
    return linear_op(step, x, torch.cat(weights))


def _transpose_stacked(step: Step, s: torch.Tensor, weights: list, shape) -> torch.Tensor:
    """``sum_i op^T(s_i, weights[i])`` for ``s`` = the ``s_i`` stacked along dim 1 (the transpose
    of ``_forward_stacked``)."""
    if getattr(step.module, "groups", 1) != 1:
        parts = s.chunk(len(weights), dim=1)
        return sum(transpose_op(step, p, w, shape) for p, w in zip(parts, weights))
    return transpose_op(step, s, torch.cat(weights), shape)


class Relative(Rule):
    """Hidden-layer rule: positive contributions take ``R`` in full, negative ones a share by
    relative influence; then the uniform shift restores ``sum R`` (see the module docstring)."""

    def __call__(self, step: Step, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return _relative(step, x, r)


def _relative(step: Step, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    w = step.weight
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    has_neg = bool((x < 0).any())
    xp = x.clamp(min=0) if has_neg else x
    # (sum_j z_jk^+, -sum_j |z_jk^-|) for every output unit, stacked along dim 1
    sums = _forward_stacked(step, xp, [wp, wn])
    if has_neg:
        xn = x.clamp(max=0)
        sums += _forward_stacked(step, xn, [wn, wp])
    sums = sums.unflatten(1, (2, -1))
    sums[:, 1] -= sums[:, 0]                                 # -(P_k + N_k)
    s = safe_divide(r.unsqueeze(1), sums).flatten(1, 2)      # (R / P, -R / (P + N))
    c = xp * _transpose_stacked(step, s, [wp, wn], x.shape)
    if has_neg:
        c += xn * _transpose_stacked(step, s, [wn, wp], x.shape)
    return uniform_shift(c, row_sums(r))


def uniform_shift(c: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """Subtract ``(sum c - total) / #nonzero`` from every non-zero entry of each row of ``c``."""
    nonzero = c != 0
    count = row_sums(nonzero.to(c.dtype))
    excess = safe_divide(row_sums(c) - total, count)
    return c - per_row(excess, c) * nonzero


class ZBox(Rule):
    """z^B rule for the input layer; bounds are each row's min / max unless ``bounds`` is given."""

    def __init__(self, bounds: tuple[float, float] | None = None):
        self.bounds = bounds

    def __call__(self, step: Step, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return _zb(step, x, r, self.bounds)


def _zb(step: Step, x: torch.Tensor, r: torch.Tensor,
        bounds: tuple[float, float] | None) -> torch.Tensor:
    w = step.weight
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    if bounds is None:
        low = torch.ones_like(x) * per_row(x.flatten(1).amin(1), x)
        high = torch.ones_like(x) * per_row(x.flatten(1).amax(1), x)
    else:
        low, high = torch.full_like(x, bounds[0]), torch.full_like(x, bounds[1])
    if getattr(step.module, "groups", 1) != 1:
        z = linear_op(step, x, w) - linear_op(step, low, wp) - linear_op(step, high, wn)
        s = safe_divide(r, z)
        return (x * transpose_op(step, s, w, x.shape) - low * transpose_op(step, s, wp, x.shape)
                - high * transpose_op(step, s, wn, x.shape))
    stacked = torch.cat([w, -wp, -wn], dim=1)  # inputs stacked along channels: x, low, high
    xs = torch.cat([x, low, high], dim=1)
    s = safe_divide(r, linear_op(step, xs, stacked))
    return (xs * transpose_op(step, s, stacked, xs.shape)).unflatten(1, (3, -1)).sum(1)


class Pool(Rule):
    """Max pools: relevance to the maximum; average pools: in proportion to the inputs."""

    def __call__(self, step: Step, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            y = step.module(xg)
            if step.kind == "max":
                (g,) = torch.autograd.grad(y, xg, r)
                return g
            (g,) = torch.autograd.grad(y, xg, safe_divide(r, y.detach()))
        return x * g


def propagate(steps: list[Step], image_index: torch.Tensor, classes: torch.Tensor,
              bounds: tuple[float, float] | None = None, keep: bool = False
              ) -> tuple[torch.Tensor, list[tuple[str, torch.Tensor]]]:
    """RAP relevance at the model input for each pair (P x input shape).

    With ``keep`` also returns ``[(layer name, relevance at that layer's input)]`` from the
    output layer down to the first layer (for tests and inspection).
    """
    last = output_layer(steps)
    first = min(i for i, s in enumerate(steps) if s.kind == "affine")
    out = steps[last]
    logit = out.output[image_index, classes]
    top = first_rule(out.input[image_index], out.weight[classes], logit)
    rules = {"affine": Relative(), "max": Pool(), "avg": Pool()}
    input_rule, other = ZBox(bounds), Reshape()

    def rule_for(i: int, step: Step) -> Rule:
        return input_rule if i == first else rules.get(step.kind, other)

    r, layers = walk(steps[:last], image_index, top, rule_for, keep)
    return r, ([(out.name, top)] + layers if keep else [])


def rap(model: nn.Module, images: torch.Tensor, image_index: torch.Tensor,
        classes: torch.Tensor, layer: str | None = None,
        bounds: tuple[float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """RAP maps for pairs ``(images[image_index[j]], classes[j])``: one forward, one pass back.

    The map of pair j is the input relevance summed over colour channels (signed; it sums to the
    pair's logit). ``bounds``: the z^B box of the input layer (default: each image's min / max).
    ``layer`` is ignored. The model must be in eval mode; it is not modified and its parameters
    get no gradient. Returns ``(maps P x H x W, logits B x K)``, both detached.
    ValueError (naming the layer) for models that are not a chain of supported layers, e.g.
    ResNets (residual additions) and MobileNetV3 (Hardswish, squeeze-excitation).
    """
    x = images.detach()
    if len(x) == 1:  # see the module docstring: one-row forwards round differently
        x = torch.cat([x, x])
    with torch.no_grad():
        steps, out = build_chain(model, x)
        rel, _ = propagate(steps, image_index, classes, bounds)
    return rel.sum(dim=1), out[:len(images)].detach()
