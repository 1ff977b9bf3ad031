"""Model registry: ``create_model("name", **kwargs)``; the spec is kept on the model for checkpoints.

The builders are registered by their families (``models/families/``, ``models.family``)."""

from __future__ import annotations

import inspect
import math
from typing import Callable

import torch
from torch import nn

from ..registry import Registry
from .normalize import with_input_normalization

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(name: str):
    """Decorator adding a model builder to the registry under ``name``."""
    return MODELS.register(name)


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


# Sane ranges of a spec's numbers, checked before a model is built from a (possibly edited)
# ``model.json``; ``MAX_ELEMENTS`` bounds what the built model may hold (4 GiB of float32), so
# an absurd combination (a tiny width divisor, a huge input size under a flatten head) is
# refused by a model built on the meta device, where nothing is allocated.
SPEC_RANGES = {"num_classes": (1, 100_000), "input_size": (8, 4096), "width": (1e-3, 1024),
               "width_divisor": (1 / 64, 64), "dropout": (0, 1), "drop_connect": (0, 1)}
MAX_ELEMENTS = 2 ** 30


def check_spec(spec, where: str = "model spec") -> dict[str, tuple[int, ...]]:
    """Check a checkpoint's model spec (``{"name", "kwargs", ...}``) without allocating the
    model: a registered name, keyword arguments its builder takes, of their defaults' types,
    within :data:`SPEC_RANGES`, and at most :data:`MAX_ELEMENTS` numbers in all. Returns the
    state dict shapes of the model it builds (before any rebuild step); ``ValueError`` naming
    ``where`` and the key otherwise."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) \
            or not isinstance(spec.get("kwargs"), dict):
        raise ValueError(f"{where}: key 'model' must be an object with a string 'name' and an "
                         "object 'kwargs'")
    name, kwargs = spec["name"], dict(spec["kwargs"])
    if name not in MODELS:
        raise ValueError(f"{where}: {MODELS.unknown(name)}")
    norm = kwargs.pop("input_norm", None)
    if norm is not None and not (isinstance(norm, list) and len(norm) == 2 and all(
            isinstance(v, list) and len(v) == 3 and all(_is_number(x) for x in v)
            for v in norm)):
        raise ValueError(f"{where}: key 'model.kwargs.input_norm' must be [mean, std] of three "
                         f"numbers each, got {norm!r}")
    params = inspect.signature(MODELS[name]).parameters
    for key, value in kwargs.items():
        _check_kwarg(where, name, key, value, params.get(key))
    missing = [k for k, p in params.items() if p.default is p.empty and k not in kwargs]
    if missing:
        raise ValueError(f"{where}: key 'model.kwargs.{missing[0]}' is missing (model {name!r} "
                         "needs it)")
    try:
        with torch.device("meta"):
            skeleton = create_model(name, **spec["kwargs"])
    except (TypeError, ValueError, RuntimeError) as exc:
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise ValueError(f"{where}: cannot build model {name!r} from its kwargs: {first}") \
            from None
    shapes = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    total = sum(math.prod(s) for s in shapes.values())
    if total > MAX_ELEMENTS:
        raise ValueError(f"{where}: model {name!r} with kwargs {spec['kwargs']} would hold "
                         f"{total:,} numbers (limit {MAX_ELEMENTS:,}): its sizes are absurd")
    return shapes


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_kwarg(where: str, name: str, key: str, value, param: inspect.Parameter | None
                 ) -> None:
    """One keyword argument of a spec: taken by the builder, of its default's type (a number
    where the default is a number or None), in :data:`SPEC_RANGES`."""
    label = f"{where}: key 'model.kwargs.{key}'"
    if param is None:
        raise ValueError(f"{label} is not an argument of model {name!r}")
    default = param.default
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int) or (default is param.empty and key in SPEC_RANGES):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float) or key in SPEC_RANGES:
        ok = _is_number(value) or (value is None and default is None)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif key == "cfg":
        ok = value is None or (isinstance(value, list) and len(value) > 0 and all(
            v == "M" or (isinstance(v, int) and not isinstance(v, bool) and v > 0)
            for v in value))
    else:
        ok = True
    if not ok:
        raise ValueError(f"{label} has the wrong type: {value!r:.40}")
    if key in SPEC_RANGES and value is not None:
        low, high = SPEC_RANGES[key]
        if not low <= value <= high:
            raise ValueError(f"{label} is {value!r:.40}, outside [{low:g}, {high:g}]")
