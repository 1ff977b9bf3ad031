"""Foreign state-dict layouts mapped onto the project's models (used by ``init_from_file``).

torchvision's ``vgg16_bn`` (``features.N`` conv / BatchNorm / ReLU / max-pool, then a
``classifier`` of three Linear layers for ImageNet's 1000 classes) has the module layout of the
``vgg16`` model here (``models.vgg.VGG16``), with two differences:

- its convolutions have a bias, ours have none (a bias before BatchNorm is redundant). The bias
  is folded into the next BatchNorm's running mean (``running_mean - bias``), which gives the
  same output in eval mode and in train mode (the batch mean absorbs it);
- its ImageNet head does not fit the task: the ``classifier.*`` weights are dropped and the
  model's own head (Dropout + Linear over the flattened pool5, as in the paper) keeps its
  initialisation.

Nothing else is renamed: a state dict that is not torchvision's VGG layout passes unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from .vgg import VGG

TORCHVISION_VGG_HEAD = "classifier.6.weight"  # the third Linear of torchvision's VGG head


def is_torchvision_vgg(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` is torchvision's VGG layout and ``model`` one of our bias-free VGGs."""
    if not isinstance(model, VGG) or TORCHVISION_VGG_HEAD not in state:
        return False
    modules = dict(model.named_modules())
    return any(k.startswith("features.") and k.endswith(".bias") and
               isinstance(modules.get(k[: -len(".bias")]), nn.Conv2d) for k in state)


def from_torchvision_vgg(model: VGG, state: dict[str, torch.Tensor]):
    """``(state, optional)``: ``state`` in ``model``'s layout (conv biases folded into the
    BatchNorms that follow, ImageNet head dropped) and the keys it may leave missing (the
    head's)."""
    out = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    for i, layer in enumerate(model.features):
        if not isinstance(layer, nn.Conv2d) or f"features.{i}.bias" not in out:
            continue
        bias = out.pop(f"features.{i}.bias")
        bn = model.features[i + 1] if i + 1 < len(model.features) else None
        mean = out.get(f"features.{i + 1}.running_mean")
        if not isinstance(bn, nn.BatchNorm2d) or mean is None or mean.shape != bias.shape:
            raise ValueError(f"features.{i}: a conv bias without a matching BatchNorm after it "
                             "cannot be folded (our VGG convolutions have no bias)")
        out[f"features.{i + 1}.running_mean"] = mean - bias
    optional = {k for k in model.state_dict() if k.startswith("classifier.")}
    return out, optional


def adapt_state_dict(model: nn.Module, state: dict[str, torch.Tensor]):
    """``(state, optional keys)`` for loading ``state`` into ``model`` (see module docstring)."""
    if is_torchvision_vgg(model, state):
        return from_torchvision_vgg(model, state)
    return state, set()
