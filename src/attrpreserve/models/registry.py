"""Model registry: ``create_model("name", **kwargs)``; the spec is kept on the model for checkpoints."""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..registry import Registry
from . import pretrained
from .normalize import with_input_normalization
from .vgg import SMALL, VGG, VGG16, scaled

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(name: str):
    """Decorator adding a model builder to the registry under ``name``."""
    return MODELS.register(name)


@register_model("vgg")
def vgg_small(num_classes: int, width: int = 32, width_divisor: float = 1.0,
              input_size: int = 64, dropout: float = 0.5, cfg: list | None = None,
              head: str = "max") -> VGG:
    """Small VGG-BN for 64 px inputs: channels ``width * [1, 2, 4, 4, 8, 8] / width_divisor``."""
    return VGG(cfg or scaled(SMALL, width_divisor, width), num_classes, input_size, dropout, head)


@register_model("vgg16")
def vgg16(num_classes: int, width_divisor: float = 1.0, input_size: int = 227,
          dropout: float = 0.5, cfg: list | None = None, head: str = "flatten") -> VGG:
    """The paper's VGG16-BN, every width divided by ``width_divisor`` (1, 2, 4 or 8)."""
    return VGG(cfg or scaled(VGG16, width_divisor), num_classes, input_size, dropout, head)


def _torchvision(builder: str, num_classes: int, **kwargs) -> nn.Module:
    """A torchvision classifier with random weights (nothing is downloaded); its matched layer
    (Grad-CAM's and matching's default) is its family's, ``layers.default_layer``."""
    import torchvision

    return getattr(torchvision.models, builder)(weights=None, num_classes=num_classes, **kwargs)


@register_model("resnet18")
def resnet18(num_classes: int, input_size: int = 224) -> nn.Module:
    """torchvision ResNet-18, random init; ``input_size`` is recorded for the data pipeline."""
    return _torchvision("resnet18", num_classes)


@register_model("mobilenet_v3_small")
def mobilenet_v3_small(num_classes: int, input_size: int = 224, dropout: float = 0.2) -> nn.Module:
    """torchvision MobileNetV3-Small, random init."""
    return _torchvision("mobilenet_v3_small", num_classes, dropout=dropout)


# ImageNet families (random weights here; ``loading.load_pretrained`` loads their weights).
# Random-init students for distillation between architectures are these too
# (``models.students``).
MODELS.register("efficientnet_lite0", pretrained.efficientnet_lite0)
MODELS.register("efficientnet_lite1", pretrained.efficientnet_lite1)
MODELS.register("efficientnet_lite2", pretrained.efficientnet_lite2)
MODELS.register("torchvision_imagenet", pretrained.torchvision_imagenet)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; ``model.spec`` records how, so a checkpoint can rebuild it.

    ``input_norm=[mean, std]`` (any model; per-channel lists) makes the model normalise its
    [0, 1] input itself (``pretrained.with_input_normalization``); it stays in the spec, so
    checkpoints and students built from the spec (distillation) normalise the same way.
    """
    norm = kwargs.pop("input_norm", None)
    model = MODELS[name](**kwargs)
    if norm is not None:
        if hasattr(model, "input_mean"):
            raise ValueError(f"model {name!r} already normalises its input; drop input_norm")
        mean, std = norm
        with_input_normalization(model, [float(v) for v in mean], [float(v) for v in std])
        kwargs["input_norm"] = [list(mean), list(std)]
    model.spec = {"name": name, "kwargs": dict(kwargs)}
    return model
