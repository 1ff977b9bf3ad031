"""Layer-wise Relevance Propagation and Excitation Backprop via zennit, batched over pairs.

Both share the explainer call shape ``f(model, images, image_index, classes, layer=None)`` and
return ``(maps P x H x W, logits B x K)``, both detached; ``layer`` is ignored (relevance is taken
at the input pixels). The map of pair j is the input relevance summed over colour channels.

The rules are zennit's (no hand-written copy): a zennit composite registers backward hooks on the
model's layers and applies canonizers (BatchNorm merged into the preceding conv/linear) inside a
context (``Composite.context``); leaving the context removes every hook and reverts the
canonizers (the original weights, biases and BatchNorm statistics are put back, a bias created for
a bias-free conv is removed again), so the model computes exactly what it computed before.

Canonizers: for torchvision ResNets, zennit's ``ResNetCanonizer`` (SequentialMergeBatchNorm plus
an explicit ``Sum`` module for the residual additions so that the Norm rule applies to them);
for every other model, ``SequentialMergeBatchNorm``, which merges each BatchNorm that directly
follows a conv/linear leaf in module-registration order (right for the VGG nets here; a BatchNorm
that does not directly follow a linear leaf stays unmerged and gets the ``Pass`` rule in the LRP
composites).

Batching: one forward of the P pair rows ``images[idx]`` inside the composite (the model must be
in eval mode so rows do not interact) and one backward whose output relevance is non-zero only
on row j at class ``c_j``; the logits B x K come from a plain ``no_grad`` forward of the images.
A single pair is forwarded as two identical rows: on CPU a one-row convolution takes another
kernel and rounds differently (~1e-7) from a many-row one, and the rules' stabilised divisions
and max-pool routing amplified that to 1e-5 between a pair's batched and single maps; from two
rows on, a row's results are bitwise independent of the batch.

Pruning masks (``torch.nn.utils.prune``): zennit modifies a module's *registered parameters*
(``weight_orig`` of a pruned module, i.e. the unmasked weights) while the module computes with the
``weight`` attribute that the pruning pre-hook recomputes, and its BatchNorm merge writes to that
attribute, which the pre-hook then overwrites: the maps come out wrong. Inside ``baked_pruning``
every pruned weight is temporarily a plain parameter equal to ``orig * mask``; the
reparametrisation (the same ``_orig`` parameter object, mask buffer and hook) is put back after.

Not differentiable w.r.t. the model's parameters (no ``create_graph``): evaluation only.
Second-order LRP (LRP maps as a matching loss) is future work.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.family import family_of
from .chain import (Reshape, Rule, Step, chain_steps, check_chain, linear_op, output_layer,
                    transpose_op, walk)
from .gradcam import frozen

COMPOSITES = ("epsilon_plus_flat", "alpha1_beta0")


class baked_pruning:
    """Context manager: each ``torch.nn.utils.prune`` reparametrisation of ``model`` replaced by a
    plain parameter ``orig * mask``; on exit the module's parameters, buffers and forward
    pre-hooks are restored exactly (same objects, same order)."""

    def __init__(self, model: nn.Module):
        self.model, self.saved = model, []

    def __enter__(self):
        from torch.nn.utils.prune import BasePruningMethod

        for module in self.model.modules():
            hooks = {k: h for k, h in module._forward_pre_hooks.items()
                     if isinstance(h, BasePruningMethod)}
            if not hooks:
                continue
            self.saved.append((module, dict(module._parameters), dict(module._buffers),
                               dict(module._forward_pre_hooks),
                               {h._tensor_name: module.__dict__.get(h._tensor_name)
                                for h in hooks.values()}))
            for key, hook in hooks.items():
                name = hook._tensor_name
                orig = module._parameters.pop(name + "_orig")
                mask = module._buffers.pop(name + "_mask")
                del module._forward_pre_hooks[key]
                module.__dict__.pop(name, None)
                module._parameters[name] = nn.Parameter((orig * mask).detach(),
                                                        requires_grad=orig.requires_grad)
        return self

    def __exit__(self, *exc):
        for module, params, buffers, pre_hooks, attrs in reversed(self.saved):
            for name in attrs:
                module._parameters.pop(name, None)
            for store, saved in ((module._parameters, params), (module._buffers, buffers),
                                 (module._forward_pre_hooks, pre_hooks)):
                store.clear()
                store.update(saved)
            for name, value in attrs.items():
                if value is not None:
                    module.__dict__[name] = value
        self.saved = []


def default_canonizers(model: nn.Module) -> list:
    """zennit canonizers for ``model``: its family card's (``models.family``; ResNets get
    zennit's ResNetCanonizer), else SequentialMergeBatchNorm (see the module docstring)."""
    from zennit.canonizers import SequentialMergeBatchNorm

    family = family_of(model)
    if family is not None and family.canonizers is not None:
        return family.canonizers(model)
    return [SequentialMergeBatchNorm()]


def make_composite(name: str, model: nn.Module, epsilon: float = 1e-6, stabilizer: float = 1e-6):
    """A fresh zennit composite (with canonizers for ``model``) by name.

    * ``"epsilon_plus_flat"``: zennit's EpsilonPlusFlat (Flat rule on the first conv/linear layer,
      ZPlus on the other convolutions, Epsilon on fully connected layers, Pass on activations and
      BatchNorm, Norm on sums and average pools).
    * ``"alpha1_beta0"``: the paper's LRP, AlphaBeta(alpha=1, beta=0) on every conv and linear layer
      (zennit has no registered composite of that name, so it is a ``LayerMapComposite`` on
      zennit's ``layer_map_base`` -- Pass on activations and BatchNorm, Norm on sums/avg-pools --
      plus ``AlphaBeta(1, 0)`` for ``zennit.types.Linear``).
    * ``"excitation_backprop"``: zennit's ExcitationBackprop (ZPlus on conv/linear, plain
      gradient through ReLUs, Norm on sums/avg-pools).
    """
    from zennit.composites import (EpsilonPlusFlat, ExcitationBackprop, LayerMapComposite,
                                   layer_map_base)
    from zennit.rules import AlphaBeta
    from zennit.types import Linear

    canonizers = default_canonizers(model)
    if name == "epsilon_plus_flat":
        return EpsilonPlusFlat(epsilon=epsilon, stabilizer=stabilizer, canonizers=canonizers)
    if name == "alpha1_beta0":
        layer_map = layer_map_base(stabilizer) + [
            (Linear, AlphaBeta(alpha=1., beta=0., stabilizer=stabilizer))]
        return LayerMapComposite(layer_map=layer_map, canonizers=canonizers)
    if name == "excitation_backprop":
        return ExcitationBackprop(stabilizer=stabilizer, canonizers=canonizers)
    raise ValueError(f"unknown composite {name!r}; expected one of "
                     f"{COMPOSITES + ('excitation_backprop',)}")


def _pair_relevance(model: nn.Module, images: torch.Tensor, image_index: torch.Tensor,
                    classes: torch.Tensor, composite, init: str
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Input relevance (P x 3 x H x W) of every pair under ``composite``, and logits B x K.

    ``init``: "logit" injects ``z_c`` at class c (one-hot times the logit), "onehot" injects 1.
    """
    if init not in ("logit", "onehot"):
        raise ValueError(f"init must be 'logit' or 'onehot', got {init!r}")
    with torch.no_grad():
        logits = model(images).detach()
    n = len(image_index)
    if n == 0:
        return images.new_zeros((0, *images.shape[1:])), logits
    rows = image_index if n > 1 else image_index.repeat(2)  # see the module docstring
    x = images[rows].detach().requires_grad_(True)
    with baked_pruning(model), torch.enable_grad(), frozen(model), composite.context(model):
        out = model(x)
        pairs = torch.arange(n, device=out.device)
        seed = torch.zeros_like(out)
        seed[pairs, classes] = out[pairs, classes].detach() if init == "logit" else 1.0
        (rel,) = torch.autograd.grad(out, x, grad_outputs=seed)
    return rel[:n].detach(), logits


def lrp(model: nn.Module, images: torch.Tensor, image_index: torch.Tensor, classes: torch.Tensor,
        layer: str | None = None, composite: str = "epsilon_plus_flat", init: str = "logit",
        epsilon: float = 1e-6, stabilizer: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """LRP maps for pairs ``(images[image_index[j]], classes[j])`` in one forward/backward.

    ``composite``: "epsilon_plus_flat" (default; zennit's EpsilonPlusFlat) or "alpha1_beta0"
    (AlphaBeta(1, 0) everywhere, the paper's LRP); see ``make_composite``. The output relevance
    is the one-hot of the pair's class times its logit (``init="logit"``, the usual LRP start, so
    the map sums to about ``z_c`` on bias-free nets) or the plain one-hot (``init="onehot"``).
    The map is the input relevance summed over colour channels (signed).
    Returns ``(maps P x H x W, logits B x K)``; ``layer`` is ignored.
    """
    comp = make_composite(composite, model, epsilon=epsilon, stabilizer=stabilizer)
    rel, logits = _pair_relevance(model, images, image_index, classes, comp, init)
    return rel.sum(dim=1), logits


def lrp_a1b0(model: nn.Module, images: torch.Tensor, image_index: torch.Tensor,
             classes: torch.Tensor, layer: str | None = None, **kwargs
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``lrp`` with the AlphaBeta(alpha=1, beta=0) composite (registered as "lrp_a1b0")."""
    return lrp(model, images, image_index, classes, layer, composite="alpha1_beta0", **kwargs)


def ebp(model: nn.Module, images: torch.Tensor, image_index: torch.Tensor, classes: torch.Tensor,
        layer: str | None = None, init: str = "onehot", stabilizer: float = 1e-6
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Excitation Backprop (Zhang et al. 2016) via zennit's ``ExcitationBackprop`` composite.

    The top-down signal starts as the one-hot of the pair's class (``init="onehot"``, the paper's
    P(a_c) = 1; "logit" multiplies it by the logit). The map is the input relevance (marginal
    winning probability) summed over colour channels; it is non-negative for non-negative inputs.
    Returns ``(maps P x H x W, logits B x K)``; ``layer`` is ignored.
    """
    comp = make_composite("excitation_backprop", model, stabilizer=stabilizer)
    rel, logits = _pair_relevance(model, images, image_index, classes, comp, init)
    return rel.sum(dim=1), logits


# ----------------------------------------------------------------------------- differentiable LRP
# Written by hand (on the layer chain RAP uses, attribution.chain): zennit's rules rebuild their modified weights
# as fresh leaves from ``param.data``, so its maps cannot be differentiated w.r.t. the weights
# (see the ``differentiable`` metadata in attribution.EXPLAINERS). This is zennit's AlphaBeta(1, 0) -- the paper's LRP --
# in plain autograd-visible operations, from the output down to one layer.


def _stabilize(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """zennit's stabiliser: ``z + epsilon * sign(z)`` with sign(0) = 1."""
    return z + ((z == 0).to(z) + z.sign()) * epsilon


class AlphaBeta10(Rule):
    """AlphaBeta(1, 0) through a Conv2d / Linear: the positive contributions
    ``x+ w+ (+ b+) + x- w-`` share ``R`` in proportion."""

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = epsilon

    def __call__(self, step: Step, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        w = step.weight
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        z = linear_op(step, xp, wp) + linear_op(step, xn, wn)
        if step.bias is not None:
            shape = (1, -1) + (1,) * (z.dim() - 2)
            z = z + step.bias.clamp(min=0).view(shape)
        s = r / _stabilize(z, self.epsilon)
        return xp * transpose_op(step, s, wp, x.shape) + xn * transpose_op(step, s, wn, x.shape)


class PoolRelevance(Rule):
    """Max pools: plain gradient (winner takes all, as zennit); average pools: zennit's Norm
    rule (in proportion to the inputs). Differentiable w.r.t. ``r`` and ``x``."""

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = epsilon

    def __call__(self, step: Step, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        xd = x.detach().requires_grad_(True)
        with torch.enable_grad():
            y = step.module(xd)
            if step.kind == "max":
                return torch.autograd.grad(y, xd, r, create_graph=True)[0]
            s = r / _stabilize(step.module(x), self.epsilon)
            return x * torch.autograd.grad(y, xd, s, create_graph=True)[0]


def a1b0_layer_relevance(calls: list, layer: nn.Module, rows: torch.Tensor,
                         classes: torch.Tensor, epsilon: float = 1e-6) -> torch.Tensor:
    """LRP-AlphaBeta(1, 0) relevance at the output of ``layer``, summed over channels (P x h x w
    for a conv layer), for pairs ``(rows[j], classes[j])``, starting from a one-hot at the class.

    ``calls`` come from a ``chain.ChainRecorder`` around the forward that produced the output;
    with grad mode on during that forward the result is differentiable w.r.t. the model's
    parameters (create_graph throughout). The layers after ``layer`` must form a chain RAP
    supports, and any BatchNorm among them must be in eval mode (it is folded with its running
    statistics).
    """
    at = [i for i, call in enumerate(calls) if call[1] is layer]
    if len(at) != 1:
        raise ValueError("lrp matching: the matched layer must run exactly once per forward, "
                         f"got {len(at)} calls")
    tail = calls[at[0] + 1:]
    check_chain(tail, calls[at[0]][3], tail[-1][3] if tail else calls[at[0]][3],
                start_name=f"the matched layer {calls[at[0]][0]!r}")
    steps = chain_steps(tail)
    last = output_layer(steps)
    out = steps[last].output
    r = torch.zeros(len(rows), out.shape[1], dtype=out.dtype, device=out.device)
    r[torch.arange(len(rows)), classes] = 1.0
    rules = {"affine": AlphaBeta10(epsilon), "max": PoolRelevance(epsilon),
             "avg": PoolRelevance(epsilon)}
    other = Reshape()
    r, _ = walk(steps[:last + 1], rows, r, lambda i, step: rules.get(step.kind, other))
    return r.sum(1) if r.dim() == 4 else r
