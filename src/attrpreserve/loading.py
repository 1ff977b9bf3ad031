"""Loading a model: a checkpoint folder, a ``pretrained:`` or ``timm:`` spec, through one function.

This module sits above ``models/`` and ``compress/``: a checkpoint's spec may list rebuild steps
(channel-pruned widths, the fake-quant form) that ``compress/`` implements.  They are
registered here, explicitly, so loading never depends on which modules happen to have been
imported (``tests/test_architecture.py`` loads pruned, QAT and resumable runs after importing
only this module, in a fresh interpreter).

- :func:`load_model` -- ``(model, sidecar)`` of a checkpoint folder, ``pretrained:NAME[=PATH]``,
  ``timm:NAME[=PATH]``
  or an exported ``FILE.onnx`` (run by onnxruntime: ``compress.onnx``);
- :func:`load_checkpoint` -- a checkpoint folder (``models.checkpoint`` reads and writes files);
- :func:`load_pretrained` -- a ``pretrained:`` spec with its ImageNet weights;
- :data:`REBUILD_STEPS` / :func:`register_rebuild_step` -- the replayable structural steps.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .compress import onnx, quantize, structured
from .models import pretrained
from .models.checkpoint import (SIDECAR, WEIGHTS, check_finite, init_from_file,
                                read_checkpoint, read_sidecar)
from .models.registry import check_spec, create_model
from .models.subset import restrict_classes
from .registry import Registry

__all__ = ["REBUILD_STEPS", "load_checkpoint", "load_model", "load_pretrained", "read_meta",
           "rebuild", "register_rebuild_step"]

# Steps that turn a freshly built registry model into the form its weights were saved from
# (channel-pruned shapes, quantization-aware wrappers, ...). A recipe that changes a model's
# structure appends ``{"step": NAME, **options}`` to ``model.spec["rebuild"]``, and ``NAME`` is
# registered here (a new step: one line below); loading replays the steps in order, then loads
# the weights.
REBUILD_STEPS: Registry = Registry("rebuild step")
REBUILD_STEPS.register("channel_shapes", structured.channel_shapes)
REBUILD_STEPS.register("qat", quantize.rebuild_qat)


def register_rebuild_step(name: str):
    """Decorator: ``fn(model, state_dict, **options) -> model`` replayed by ``load_checkpoint``."""
    return REBUILD_STEPS.register(name)


def rebuild(spec: dict, state: dict[str, torch.Tensor]) -> nn.Module:
    """Build ``spec``'s model and replay its recorded rebuild steps; the spec is kept on it."""
    model = create_model(spec["name"], **spec["kwargs"])
    for step in spec.get("rebuild", []):
        options = {k: v for k, v in step.items() if k != "step"}
        model = REBUILD_STEPS[step["step"]](model, state, **options)
    model.spec = spec
    return model


def load_checkpoint(directory: str | Path, map_location: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model from its sidecar and load its weights; returns ``(model, sidecar)``.

    Each file is checked before it is used (``models.checkpoint``), the spec before anything
    is built (``models.registry.check_spec``: types, ranges, size), a spec without rebuild
    steps against the stored shapes, and the loaded weights for NaN and infinities; every
    failure is a one-line ``ValueError`` naming the file and the key."""
    meta, state = read_checkpoint(directory, map_location)
    side, weights = Path(directory) / SIDECAR, Path(directory) / WEIGHTS
    shapes = check_spec(meta["model"], str(side))
    if not meta["model"].get("rebuild"):
        _check_shapes(shapes, state, side, weights)
    model = rebuild(meta["model"], state)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch: torch's message names the layer
        first = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), exc)
        raise ValueError(f"{weights}: weights do not fit the architecture: {first}") from None
    if missing or unexpected:
        raise ValueError(f"{weights}: weights do not fit the architecture "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return check_finite(model, str(directory)).eval(), meta


def _check_shapes(shapes: dict, state: dict, side: Path, weights: Path) -> None:
    """The weights hold exactly the tensors the sidecar's spec builds, of the same shapes."""
    missing = [k for k in shapes if k not in state]
    unexpected = [k for k in state if k not in shapes]
    if missing or unexpected:
        raise ValueError(f"{weights} does not hold the model {side} describes (missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]})")
    for key, shape in shapes.items():
        if tuple(state[key].shape) != shape:
            raise ValueError(f"{weights} does not hold the model {side} describes: {key} is "
                             f"{list(state[key].shape)} there, {list(shape)} in the spec")


def load_pretrained(ref: str, input_size: int | None = None) -> nn.Module:
    """The model of a ``pretrained:NAME[=PATH][,classes=...]`` spec with its ImageNet weights
    (or of ``timm:NAME[=PATH]``: random init without a PATH), in eval mode; ``input_size``
    defaults to the model's native one (Lite1 240, Lite2 260, timm's configuration).

    ``model.spec`` is a registry spec (no weights path: checkpoints of a compressed form carry
    their own weights; a ``classes=`` restriction is its smaller ``num_classes``, the head
    keeping those classes' rows: ``models.subset``); ``model.source`` is ``ref``. Bad names or
    files raise ``ValueError``.
    """
    name, path = pretrained.parse(ref)
    kwargs = {"num_classes": len(pretrained.imagenet_classes()),
              "input_size": int(input_size or pretrained.native_size(ref))}
    if pretrained.is_timm(ref):
        model = create_model("timm", arch=name, **kwargs)  # random init without a PATH
    elif name in pretrained.LITE:
        model = create_model(pretrained.LITE[name][0], **kwargs)
        path = path or pretrained.lite_weights_file(name)
    elif path is None:
        raise ValueError(f"{ref!r}: torchvision weights cannot be downloaded here; give a local "
                         f"state dict file: 'pretrained:{name}=/path/to/{name}.pth'")
    else:
        model = create_model("torchvision_imagenet", arch=name, **kwargs)
    if path is not None:
        init_from_file(model, path)
    check_finite(model, ref)
    subset = pretrained.class_subset(ref)
    if subset is not None:
        model = restrict_classes(model, subset)
    model.source = ref
    return model.eval()


def load_model(ref: str | Path) -> tuple[nn.Module, dict]:
    """``(model, sidecar)`` of a checkpoint folder, of a ``pretrained:NAME[=WEIGHTS]`` or
    ``timm:NAME[=WEIGHTS]`` spec
    (ImageNet weights from a local file; its sidecar's data names no dataset: ``--data`` does)
    or of an ``attrpreserve export``-ed ``.onnx`` file (``compress.onnx.load_onnx``)."""
    if onnx.is_onnx(ref):
        return onnx.load_onnx(ref)
    if not pretrained.is_pretrained(ref):
        return load_checkpoint(ref)
    meta = pretrained.pretrained_meta(ref)
    model = load_pretrained(ref, meta["input_size"])
    meta["data"] = {"spec": None, "size": meta.pop("input_size"), "batch_size": 32}
    return model, meta


def read_meta(ref: str | Path) -> dict:
    """The sidecar of a checkpoint folder or an exported ``.onnx`` file, without loading the
    model (its classes, data, settings)."""
    return onnx.read_sidecar(ref) if onnx.is_onnx(ref) else read_sidecar(ref)
