"""The matched-layer contract: name a layer of any ``nn.Module`` and tap its activation.

WCAM and Grad-CAM both need the activation ``A`` of one named layer and the gradient of a logit
with respect to it. ``LayerTap`` registers a forward hook that records ``A`` and can
- detach it into a leaf (teacher side: no backward through the layers before ``A``), and
- append one row per (image, class) pair to the batch after ``A`` (``index``), so the layers after
  ``A`` compute one logit row per pair and ``d z / d A`` is per pair, in one forward pass.
The layers after the tapped one must treat samples independently (true for VGG heads, for any
model in eval mode, and for residual models tapped at their last stage).
"""

from __future__ import annotations

import difflib
import math
import weakref

import torch
from torch import nn

from .family import family_of, is_single_label


def model_device(model: nn.Module, default: torch.device | str = "cpu") -> torch.device:
    """Device of the model's first parameter (or buffer); ``default`` for a model with neither
    (e.g. a converted int8 model whose weights are packed)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device(default)


class eval_mode:
    """Context manager: every module of ``model`` in eval mode inside, each one's own training
    flag restored after."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.flags = {m: m.training for m in model.modules()}

    def __enter__(self):
        self.model.eval()
        return self

    def __exit__(self, *exc):
        for m, flag in self.flags.items():
            m.training = flag


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (as in ``named_modules``); a clear error otherwise."""
    modules = dict(model.named_modules())
    if name not in modules:
        close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"model has no layer {name!r}{hint}")
    return modules[name]


def default_layer(model: nn.Module) -> str:
    """The layer matched and explained when none is named: the last feature block's output.

    ``model.matched_layer`` when set (a user's own model), else its family card's
    (``models.family``: VGG the last ReLU, Lite ``_head_act``, ResNet ``layer4``, ...), else
    what :func:`probe_layer` finds. Never a module inside a residual block: a map tapped there
    misses the skip path (and Grad-CAM's extra per-pair rows break the residual add).
    """
    if getattr(model, "matched_layer", None):
        return model.matched_layer
    family = family_of(model)
    name = family.matched_layer(model) if family and family.matched_layer else None
    if name:
        return name
    if model not in _PROBED:
        _PROBED[model] = probe_layer(model)
    return _PROBED[model]


_PROBED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
PROBE_SIZE = 224


def probe_layer(model: nn.Module, size: int = PROBE_SIZE) -> str:
    """The default layer of an architecture without a rule, found by running it on one random
    ``size`` px image: the last module called once whose output is a 4-D map of more than one
    pixel and through which all of the output flows (the output has no gradient with respect to
    the input once that map is detached, so the module is not inside a residual block).
    ``ValueError`` asking for an explicit layer when there is none or the probe cannot run."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    channels = convs[0].in_channels if convs else 3
    x = torch.rand(1, channels, size, size, device=model_device(model))
    ask = "; name the layer to tap (layer=...)"
    calls, handles = {}, []

    def record(name):
        def hook(_module, _inputs, out):
            calls.setdefault(name, []).append(tuple(out.shape)
                                              if isinstance(out, torch.Tensor) else None)
        return hook

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(record(name)))
    try:
        with eval_mode(model), torch.no_grad():
            out = model(x)
    except Exception as exc:  # any architecture: its own error says why it cannot run
        raise ValueError(f"could not find {type(model).__name__}'s last feature map by running "
                         f"it on a {size} px image ({exc}){ask}") from exc
    finally:
        for h in handles:
            h.remove()
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"{type(model).__name__} does not return a tensor of logits{ask}")
    maps = [n for n, shapes in calls.items()  # dicts keep insertion order: the order of calls
            if len(shapes) == 1 and shapes[0] is not None and len(shapes[0]) == 4
            and shapes[0][2] * shapes[0][3] > 1]
    for name in reversed(maps):
        if _is_cut(model, get_layer(model, name), x):
            return name
    raise ValueError(f"{type(model).__name__} has no 4-D feature map outside a residual block"
                     f"{ask}")


def _is_cut(model: nn.Module, module: nn.Module, x: torch.Tensor) -> bool:
    """Whether all of ``model``'s output depends on ``x`` through ``module``'s output."""
    handle = module.register_forward_hook(lambda _m, _i, out: out.detach())
    try:
        with eval_mode(model), torch.enable_grad():
            x = x.clone().requires_grad_(True)
            out = model(x)
            return not out.requires_grad or \
                torch.autograd.grad(out.sum(), x, allow_unused=True)[0] is None
    finally:
        handle.remove()


def tokens_to_map(tokens: torch.Tensor, prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(map, prefix tokens)`` of a token model's layer output (batch x tokens x channels):
    the patch tokens after the first ``prefix`` as a batch x channels x side x side map."""
    b, t, c = tokens.shape
    side = math.isqrt(t - prefix)
    if side * side != t - prefix:
        raise ValueError(f"{t - prefix} patch tokens (after {prefix} class tokens) do not form "
                         "a square grid")
    return tokens[:, prefix:].transpose(1, 2).reshape(b, c, side, side), tokens[:, :prefix]


def map_to_tokens(grid: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`tokens_to_map`: prefix tokens, then the map's pixels as tokens."""
    return torch.cat([prefix, grid.flatten(2).transpose(1, 2)], 1)


class LayerTap:
    """Context manager recording the output of ``layer`` during a forward pass.

    Attributes after the forward: ``activation`` (B x C x H x W, a leaf when ``detach`` and
    nothing upstream requires a gradient; for a token model, whose family card's ``tokens``
    counts its class tokens, the patch tokens of a B x T x C output as a map),
    ``pair_activation`` (``activation[index]``, or ``activation`` when no index), and
    ``batch`` (B). With ``index`` the model output has B + P rows: the first B are the normal
    outputs, row B + j belongs to pair j.
    """

    def __init__(self, model: nn.Module, layer: str | None = None, *, detach: bool = False,
                 index: torch.Tensor | None = None):
        self.module = get_layer(model, layer or default_layer(model))
        self.detach, self.index = detach, index
        family = family_of(model)
        self.prefix = family.tokens(model) if family and family.tokens else None
        self.activation = self.pair_activation = None
        self.batch = 0
        self._handle = None

    def _hook(self, _module, _inputs, out):
        # ``detach`` makes the activation a leaf so only the layers after it are differentiated;
        # one already in a graph (an earlier tap's leaf upstream) is kept, so several taps on a
        # frozen model each get their gradient from one backward pass.
        tokens = self.prefix is not None and out.dim() == 3
        if tokens:  # a token model: the patch tokens as a map, the layers after get tokens back
            out, prefix = tokens_to_map(out, self.prefix)
            prefix = prefix.detach() if self.detach else prefix
        a = out.detach().requires_grad_(True) if self.detach and not out.requires_grad else out
        self.activation, self.batch = a, a.shape[0]
        if self.index is None:
            self.pair_activation = a
            if tokens:
                return map_to_tokens(a, prefix)
            return a if self.detach else None
        self.pair_activation = a[self.index]
        full = torch.cat([a, self.pair_activation])
        return map_to_tokens(full, torch.cat([prefix, prefix[self.index]])) if tokens else full

    def pair_rows(self, device=None) -> torch.Tensor:
        """Row of the model output that belongs to each pair."""
        n = self.batch if self.index is None else len(self.index)
        offset = 0 if self.index is None else self.batch
        return torch.arange(offset, offset + n, device=device)

    def __enter__(self) -> "LayerTap":
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def class_probabilities(model: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """The model's own class probabilities for ``logits`` (images x classes): a softmax over
    the classes for single-label classifiers (``models.family.is_single_label``, e.g. ImageNet
    ``pretrained:`` models), one sigmoid per class for multi-label ones (the scenes, VOC)."""
    if is_single_label(model):
        return torch.softmax(logits.float(), dim=1)
    return torch.sigmoid(logits.float())
