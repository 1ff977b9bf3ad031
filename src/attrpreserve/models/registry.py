"""Model registry: ``create_model("name", **kwargs)``; the spec is kept on the model for checkpoints."""

from __future__ import annotations

from typing import Callable

from torch import nn

from .vgg import SMALL, VGG, VGG16, scaled

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Decorator adding a model builder to the registry under ``name``."""
    def wrap(fn):
        MODELS[name] = fn
        return fn
    return wrap


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


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; ``model.spec`` records how, so a checkpoint can rebuild it."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    model = MODELS[name](**kwargs)
    model.spec = {"name": name, "kwargs": dict(kwargs)}
    return model
