"""Checkpoints: weights in safetensors, everything else in a JSON sidecar; loading never unpickles."""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from .registry import create_model

WEIGHTS, SIDECAR = "model.safetensors", "model.json"


def save_checkpoint(directory: str | Path, model: nn.Module, meta: dict | None = None) -> Path:
    """Write ``model.safetensors`` and ``model.json`` (model spec + ``meta``) atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ValueError("model has no .spec; build it with attrpreserve.models.create_model")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _atomic(directory / WEIGHTS, lambda p: save_file(state, str(p)))
    sidecar = {"model": spec, **(meta or {})}
    _atomic(directory / SIDECAR, lambda p: p.write_text(json.dumps(sidecar, indent=2, default=str)))
    return directory


def load_checkpoint(directory: str | Path, map_location: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model from its sidecar and load its weights; returns ``(model, sidecar)``."""
    directory = Path(directory)
    side, weights = directory / SIDECAR, directory / WEIGHTS
    if not side.is_file() or not weights.is_file():
        raise ValueError(f"{directory} is not a checkpoint (needs {SIDECAR} and {WEIGHTS})")
    meta = json.loads(side.read_text())
    model = create_model(meta["model"]["name"], **meta["model"]["kwargs"])
    try:
        missing, unexpected = model.load_state_dict(load_file(str(weights), device=map_location),
                                                    strict=False)
    except RuntimeError as exc:  # shape mismatch: torch's message names the layer
        first = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), exc)
        raise ValueError(f"{weights}: weights do not fit the architecture: {first}") from exc
    if missing or unexpected:
        raise ValueError(f"{weights}: weights do not fit the architecture "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval(), meta


def _atomic(path: Path, write) -> None:
    """Write to a temporary file beside ``path``, fsync it, then rename over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
