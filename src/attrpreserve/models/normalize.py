"""Input normalisation inside the model (a leaf module).

Every model of the project takes images in [0, 1]; a model trained on normalised inputs gets
``(x - mean) / std`` as a forward pre-hook with non-persistent buffers, so its state dict keeps
the original key layout.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["with_input_normalization"]


def _normalize_input(module: nn.Module, args):
    return ((args[0] - module.input_mean) / module.input_std, *args[1:])


def with_input_normalization(model: nn.Module, mean, std) -> nn.Module:
    """Make ``model`` take [0, 1] images: ``(x - mean) / std`` runs before its forward."""
    model.register_buffer("input_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
    model.register_buffer("input_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
    model.register_forward_pre_hook(_normalize_input)
    return model
