"""Checkpoints: weights in safetensors, everything else in a JSON sidecar; loading never unpickles.

The pair is written weights first, then the sidecar, each atomically; the sidecar records the
digest of the weights it goes with (``weights_digest``, also in the safetensors header's
metadata), so a reader never pairs one run's weights with another run's ``model.json`` (a
crash between the two writes, or files copied from two runs). Checkpoints written before the
digest existed load as they are. Every file a user can damage or edit is checked before it is
used: a ``ValueError`` names the file and the key.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..fileio import atomic_write

WEIGHTS, SIDECAR = "model.safetensors", "model.json"
DIGEST = "weights_digest"  # sidecar key and safetensors metadata key


def save_checkpoint(directory: str | Path, model: nn.Module, meta: dict | None = None) -> Path:
    """Write ``model.safetensors`` and ``model.json`` (model spec + ``meta`` + the weights'
    digest) atomically; on a failed write (disk full, read-only) an ``OSError`` names the file
    and a folder this call created is removed again."""
    directory = Path(directory)
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ValueError("model has no .spec; build it with attrpreserve.models.create_model")
    state = pack_sparse({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()})
    digest = weights_digest(state)
    sidecar = {"model": spec, **(meta or {}), DIGEST: digest}
    text = json.dumps(sidecar, indent=2, default=str)
    created = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_tensors(directory / WEIGHTS, state, {DIGEST: digest})
        try:
            write_atomically(directory / SIDECAR, lambda p: p.write_text(text))
        except OSError:  # weights without their sidecar are no checkpoint: take them back
            (directory / WEIGHTS).unlink(missing_ok=True)
            raise
    except OSError:
        if created and directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
        raise
    return directory


def write_tensors(path: Path, tensors: dict[str, torch.Tensor],
                  metadata: dict[str, str] | None = None) -> None:
    """``save_file`` through :func:`write_atomically` (safetensors reports I/O errors as its
    own error type, turned into the ``OSError`` they are)."""
    write_atomically(path, lambda p: save_file(tensors, str(p), metadata))


def write_atomically(path: Path, write) -> None:
    """``fileio.atomic_write(path, write)`` (which removes the temporary file of a failed
    write); a failed ``write`` (disk full, read-only folder) raises an ``OSError`` naming
    ``path``."""
    def guarded(tmp):
        try:
            write(tmp)
        except (OSError, SafetensorError) as exc:
            code = getattr(exc, "errno", None)
            if code is None:  # safetensors: "... I/O error: ... (os error 28)"
                found = re.search(r"os error (\d+)", str(exc))
                code = int(found.group(1)) if found else errno.EIO
            raise OSError(code, os.strerror(code), str(path)) from None

    atomic_write(path, guarded)


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the tensors as stored (names, dtypes, shapes, bytes): identical weights give
    the same digest, so reruns stay byte-identical."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_checkpoint(directory: str | Path, map_location: str = "cpu"
                    ) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(sidecar, state_dict)`` of a checkpoint folder, sparse tensors unpacked, each file
    checked (:func:`read_sidecar`, :func:`read_weights`); building the model is
    ``attrpreserve.loading.load_checkpoint``'s job."""
    meta = read_sidecar(directory)
    return meta, read_weights(directory, meta, map_location)


def read_weights(directory: str | Path, meta: dict, map_location: str = "cpu"
                 ) -> dict[str, torch.Tensor]:
    """The state dict in ``directory``'s weights file, refused (``ValueError``) when the file
    is not a readable safetensors file or when it and the sidecar ``meta`` are from different
    runs (their digests differ; a sidecar without one, written before digests, is trusted)."""
    path = Path(directory) / WEIGHTS
    try:
        with safe_open(str(path), "pt") as f:  # the header only
            stored = (f.metadata() or {}).get(DIGEST)
        expected = meta.get(DIGEST)
        if expected is not None and stored != expected:
            raise ValueError(f"{SIDECAR} and {WEIGHTS} in {directory} are from different runs "
                             f"(weights digest {str(stored)[:12]}, {SIDECAR} expects "
                             f"{expected[:12]}): copy both files from the same run")
        state = load_file(str(path), device=map_location)
    except (SafetensorError, OSError, RuntimeError) as exc:
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise ValueError(f"{path}: not a readable safetensors file ({first})") from None
    return unpack_sparse(state, path)


# What a sidecar holds, checked when it is read: key -> (type, what to say). Only "model" is
# required; a key another reader needs and the file lacks is named when it is looked up
# (:class:`Sidecar`).
SIDECAR_KEYS = {"model": (dict, "an object"), "classes": (list, "a list of class names"),
                "data": (dict, "an object"), "role": (str, "a string"),
                DIGEST: (str, "a string")}
DATA_RANGES = {"size": (8, 4096), "batch_size": (1, 65536)}


class Sidecar(dict):
    """A sidecar's JSON object (and each object in it): looking up a key it lacks raises a
    ``ValueError`` naming the file and the dotted key, not a ``KeyError``."""

    where, prefix = "model.json", ""

    def __missing__(self, key):
        raise ValueError(f"{self.where}: key {self.prefix + str(key)!r} is missing")


def _sidecar(value, where: str, prefix: str = ""):
    """``value`` with every JSON object turned into a :class:`Sidecar`."""
    if isinstance(value, list):
        return [_sidecar(v, where, prefix) for v in value]
    if not isinstance(value, dict):
        return value
    out = Sidecar((k, _sidecar(v, where, f"{prefix}{k}.")) for k, v in value.items())
    out.where, out.prefix = where, prefix
    return out


def read_sidecar(directory: str | Path) -> dict:
    """The sidecar of a checkpoint folder (its model spec, classes, data, history), without
    reading the weights; ``ValueError`` naming the file and the key when the folder is not a
    checkpoint or the sidecar is not valid JSON, lacks its model, has a key of the wrong type,
    a class list whose length is not the model's, or a key another reader needs (on lookup)."""
    directory = Path(directory)
    side, weights = directory / SIDECAR, directory / WEIGHTS
    if not side.is_file() or not weights.is_file():
        raise ValueError(f"{directory} is not a checkpoint (needs {SIDECAR} and {WEIGHTS})")
    try:
        meta = json.loads(side.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" (line {exc.lineno}: {exc.msg})" if isinstance(exc, json.JSONDecodeError) else ""
        raise ValueError(f"{side}: not valid JSON{where}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{side}: expected a JSON object, got {type(meta).__name__}")
    meta = _sidecar(meta, str(side))
    for key, (kind, what) in SIDECAR_KEYS.items():
        if key in meta and not isinstance(meta[key], kind):
            raise ValueError(f"{side}: key {key!r} must be {what}, got {meta[key]!r:.60}")
    model = meta["model"]
    if not isinstance(model.get("name"), str) or not isinstance(model.get("kwargs"), dict):
        raise ValueError(f"{side}: key 'model' must hold a string 'name' and an object 'kwargs'")
    rebuild = model.get("rebuild", [])
    if not isinstance(rebuild, list) or not all(isinstance(s, dict) and isinstance(
            s.get("step"), str) for s in rebuild):
        raise ValueError(f"{side}: key 'model.rebuild' must be a list of {{\"step\": NAME, ...}}")
    if "classes" in meta:
        classes, n = meta["classes"], model["kwargs"].get("num_classes")
        if not all(isinstance(c, str) for c in classes):
            raise ValueError(f"{side}: key 'classes' must be a list of class names (strings)")
        if isinstance(n, int) and len(classes) != n:
            raise ValueError(f"{side}: key 'classes' names {len(classes)} classes, the model "
                             f"has {n} outputs (model.kwargs.num_classes)")
    for key, (low, high) in DATA_RANGES.items():
        value = meta.get("data", {}).get(key)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool)
                                      and low <= value <= high):
            raise ValueError(f"{side}: key 'data.{key}' must be an integer in [{low}, {high}], "
                             f"got {value!r}")
    return meta


def check_finite(model: nn.Module, name: str) -> nn.Module:
    """``model`` if its parameters and BatchNorm statistics are finite; else ``ValueError``
    naming the model (``name``) and the first tensor with NaN or infinite values."""
    tensors = [*model.named_parameters(), *((k, v) for k, v in model.named_buffers()
                                            if k.endswith(("running_mean", "running_var")))]
    for key, value in tensors:
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise ValueError(f"model {name} has non-finite weights ({bad} NaN or infinite "
                             f"values in {key}): refused")
    return model


SPARSE_MASK, SPARSE_VALUES = "::nonzero_bits", "::values"
SPARSE_MIN_ZEROS = 0.5  # a float tensor at least this sparse is stored as bitmask + values


def pack_sparse(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Store mostly-zero float tensors as a packed bitmask of non-zeros plus their values.

    Pruned weights then cost ``n/8 + 4 nnz`` bytes instead of ``4 n``, so bytes on disk reflect
    the sparsity; dense tensors are stored as they are.
    """
    out = {}
    for name, t in state.items():
        n = t.numel()
        if t.is_floating_point() and n >= 64 and int((t == 0).sum()) >= SPARSE_MIN_ZEROS * n:
            nz = (t != 0).flatten()
            out[name + SPARSE_MASK] = torch.from_numpy(np.packbits(nz.numpy()))
            out[name + SPARSE_VALUES] = t.flatten()[nz]
            out[name + "::shape"] = torch.tensor(t.shape, dtype=torch.int64)
        else:
            out[name] = t
    return out


def unpack_sparse(state: dict[str, torch.Tensor], path: str | Path = "weights"
                  ) -> dict[str, torch.Tensor]:
    """Inverse of :func:`pack_sparse`; a packed entry whose parts do not agree (its shape
    larger than its bitmask, a count of values that differs from the bits set) is a
    ``ValueError`` naming ``path`` and the entry, before anything is allocated."""
    out = {k: v for k, v in state.items() if "::" not in k}
    for key in [k for k in state if k.endswith(SPARSE_MASK)]:
        name = key[: -len(SPARSE_MASK)]
        parts = [state.get(name + "::shape"), state[key], state.get(name + SPARSE_VALUES)]
        shape = tuple(parts[0].tolist()) if parts[0] is not None and parts[0].dim() == 1 else ()
        n = math.prod(shape) if shape and min(shape) >= 0 else -1
        nz = None
        if parts[2] is not None and 8 * parts[1].numel() - 8 < n <= 8 * parts[1].numel():
            nz = torch.from_numpy(np.unpackbits(parts[1].cpu().numpy(), count=n).astype(bool))
        if nz is None or int(nz.sum()) != parts[2].numel():
            raise ValueError(f"{path}: packed tensor {name!r} is inconsistent (shape, bitmask "
                             "and values disagree)")
        values = parts[2]
        dense = torch.zeros(n, dtype=values.dtype, device=values.device)
        dense[nz.to(values.device)] = values
        out[name] = dense.view(shape)
    return out




STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def load_state_dict_file(path: str | Path, map_location: str = "cpu") -> dict[str, torch.Tensor]:
    """A foreign state dict from ``.safetensors`` or a torch ``.pt``/``.pth``/``.bin`` file.

    Torch files are read with ``torch.load(weights_only=True)``: only tensors and plain
    containers are allowed, so a pickle that would run code is refused (``ValueError``) before
    anything in it runs. A ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped and
    a DDP ``module.`` prefix dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file {path} not found")
    if path.suffix not in STATE_DICT_SUFFIXES:
        raise ValueError(f"{path}: expected one of {', '.join(STATE_DICT_SUFFIXES)}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device=map_location)
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # UnpicklingError for a refused global, others for garbage
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: refused: not a plain tensor state dict ({first})") from None
    return _plain_state_dict(obj, path)


def _plain_state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    """``obj`` as ``{name: tensor}``: unwrap a ``state_dict``/``model`` level, drop ``module.``."""
    if isinstance(obj, dict) and len(obj) and not any(torch.is_tensor(v) for v in obj.values()):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(k, str) and torch.is_tensor(v)
                                            for k, v in obj.items()):
        raise ValueError(f"{path}: expected a mapping of parameter names to tensors")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def init_from_file(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a foreign state dict file (:func:`load_state_dict_file`) into ``model``, strictly.

    Another library's layout is mapped by the family card's ``foreign_state`` (torchvision's
    VGG-BN onto ``vgg16``: conv biases folded into BatchNorm, ImageNet head dropped; the model's
    head keeps its init).
    """
    from .family import family_of

    state, optional = load_state_dict_file(path), set()
    family = family_of(model)
    mapped = family.foreign_state(model, state) if family and family.foreign_state else None
    if mapped is not None:
        state, optional = mapped
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), exc)
        raise ValueError(f"{path}: weights do not fit the model: {first}") from None
    missing = [k for k in missing if k not in optional]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit the model "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model
