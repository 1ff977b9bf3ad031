"""A classifier restricted to a subset of its classes (a task on 10 of ImageNet's 1000).

:func:`restrict_classes` rebuilds a registry model with ``num_classes = len(indices)`` and copies
every weight, keeping only the rows of the chosen classes in the classifier (the tensors whose
shape depends on ``num_classes``). Logit ``j`` of the restricted model is then the same
computation as logit ``indices[j]`` of the full one (the same weights on the same features), so
softmax, distillation and evaluation see only those classes while every explanation of a class
(Grad-CAM at the matched layer, gradients, ...) is unchanged. The result is a plain registry
model (``spec`` with the smaller ``num_classes``): its checkpoints, pruning and quantization
need nothing special.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import create_model

__all__ = ["restrict_classes"]


def restrict_classes(model: nn.Module, indices: list[int]) -> nn.Module:
    """A copy of ``model`` (a registry model, ``model.spec``) whose outputs are its logits of
    ``indices``, in that order; in ``model``'s train / eval mode, on its device.

    Raises ``ValueError`` when an index is out of range or repeated, or when the model has
    rebuild steps (restrict before compressing) or no tensor that depends on its class count.
    """
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ValueError("restrict_classes needs a registry model (built by create_model)")
    if spec.get("rebuild"):
        raise ValueError("restrict the classes of the original model, before compressing it")
    total = spec["kwargs"].get("num_classes")
    indices = [int(i) for i in indices]
    if not indices or len(set(indices)) != len(indices):
        raise ValueError(f"class indices must be distinct and at least one, got {indices}")
    if total is None or not all(0 <= i < total for i in indices):
        raise ValueError(f"class indices must lie in [0, {total}), got {indices}")
    small = create_model(spec["name"], **{**spec["kwargs"], "num_classes": len(indices)})
    full_state, state = model.state_dict(), small.state_dict()
    rows = torch.tensor(indices)
    head = [k for k in state if state[k].shape != full_state[k].shape]
    if not head:
        raise ValueError(f"no weight of {spec['name']!r} depends on its number of classes")
    for key in head:
        if full_state[key].shape[0] != total or full_state[key].shape[1:] != state[key].shape[1:]:
            raise ValueError(f"{key}: {tuple(full_state[key].shape)} is not one row per class")
        full_state[key] = full_state[key].index_select(0, rows.to(full_state[key].device))
    small.load_state_dict(full_state)
    if hasattr(model, "source"):
        small.source = model.source
    device = next(model.parameters()).device
    return small.to(device).train(model.training)
