"""Model cost: size, compute and latency."""

from __future__ import annotations

import os
import statistics
import time

import torch
from torch import nn

__all__ = ["count_params", "count_nonzero_params", "count_macs", "latency_ms", "file_bytes"]


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once).  For a model pruned
    with ``torch.nn.utils.prune`` this counts ``weight_orig``, i.e. the dense size."""
    return sum(p.numel() for p in model.parameters())


def count_nonzero_params(model: nn.Module) -> int:
    """Number of non-zero parameter elements.  For ``torch.nn.utils.prune`` reparametrisations
    (``NAME_orig`` parameter + ``NAME_mask`` buffer) the effective weight ``orig * mask`` is
    counted."""
    total = 0
    for module in model.modules():
        buffers = dict(module.named_buffers(recurse=False))
        for name, p in module.named_parameters(recurse=False):
            t = p.detach()
            if name.endswith("_orig") and name[: -len("_orig")] + "_mask" in buffers:
                t = t * buffers[name[: -len("_orig")] + "_mask"]
            total += int(torch.count_nonzero(t))
    return total


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


def count_macs(model: nn.Module, input_shape=(1, 3, 64, 64)) -> int:
    """Multiply-accumulates of one image through the model's convolutions and linear layers.

    Counted with forward hooks on a zeros input of ``input_shape`` (eval mode, no_grad), per
    call of the layer, divided by the batch size:

    * ``nn.Conv1d/2d/3d``: output elements x ``in_channels / groups`` x kernel volume;
    * ``nn.Linear``: ``in_features x out_features`` per sample (per token for N-d inputs).

    Bias additions, normalisation, activations, pooling and other ops are not counted.  The
    hooks are removed and the train/eval mode restored afterwards, even on error.
    """
    batch = int(input_shape[0])
    if batch < 1:
        raise ValueError("input_shape must have a positive batch size")
    device, dtype = _model_device_dtype(model)
    total = 0

    def conv_hook(module, inputs, output):
        nonlocal total
        kernel = 1
        for k in module.kernel_size:
            kernel *= int(k)
        total += output.numel() * (module.in_channels // module.groups) * kernel

    def linear_hook(module, inputs, output):
        nonlocal total
        total += output.numel() * module.in_features

    handles = []
    was_training = model.training
    try:
        for m in model.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                handles.append(m.register_forward_hook(conv_hook))
            elif isinstance(m, nn.Linear):
                handles.append(m.register_forward_hook(linear_hook))
        model.eval()
        with torch.no_grad():
            model(torch.zeros(tuple(input_shape), device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total // batch)


def latency_ms(
    model: nn.Module, input_shape=(1, 3, 64, 64), warmup: int = 3, repeats: int = 20
) -> float:
    """Median wall-clock time (ms) of one forward pass of a zeros input of ``input_shape``
    (batch 1 by default) in eval mode under ``torch.inference_mode``, on the model's device
    (CUDA is synchronised around each pass).  Measure the teacher in the same run to compare.
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    device, dtype = _model_device_dtype(model)
    x = torch.zeros(tuple(input_shape), device=device, dtype=dtype)
    cuda = device.type == "cuda"
    was_training = model.training
    times = []
    try:
        model.eval()
        with torch.inference_mode():
            for _ in range(max(0, warmup)):
                model(x)
            for _ in range(repeats):
                if cuda:
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                model(x)
                if cuda:
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - t0)
    finally:
        model.train(was_training)
    return 1000.0 * statistics.median(times)


def file_bytes(path) -> int:
    """Size in bytes of a file, or the total size of the regular files under a directory
    (symbolic links are not followed)."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return os.path.getsize(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(path)
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            if os.path.isfile(full) and not os.path.islink(full):
                total += os.path.getsize(full)
    return total
