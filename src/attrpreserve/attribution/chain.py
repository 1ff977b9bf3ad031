"""The layer chain that RAP and the differentiable LRP share, and their rule objects' base.

Both explain a model as a chain of units (each unit's input is the previous unit's output, up to
a reshape): :class:`ChainRecorder` records a forward's unit calls, :func:`chain_steps` turns
them into :class:`Step` s (eval-mode BatchNorm folded into the Conv2d / Linear before it) and
:func:`walk` carries relevance from the output back through the steps, asking a :class:`Rule`
per step (zennit's composites map layer types to rules the same way; written by hand because
zennit's rules are not differentiable w.r.t. the weights, and it has no RAP). The rules
themselves live with their method (``attribution.rap``, ``attribution.lrp``).

Layer kinds: "affine" (Conv2d, Linear), "norm" (BatchNorm, folded), "pass" (ReLU, Dropout,
Identity), "reshape" (Flatten, Unflatten), "max" and "avg" pools; other types join with
:func:`register_layer_kind` (compress.quantize registers its quant stubs). Error messages keep
the ``rap:`` prefix they always had.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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


def layer_kind(name: str, module: nn.Module) -> str | None:
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
        if layer_kind(name, module) is not None or not children:
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


def check_chain(calls: list, start: torch.Tensor, out: torch.Tensor,
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
    check_chain(calls, images, out)
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
        kind = layer_kind(name, module)
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


def linear_op(step: Step, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The layer's linear map with weight ``w`` (no bias) applied to ``x``."""
    m = step.module
    if isinstance(m, nn.Conv2d):
        return F.conv2d(x, w, None, m.stride, m.padding, m.dilation, m.groups)
    return F.linear(x, w)


def transpose_op(step: Step, s: torch.Tensor, w: torch.Tensor, shape) -> torch.Tensor:
    """The transpose of ``_linear_op`` (weight ``w``) applied to ``s``; result has ``shape``."""
    m = step.module
    if isinstance(m, nn.Conv2d):
        return torch.nn.grad.conv2d_input(shape, w, s, m.stride, m.padding, m.dilation, m.groups)
    return s @ w


def safe_divide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a / b`` where ``b != 0``, else 0."""
    return torch.where(b != 0, a / b, 0.0)


def row_sums(t: torch.Tensor) -> torch.Tensor:
    """Per-sample sum over all dimensions but the first."""
    return t.flatten(1).sum(1)


def per_row(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample values ``v`` (P) shaped to broadcast against ``like`` (P x ...)."""
    return v.view((-1,) + (1,) * (like.dim() - 1))


def output_layer(steps: list[Step]) -> int:
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


class Rule:
    """How one kind of step hands relevance ``r`` at its output to its input ``x`` (P rows):
    ``rule(step, x, r) -> relevance shaped like x``. Subclasses hold their parameters
    (epsilon, bounds), like zennit's rule objects."""

    def __call__(self, step: Step, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Reshape(Rule):
    """Pass, reshape and activation steps: relevance unchanged, in the input's shape."""

    def __call__(self, step, x, r):
        return r.reshape(x.shape)


def walk(steps: list[Step], rows: torch.Tensor, r: torch.Tensor,
         rule_for: Callable[[int, Step], Rule], keep: bool = False
         ) -> tuple[torch.Tensor, list[tuple[str, torch.Tensor]]]:
    """Relevance ``r`` at the output of ``steps[-1]`` (P rows, pair j from batch row
    ``rows[j]``) carried back to the input of ``steps[0]`` by ``rule_for(index, step)``; with
    ``keep`` also ``[(layer name, relevance at its input)]`` in the order visited."""
    layers = []
    for i in range(len(steps) - 1, -1, -1):
        step = steps[i]
        x = step.input[rows]
        r = r.reshape((len(r),) + step.output.shape[1:])  # undo views between layers
        r = rule_for(i, step)(step, x, r)
        if keep:
            layers.append((step.name, r))
    return r, layers
