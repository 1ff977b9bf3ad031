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
activations raise a ValueError that names the offending layer. Other layer types join through
``register_layer_kind``: compress.quantize registers its quant stubs and global max-pool, so the
fake-quant (QAT) model is explained as the chain it computes -- each fused Conv-BN-ReLU block is
one affine unit with the fake-quantized, BatchNorm-folded weight it actually used, and the
activation fake-quants pass relevance on unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LAYER_KINDS: dict[type, str] = {
    **dict.fromkeys((nn.Conv2d, nn.Linear), "affine"),
    **dict.fromkeys((nn.BatchNorm1d, nn.BatchNorm2d), "norm"),
    **dict.fromkeys((nn.ReLU, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                     nn.AlphaDropout, nn.Identity), "pass"),
    **dict.fromkeys((nn.Flatten, nn.Unflatten), "reshape"),
    **dict.fromkeys((nn.MaxPool2d, nn.AdaptiveMaxPool2d), "max"),
    **dict.fromkeys((nn.AvgPool2d, nn.AdaptiveAvgPool2d), "avg"),
}
"""Rule family of each supported layer type (subclasses included); extend with
:func:`register_layer_kind`."""


def register_layer_kind(kind: str, *types: type) -> None:
    """Let RAP treat modules of ``types`` as layers of rule family ``kind`` ("affine", "norm",
    "pass", "reshape", "max", "avg"); e.g. compress.quantize registers its quant stubs as "pass".

    A registered module is one unit even when it has children (a fused QAT Conv-BN-ReLU block is
    one "affine" unit whose ReLU and fake-quant relevance passes through unchanged).
    """
    if kind not in ("affine", "norm", "pass", "reshape", "max", "avg"):
        raise ValueError(f"unknown RAP layer kind {kind!r}")
    LAYER_KINDS.update(dict.fromkeys(types, kind))


@dataclass
class Step:
    """One layer of the chain: its kind, module, recorded input and output (B rows) and, for an
    affine layer, its weight and bias (with the following BatchNorm folded in; RAP ignores hidden
    biases, the LRP matching rule uses them)."""

    name: str
    kind: str  # "affine", "pass", "reshape", "max", "avg"
    module: nn.Module
    input: torch.Tensor
    output: torch.Tensor
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    folded: bool = False


def _kind(name: str, module: nn.Module) -> str | None:
    """Rule family of ``module`` (None if its type is not supported)."""
    kind = next((kind for t, kind in LAYER_KINDS.items() if isinstance(module, t)), None)
    if kind is None and isinstance(module, nn.Sequential) and not len(module):
        return "pass"  # an empty Sequential (a leaf) is the identity
    return kind


def _unsupported(name: str, module: nn.Module) -> ValueError:
    known = ", ".join(sorted({t.__name__ for t in LAYER_KINDS}))
    return ValueError(f"rap: unsupported layer {name!r} ({type(module).__name__}); RAP supports "
                      f"{known}")


def _units(model: nn.Module) -> dict[nn.Module, str]:
    """The modules RAP steps through, by name: supported modules (not looking inside them) and
    unsupported leaves (rejected later); containers are looked into."""
    units: dict[nn.Module, str] = {}

    def visit(name: str, module: nn.Module) -> None:
        children = list(module.named_children())
        if _kind(name, module) is not None or not children:
            units[module] = name
            return
        for child, sub in children:
            visit(f"{name}.{child}" if name else child, sub)

    visit("", model)
    return units


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` is ``b`` or a reshaped view of it (same data, same number of elements)."""
    return a is b or (a.data_ptr() == b.data_ptr() and a.numel() == b.numel()
                      and a.dtype == b.dtype)


TENSORS = ("weight", "bias", "running_mean", "running_var")


class ChainRecorder:
    """Context manager: records every unit call (see :func:`_units`) of ``model``'s forwards as
    ``(name, module, input, output, versions, params)`` in ``calls``; tensors keep their graph
    when grad mode is on (differentiable LRP matching records the student this way).

    ``versions`` are the tensors' in-place version counters (input before, output after the
    call), so that an in-place operation between two layers (``out += identity``) is detected.
    ``params`` are the unit's tensors as they were during the call (weight, bias, BatchNorm
    statistics, also of a fused block's ``bn``), so that ``torch.func.functional_call`` works;
    a unit that fake-quantizes its weight has the ``weight_fake_quant`` output as weight (the
    weight it actually used, BatchNorm already folded in by fused blocks) and ``fake_quant`` set.
    """

    def __init__(self, model: nn.Module):
        self.model, self.calls, self._handles = model, [], []

    def __enter__(self) -> "ChainRecorder":
        units = _units(self.model)
        pending, used = [], {}

        def snapshot(module):
            state = {k: getattr(module, k, None) for k in TENSORS}
            norm = getattr(module, "bn", None)
            if isinstance(norm, nn.Module):
                state["bn"] = snapshot(norm)
            if module in used:
                state["weight"], state["fake_quant"] = used.pop(module), True
            return state

        def pre(module, inputs):
            x = inputs[0] if inputs else None
            pending.append(x._version if isinstance(x, torch.Tensor) else None)

        def post(module, inputs, output):
            x = inputs[0] if inputs else None
            y_version = output._version if isinstance(output, torch.Tensor) else None
            self.calls.append((units[module], module, x, output, (pending.pop(), y_version),
                               snapshot(module)))

        def weight_hook(unit):
            def hook(fq, inputs, output):
                used[unit] = output
            return hook

        for module in units:
            self._handles.append(module.register_forward_pre_hook(pre))
            self._handles.append(module.register_forward_hook(post))
            fq = getattr(module, "weight_fake_quant", None)
            if isinstance(fq, nn.Module):
                self._handles.append(fq.register_forward_hook(weight_hook(module)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _record(model: nn.Module, images: torch.Tensor) -> tuple[list, torch.Tensor]:
    """Run ``model(images)`` once without a graph; ``(recorded calls, output)``."""
    with ChainRecorder(model) as rec, torch.no_grad():
        out = model(images)
    return rec.calls, out


def _check_chain(calls: list, start: torch.Tensor, out: torch.Tensor,
                 start_name: str = "the model input") -> None:
    """ValueError unless every unit's input is the previous unit's output (up to a reshape),
    unmodified in between; the first unit's input is ``start``."""
    if not calls:
        raise ValueError("rap: the model has no layers to propagate through")
    prev_name, prev, prev_version = start_name, start, start._version
    for name, module, x, y, (x_version, y_version), _ in calls:
        if (not isinstance(x, torch.Tensor) or not _same_storage(x, prev)
                or x_version != prev_version):
            raise ValueError(
                f"rap: the input of layer {name!r} ({type(module).__name__}) is not the output of "
                f"{prev_name}; RAP is implemented for Sequential-style chains of layers only "
                "(residual additions, concatenations, products and other functional operations "
                "between layers are not supported)")
        prev_name, prev, prev_version = f"layer {name!r}", y, y_version
    if not isinstance(out, torch.Tensor) or not _same_storage(out, prev) \
            or out._version != prev_version:
        raise ValueError(f"rap: the model output is not the output of its last layer "
                         f"{calls[-1][0]!r} (a functional operation follows it)")


def _bn_affine(norm: nn.Module, name: str, state: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` per channel of eval-mode BatchNorm ``norm`` (tensors from ``state``):
    ``y = scale * x + shift``."""
    if norm.training or state["running_var"] is None:
        raise ValueError(f"rap: BatchNorm {name!r} must be in eval mode with running statistics "
                         "(call model.eval())")
    scale = (state["running_var"] + norm.eps).rsqrt()
    if state["weight"] is not None:
        scale = scale * state["weight"]
    shift = -state["running_mean"] * scale
    return scale, shift if state["bias"] is None else shift + state["bias"]


def _fold(step: Step, norm: nn.Module, name: str, output: torch.Tensor, state: dict) -> None:
    """Fold eval-mode BatchNorm ``norm`` into the affine ``step``: weight and bias scaled per
    output channel by ``gamma / sqrt(var + eps)``, the bias shifted."""
    if step.kind != "affine" or step.folded:
        raise ValueError(f"rap: BatchNorm {name!r} must directly follow a Conv2d or Linear layer "
                         "(it is folded into it)")
    scale, shift = _bn_affine(norm, name, state)
    step.weight = step.weight * scale.view((-1,) + (1,) * (step.weight.dim() - 1))
    step.bias = shift if step.bias is None else step.bias * scale + shift
    step.folded, step.output = True, output


def _affine_params(name: str, module: nn.Module, state: dict):
    """``(weight, bias)`` an affine unit computed with. A fused fake-quant Conv-BN block adds its
    BatchNorm folded onto the conv bias to the fake-quantized weight's output (the QAT forward
    divides the conv output by the fold scale before the BatchNorm, which cancels)."""
    if "bn" not in state or not state.get("fake_quant"):
        return state["weight"], state["bias"]
    scale, shift = _bn_affine(module.bn, f"{name}.bn", state["bn"])
    return state["weight"], shift if state["bias"] is None else state["bias"] * scale + shift


def build_chain(model: nn.Module, images: torch.Tensor) -> tuple[list[Step], torch.Tensor]:
    """Trace ``model(images)`` into RAP steps (BatchNorm folded); returns ``(steps, output)``.

    ValueError if the model is not a chain of supported layers (see the module docstring).
    """
    calls, out = _record(model, images)
    _check_chain(calls, images, out)
    steps = chain_steps(calls)
    for step in steps:
        step.weight = None if step.weight is None else step.weight.detach()
        step.bias = None if step.bias is None else step.bias.detach()
    return steps, out


def chain_steps(calls: list) -> list[Step]:
    """Steps from recorded unit calls (BatchNorm folded into the affine layer before it). The
    weights keep their graph when the calls were recorded with grad mode on."""
    steps: list[Step] = []
    for name, module, x, y, _, state in calls:
        kind = _kind(name, module)
        if kind is None:
            raise _unsupported(name, module)
        if kind == "norm":
            _fold(steps[-1] if steps else Step(name, "none", module, x, y), module, name, y,
                  state)
            continue
        step = Step(name, kind, module, x, y)
        if kind == "affine":
            _check_affine(name, module, x)
            step.weight, step.bias = _affine_params(name, module, state)
        steps.append(step)
    return steps


def _check_affine(name: str, module: nn.Module, x: torch.Tensor) -> None:
    """ValueError for affine layers the rules do not cover."""
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise ValueError(f"rap: Conv2d {name!r} must use numeric zero padding")
    elif x.dim() != 2:
        raise ValueError(f"rap: Linear {name!r} must receive a 2-D input (flatten first)")


def _linear_op(step: Step, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The layer's linear map with weight ``w`` (no bias) applied to ``x``."""
    m = step.module
    if isinstance(m, nn.Conv2d):
        return F.conv2d(x, w, None, m.stride, m.padding, m.dilation, m.groups)
    return F.linear(x, w)


def _transpose_op(step: Step, s: torch.Tensor, w: torch.Tensor, shape) -> torch.Tensor:
    """The transpose of ``_linear_op`` (weight ``w``) applied to ``s``; result has ``shape``."""
    m = step.module
    if isinstance(m, nn.Conv2d):
        return torch.nn.grad.conv2d_input(shape, w, s, m.stride, m.padding, m.dilation, m.groups)
    return s @ w


def safe_divide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a / b`` where ``b != 0``, else 0."""
    return torch.where(b != 0, a / b, 0.0)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """Per-sample sum over all dimensions but the first."""
    return t.flatten(1).sum(1)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample values ``v`` (P) shaped to broadcast against ``like`` (P x ...)."""
    return v.view((-1,) + (1,) * (like.dim() - 1))


def first_rule(x: torch.Tensor, w_c: torch.Tensor, logit: torch.Tensor) -> torch.Tensor:
    """Absolute influence normalisation: ``|x w_c| / sum |x w_c| * logit`` per row."""
    z = (x * w_c).abs()
    return safe_divide(z, _bcast(_rows(z), z)) * _bcast(logit, z)


def _forward_stacked(step: Step, x: torch.Tensor, weights: list) -> torch.Tensor:
    """``cat([op(x, w) for w in weights], dim=1)``, one call with the weights stacked when the
    layer has no groups."""
    if getattr(step.module, "groups", 1) != 1:
        return torch.cat([_linear_op(step, x, w) for w in weights], dim=1)
    return _linear_op(step, x, torch.cat(weights))


def _transpose_stacked(step: Step, s: torch.Tensor, weights: list, shape) -> torch.Tensor:
    """``sum_i op^T(s_i, weights[i])`` for ``s`` = the ``s_i`` stacked along dim 1 (the transpose
    of ``_forward_stacked``)."""
    if getattr(step.module, "groups", 1) != 1:
        parts = s.chunk(len(weights), dim=1)
        return sum(_transpose_op(step, p, w, shape) for p, w in zip(parts, weights))
    return _transpose_op(step, s, torch.cat(weights), shape)


def relative_rule(step: Step, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Hidden-layer rule: positive contributions take ``R`` in full, negative ones a share by
    relative influence; then the uniform shift restores ``sum R`` (see the module docstring)."""
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
    return uniform_shift(c, _rows(r))


def uniform_shift(c: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """Subtract ``(sum c - total) / #nonzero`` from every non-zero entry of each row of ``c``."""
    nonzero = c != 0
    count = _rows(nonzero.to(c.dtype))
    excess = safe_divide(_rows(c) - total, count)
    return c - _bcast(excess, c) * nonzero


def zb_rule(step: Step, x: torch.Tensor, r: torch.Tensor,
            bounds: tuple[float, float] | None = None) -> torch.Tensor:
    """z^B rule for the input layer; bounds are each row's min / max unless ``bounds`` is given."""
    w = step.weight
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    if bounds is None:
        low = torch.ones_like(x) * _bcast(x.flatten(1).amin(1), x)
        high = torch.ones_like(x) * _bcast(x.flatten(1).amax(1), x)
    else:
        low, high = torch.full_like(x, bounds[0]), torch.full_like(x, bounds[1])
    if getattr(step.module, "groups", 1) != 1:
        z = _linear_op(step, x, w) - _linear_op(step, low, wp) - _linear_op(step, high, wn)
        s = safe_divide(r, z)
        return (x * _transpose_op(step, s, w, x.shape) - low * _transpose_op(step, s, wp, x.shape)
                - high * _transpose_op(step, s, wn, x.shape))
    stacked = torch.cat([w, -wp, -wn], dim=1)  # inputs stacked along channels: x, low, high
    xs = torch.cat([x, low, high], dim=1)
    s = safe_divide(r, _linear_op(step, xs, stacked))
    return (xs * _transpose_op(step, s, stacked, xs.shape)).unflatten(1, (3, -1)).sum(1)


def _pool_rule(step: Step, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Max pools: relevance to the maximum; average pools: in proportion to the inputs."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        y = step.module(xg)
        if step.kind == "max":
            (g,) = torch.autograd.grad(y, xg, r)
            return g
        (g,) = torch.autograd.grad(y, xg, safe_divide(r, y.detach()))
    return x * g


def _output_layer(steps: list[Step]) -> int:
    """Index of the output Linear; ValueError if the chain does not end in one."""
    last = max((i for i, s in enumerate(steps) if s.kind == "affine"), default=None)
    if last is None or not isinstance(steps[last].module, nn.Linear):
        raise ValueError("rap: the model must end in a Linear layer (the class scores)")
    tail = [s for s in steps[last + 1:] if s.kind not in ("pass", "reshape")
            or isinstance(s.module, nn.ReLU)]
    if tail:
        raise ValueError(f"rap: layer {tail[0].name!r} after the output Linear layer is not "
                         "supported (only Dropout / Identity / Flatten may follow it)")
    return last


def propagate(steps: list[Step], image_index: torch.Tensor, classes: torch.Tensor,
              bounds: tuple[float, float] | None = None, keep: bool = False
              ) -> tuple[torch.Tensor, list[tuple[str, torch.Tensor]]]:
    """RAP relevance at the model input for each pair (P x input shape).

    With ``keep`` also returns ``[(layer name, relevance at that layer's input)]`` from the
    output layer down to the first layer (for tests and inspection).
    """
    last = _output_layer(steps)
    first = min(i for i, s in enumerate(steps) if s.kind == "affine")
    out = steps[last]
    logit = out.output[image_index, classes]
    r = first_rule(out.input[image_index], out.weight[classes], logit)
    layers = [(out.name, r)] if keep else []
    for i in range(last - 1, -1, -1):
        step = steps[i]
        x = step.input[image_index]
        r = r.reshape((len(r),) + step.output.shape[1:])  # undo views between layers
        if step.kind == "affine":
            r = zb_rule(step, x, r, bounds) if i == first else relative_rule(step, x, r)
        elif step.kind in ("max", "avg"):
            r = _pool_rule(step, x, r)
        elif step.kind == "reshape":
            r = r.reshape(x.shape)
        if keep:
            layers.append((step.name, r))
    return r, layers


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
