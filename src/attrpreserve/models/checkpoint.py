"""Checkpoints: weights in safetensors, everything else in a JSON sidecar; loading never unpickles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..fileio import atomic_write

WEIGHTS, SIDECAR = "model.safetensors", "model.json"

def save_checkpoint(directory: str | Path, model: nn.Module, meta: dict | None = None) -> Path:
    """Write ``model.safetensors`` and ``model.json`` (model spec + ``meta``) atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ValueError("model has no .spec; build it with attrpreserve.models.create_model")
    state = pack_sparse({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()})
    atomic_write(directory / WEIGHTS, lambda p: save_file(state, str(p)))
    sidecar = {"model": spec, **(meta or {})}
    atomic_write(directory / SIDECAR,
                 lambda p: p.write_text(json.dumps(sidecar, indent=2, default=str)))
    return directory


def read_checkpoint(directory: str | Path, map_location: str = "cpu"
                    ) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(sidecar, state_dict)`` of a checkpoint folder, sparse tensors unpacked; building the
    model is ``attrpreserve.loading.load_checkpoint``'s job."""
    meta = read_sidecar(directory)
    weights = str(Path(directory) / WEIGHTS)
    return meta, unpack_sparse(load_file(weights, device=map_location))


def read_sidecar(directory: str | Path) -> dict:
    """The sidecar of a checkpoint folder (its model spec, classes, data, history), without
    reading the weights; ``ValueError`` when the folder is not a checkpoint."""
    directory = Path(directory)
    side, weights = directory / SIDECAR, directory / WEIGHTS
    if not side.is_file() or not weights.is_file():
        raise ValueError(f"{directory} is not a checkpoint (needs {SIDECAR} and {WEIGHTS})")
    return json.loads(side.read_text())


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


def unpack_sparse(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`pack_sparse`."""
    out = {k: v for k, v in state.items() if "::" not in k}
    for key in [k for k in state if k.endswith(SPARSE_MASK)]:
        name = key[: -len(SPARSE_MASK)]
        shape = tuple(state[name + "::shape"].tolist())
        n = int(np.prod(shape))
        nz = torch.from_numpy(np.unpackbits(state[key].cpu().numpy(), count=n).astype(bool))
        values = state[name + SPARSE_VALUES]
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

    torchvision's VGG-BN layout is mapped onto the ``vgg16`` model (``models.convert``: conv
    biases folded into BatchNorm, ImageNet head dropped; the model's head keeps its init).
    """
    from .convert import adapt_state_dict

    state, optional = adapt_state_dict(model, load_state_dict_file(path))
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
