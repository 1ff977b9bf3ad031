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

import torch
from torch import nn


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (as in ``named_modules``); a clear error otherwise."""
    modules = dict(model.named_modules())
    if name not in modules:
        close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"model has no layer {name!r}{hint}")
    return modules[name]


def default_layer(model: nn.Module) -> str:
    """The layer matched and explained when none is named: the last conv block's output."""
    if getattr(model, "matched_layer", None):
        return model.matched_layer
    if hasattr(model, "last_relu_name"):
        return model.last_relu_name()
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("model has no Conv2d layer; name the layer to tap explicitly")
    return convs[-1]


class LayerTap:
    """Context manager recording the output of ``layer`` during a forward pass.

    Attributes after the forward: ``activation`` (B x C x H x W, a leaf when ``detach``),
    ``pair_activation`` (``activation[index]``, or ``activation`` when no index), and
    ``batch`` (B). With ``index`` the model output has B + P rows: the first B are the normal
    outputs, row B + j belongs to pair j.
    """

    def __init__(self, model: nn.Module, layer: str | None = None, *, detach: bool = False,
                 index: torch.Tensor | None = None):
        self.module = get_layer(model, layer or default_layer(model))
        self.detach, self.index = detach, index
        self.activation = self.pair_activation = None
        self.batch = 0
        self._handle = None

    def _hook(self, _module, _inputs, out):
        a = out.detach().requires_grad_(True) if self.detach else out
        self.activation, self.batch = a, a.shape[0]
        if self.index is None:
            self.pair_activation = a
            return a if self.detach else None
        self.pair_activation = a[self.index]
        return torch.cat([a, self.pair_activation])

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
    the classes for single-label classifiers (``model.single_label``, e.g. ImageNet
    ``pretrained:`` models), one sigmoid per class for multi-label ones (the scenes, VOC)."""
    if getattr(model, "single_label", False):
        return torch.softmax(logits.float(), dim=1)
    return torch.sigmoid(logits.float())
