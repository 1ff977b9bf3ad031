"""Structured (filter) pruning with fine-tuning: the paper's L1-norm filter pruning setting.

Filters (conv output channels) are removed physically through torch-pruning's dependency graph,
so every layer that consumes them shrinks with them: the BatchNorm after the conv, the next conv's
input channels, residual partners (a ResNet's coupled convs are pruned as one group) and the
Linear head, whose flattened input is channel-major (C x H x W): channel ``c`` owns the columns
``c*H*W .. (c+1)*H*W - 1`` (``repeat_interleave``, not the public code's ``repeat``).
Only convs are roots of a pruning group, so the classifier's output neurons are never removed.

Rates are per conv layer: removing ``rate`` of a layer's original filters leaves
``C - round(rate * C)`` of them (half up, at least one kept; ``round_to`` rounds the kept
count up to a multiple). Filters are ranked within each layer by an importance from
``IMPORTANCES`` (default ``"l1"``, Li et al.), computed once on the model before any surgery
(Li et al.'s "independent" strategy). This is the surgery only; the recipe
(``recipes.structured``) runs one-shot (the paper's) or iterative schedules with fine-tuning
after every round.

A pruned model records ``{"step": "channel_shapes", "channels": {conv: width}}`` in
``model.spec["rebuild"]``; ``load_checkpoint`` replays the surgery on a freshly built model
(see :func:`channel_shapes`) before loading the weights.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable

import torch
import torch_pruning as tp
from torch import nn

from ..registry import Registry
from ..models.layers import get_layer
from ..models.registry import MODELS
from ..models.family import family_of

__all__ = ["IMPORTANCES", "FilterNorm", "register_importance", "create_importance",
           "conv_layers", "conv_channels", "paper_layers", "paper_rates", "resolve_rates",
           "n_pruned", "example_input", "remove_filters", "prune_channels", "channel_shapes",
           "pruning_units", "remove_units"]


class FilterNorm(tp.importance.Importance):
    """``sum |w|^p`` of each output filter, summed over the group's coupled convs.

    For a plain conv chain this is the filter norm of Li et al. ("l1": p = 1) of that one
    conv; for a residual group (convs whose outputs are added) the filters of every coupled conv
    count, since they are removed together.
    """

    def __init__(self, p: int = 1):
        self.p = p

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor:
        imp = torch.zeros(len(group[0].idxs))
        for i, (dep, idxs) in enumerate(group):
            if dep.pruning_fn != tp.prune_conv_out_channels:
                continue
            w = dep.layer.weight.detach()[idxs].flatten(1)
            root = torch.as_tensor(group[i].root_idxs)
            imp.scatter_add_(0, root, w.abs().pow(self.p).sum(1).float().cpu())
        return imp


IMPORTANCES: Registry[Callable[[], tp.importance.Importance]] = Registry("importance")


def register_importance(name: str):
    """Decorator adding a filter-importance factory (no arguments) under ``name``."""
    return IMPORTANCES.register(name)


register_importance("l1")(lambda: FilterNorm(1))
register_importance("l2")(lambda: FilterNorm(2))
# torch-pruning's grouped criteria: the whole group (BatchNorm, consumers' input weights) votes.
register_importance("group_l2")(lambda: tp.importance.MagnitudeImportance(p=2, normalizer=None))
register_importance("bn_scale")(lambda: tp.importance.BNScaleImportance(normalizer=None))
register_importance("fpgm")(lambda: tp.importance.FPGMImportance(normalizer=None))
register_importance("random")(lambda: tp.importance.RandomImportance())  # global torch RNG


def create_importance(importance: str | Callable) -> Callable:
    """An importance by registry name; a callable ``group -> scores`` is passed through."""
    if callable(importance):
        return importance
    return IMPORTANCES[importance]()


def conv_layers(model: nn.Module) -> list[str]:
    """Names of the model's ``Conv2d`` layers, in module order."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def conv_channels(model: nn.Module) -> dict[str, int]:
    """Output channels of every ``Conv2d``, by name."""
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def paper_layers(model: nn.Module) -> list[str]:
    """The paper's pruned layers: the first conv and the last six (VGG16: conv1_1, conv4_1..5_3)."""
    convs = conv_layers(model)
    return list(dict.fromkeys(convs[:1] + convs[-6:]))


def paper_rates(model: nn.Module, rate: float = 0.7) -> dict[str, float]:
    """``{layer: rate}`` for :func:`paper_layers` (p = 0.7 in the paper's evaluation)."""
    return {name: rate for name in paper_layers(model)}


def resolve_rates(model: nn.Module, rates) -> dict[str, float]:
    """``{conv name: rate}`` from a float (every conv) or a dict (named convs only), validated."""
    if not isinstance(rates, dict):
        rates = {name: rates for name in conv_layers(model)}
    out = {}
    for name, rate in rates.items():
        if not isinstance(get_layer(model, name), nn.Conv2d):
            raise ValueError(f"layer {name!r} is not a Conv2d; only conv filters are pruned")
        if not 0.0 <= float(rate) < 1.0:
            raise ValueError(f"rate for {name!r} must be in [0, 1), got {rate}")
        out[name] = float(rate)
    return out


def n_pruned(channels: int, rate: float, round_to: int | None = None) -> int:
    """Filters removed from ``channels`` at ``rate``: ``round(rate * channels)`` (half up).

    At least one filter is kept; with ``round_to`` the kept count is rounded up to a multiple
    of it (never above ``channels``).
    """
    n = min(int(math.floor(rate * channels + 0.5)), channels - 1)
    if round_to:
        n = channels - min(channels, math.ceil((channels - n) / round_to) * round_to)
    return max(n, 0)


def example_input(model: nn.Module, given: torch.Tensor | None = None) -> torch.Tensor:
    """Zeros image batch for tracing, sized by ``model.spec``'s (or its builder's) input_size."""
    p = next(model.parameters())
    if given is not None:
        return given.to(p.device)
    spec = getattr(model, "spec", None) or {}
    size = spec.get("kwargs", {}).get("input_size")
    if size is None and spec.get("name") in MODELS:
        param = inspect.signature(MODELS[spec["name"]]).parameters.get("input_size")
        size = param.default if param is not None else None
    size = size if isinstance(size, int) else 64
    return torch.zeros(1, 3, size, size, device=p.device, dtype=p.dtype)


def _group_count(group, names: dict, counts: dict[str, int]) -> int:
    """Filters to remove from a group: the count of its rated convs (they must agree)."""
    rated = {names[dep.target.module]: counts[names[dep.target.module]] for dep, _ in group
             if dep.pruning_fn == tp.prune_conv_out_channels
             and names.get(dep.target.module) in counts}
    if len(set(rated.values())) > 1:
        raise ValueError(f"coupled convs (pruned together) got different rates: {rated}")
    return next(iter(rated.values()), 0)


def _prune_counts(model: nn.Module, counts: dict[str, int], importance, example: torch.Tensor):
    """Remove ``counts[conv]`` lowest-importance filters from each conv's group, in place.

    All groups and their importances are taken from the unpruned model first; groups are
    disjoint in the channels they remove, so pruning them one after another is exact. (No
    ``no_grad`` here: torch-pruning traces the graph with autograd.)
    """
    scorer = create_importance(importance)
    was_training = model.training
    model.eval()  # trace with BatchNorm in eval mode (batch of one)
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    finally:
        model.train(was_training)
    names = {m: n for n, m in model.named_modules()}
    plans = []
    for group in graph.get_all_groups(root_module_types=(nn.Conv2d,)):
        n = _group_count(group, names, counts)
        if n > 0:
            root = group[0].dep.target.module
            scores = scorer(group)
            if scores is None:
                raise ValueError(f"importance {importance!r} scores no filter of {names[root]!r}")
            order = torch.argsort(torch.as_tensor(scores).float().cpu(), stable=True)
            plans.append((root, order[:n].sort().values.tolist()))
    for module, idxs in plans:
        graph.get_pruning_group(module, tp.prune_conv_out_channels, idxs).prune()


def _sync_attributes(model: nn.Module) -> None:
    """Keep model attributes that mirror channel counts in step with the layers (the family
    card's ``after_pruning``: VGG's ``cfg``)."""
    family = family_of(model)
    if family is not None and family.after_pruning is not None:
        family.after_pruning(model)


def _record_rebuild(model: nn.Module) -> None:
    """Record the conv widths as a ``channel_shapes`` rebuild step in a copy of ``model.spec``.

    A second surgery updates the last step instead of adding one.
    """
    spec = getattr(model, "spec", None)
    if spec is None:
        return
    steps = list(spec.get("rebuild", []))
    if steps and steps[-1].get("step") == "channel_shapes":
        steps.pop()
    steps.append({"step": "channel_shapes", "channels": conv_channels(model)})
    model.spec = {**spec, "rebuild": steps}


def remove_filters(model: nn.Module, counts: dict[str, int], importance: str | Callable = "l1",
                   example: torch.Tensor | None = None) -> nn.Module:
    """Surgery for ``{conv: filters to remove}``, then attribute sync and the rebuild record."""
    if any(counts.values()):
        _prune_counts(model, counts, importance, example_input(model, example))
        _sync_attributes(model)
        _record_rebuild(model)
    return model


def pruning_units(model: nn.Module) -> dict[str, int]:
    """The units a family prunes instead of conv filters (a ViT's heads per attention and
    hidden channels per MLP: its card's ``units``), by name; empty for conv models."""
    family = family_of(model)
    return family.units(model) if family is not None and family.units is not None else {}


def remove_units(model: nn.Module, keep: dict[str, int]) -> nn.Module:
    """Keep ``keep[name]`` of each unit (:func:`pruning_units`), the lowest-L1 ones removed
    (the card's ``prune_units``), then the attribute sync and the rebuild record (a checkpoint
    replays the widths from its weights' shapes: :func:`channel_shapes`)."""
    family_of(model).prune_units(model, keep)
    _sync_attributes(model)
    _record_rebuild(model)
    return model


def prune_channels(model: nn.Module, rates, importance: str | Callable = "l1",
                   example_input: torch.Tensor | None = None,
                   round_to: int | None = None) -> nn.Module:
    """Remove ``rates`` of the filters of each conv (a float: every conv; a dict: named ones).

    Pure surgery, no training: the model is changed in place and returned. Counts per layer are
    ``n_pruned(out_channels, rate, round_to)``; ``example_input`` (default: zeros at the spec's
    ``input_size``) only serves to trace the dependency graph.
    """
    channels = conv_channels(model)
    counts = {name: n_pruned(channels[name], rate, round_to)
              for name, rate in resolve_rates(model, rates).items()}
    return remove_filters(model, counts, importance, example_input)


def _resize(module: nn.Module, name: str, shape) -> None:
    """Replace parameter or buffer ``name`` by an uninitialised tensor of ``shape``."""
    old = getattr(module, name)
    new = torch.empty(tuple(shape), dtype=old.dtype, device=old.device)
    setattr(module, name, nn.Parameter(new, old.requires_grad)
            if isinstance(old, nn.Parameter) else new)


def _resize_conv(m: nn.Conv2d, w: torch.Tensor) -> None:
    """Conv to ``w``'s shape; depthwise convs keep their channel multiplier."""
    if m.groups > 1 and m.groups == m.in_channels:
        m.groups = w.shape[0] // (m.out_channels // m.groups)
    m.out_channels, m.in_channels = w.shape[0], w.shape[1] * m.groups
    _resize(m, "weight", w.shape)
    if m.bias is not None:
        _resize(m, "bias", w.shape[:1])


def _resize_state(m: nn.Module, prefix: str, state: dict) -> None:
    """Every direct parameter/buffer of ``m`` present in ``state`` to the saved shape."""
    for name, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
        key = prefix + name
        if key in state and t is not None and t.shape != state[key].shape:
            _resize(m, name, state[key].shape)


def channel_shapes(model: nn.Module, state: dict, channels: dict | None = None,
                   **_options) -> nn.Module:
    """Rebuild step: give a freshly built model its pruned widths, so the saved weights fit.

    With ``channels`` (``{conv: out_channels}``, recorded at pruning) the surgery is replayed
    through the dependency graph: every dependent layer follows, whatever the state dict's key
    layout (a later step such as "qat" fuses blocks and renames keys). Any Conv2d, BatchNorm or
    Linear whose ``state`` shape still differs (or all of them, without ``channels``) is then
    resized to it.
    """
    if channels:
        now = conv_channels(model)
        if set(channels) - set(now):
            raise ValueError(f"channel_shapes: no conv {sorted(set(channels) - set(now))[:3]}")
        counts = {n: now[n] - c for n, c in channels.items()}
        if any(counts.values()):  # which filters go is irrelevant: the weights are loaded next
            _prune_counts(model, counts, "l1", example_input(model))
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, nn.Conv2d) and prefix + "weight" in state:
            if m.weight.shape != state[prefix + "weight"].shape:
                _resize_conv(m, state[prefix + "weight"])
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            keys = [prefix + k for k in ("weight", "running_mean") if prefix + k in state]
            if keys:
                m.num_features = state[keys[0]].shape[0]
                _resize_state(m, prefix, state)
        elif isinstance(m, nn.Linear) and prefix + "weight" in state:
            m.out_features, m.in_features = state[prefix + "weight"].shape
            _resize_state(m, prefix, state)
    _sync_attributes(model)
    return model
