"""Data-parallel training under ``torchrun``: process group, sharded batches, gradient averaging.

``attrpreserve train|compress`` run unchanged under ``torchrun --nproc_per_node N``: the CLI
calls :func:`init_from_env` (gloo for CPU training, NCCL for CUDA), the training loader gives
every rank its share of each global batch (:class:`ShardedBatchSampler`), and ``engine.fit``
averages gradients after each backward with :func:`average_gradients`. Rank 0 alone logs,
validates and writes checkpoints.

Why not ``DistributedDataParallel``: WCAM differentiates the student's Grad-CAM map, so the loss
holds a ``create_graph=True`` gradient and the backward is a double backward. DDP's reducer does
not support that (pytorch/pytorch#47562: gradients of a gradient-penalty loss are reduced wrongly;
#63812), and its wrapper renames every layer (``module.``), which breaks the matched-layer names.
One all-reduce of the flattened gradients after ``backward`` has neither problem; it does not
overlap communication with the backward, which matters little for the small models trained here.

BatchNorm: there is no SyncBatchNorm on CPU, so a rank normalises with the statistics of its own
part of the batch (as DDP without SyncBatchNorm does); the running statistics are averaged across
ranks after every step, so every rank holds the same model.  Results therefore differ from a
one-process run with the same global batch wherever the student has BatchNorm in train mode.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import RandomSampler, Sampler


def init_from_env(device: str = "cpu") -> bool:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1).

    Returns whether training is distributed. Backend: NCCL for a CUDA ``device``, else gloo.
    """
    if active():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    backend = "nccl" if str(device).startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend)
    return True


def shutdown(wait: bool = True) -> None:
    """Leave the process group; ``wait``: after a barrier, so no rank exits while another still
    writes (not after an error, which may have stopped only some ranks)."""
    if active():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def active() -> bool:
    """Whether this process trains as one rank of several."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0 (or the only process): the one that logs, validates and writes files."""
    return rank() == 0


def resolve_device(device: str) -> str:
    """A ``--device`` value checked: ``auto`` is ``cuda`` when available, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"--device must be cpu or cuda (or auto), got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available here")
    return device


def device_for(device: str) -> torch.device:
    """``device`` for this rank: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun."""
    if str(device) == "cuda" and active():
        return torch.device("cuda", local_rank())
    return torch.device(device)


def barrier() -> None:
    if active():
        dist.barrier()


class ShardedBatchSampler(Sampler[list[int]]):
    """This rank's share of every global batch of ``batch_size`` images.

    Global batches are the ones a one-process ``DataLoader(shuffle=True, generator=g)`` yields:
    the order is drawn from ``generator`` by the same ``RandomSampler`` at the same point, so a
    run on N ranks sees the same global batches, step by step, as a run on one. Rank ``r`` takes
    every N-th image of a global batch from its ``r``-th; a final global batch with fewer images
    than ranks is dropped (every rank must take part in every step).
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool = True,
                 generator: torch.Generator | None = None, rank_: int | None = None,
                 world: int | None = None):
        self.n, self.batch_size, self.shuffle, self.generator = n, batch_size, shuffle, generator
        self.rank = rank() if rank_ is None else rank_
        self.world = world_size() if world is None else world
        if batch_size < self.world:
            raise ValueError(f"batch size {batch_size} is smaller than the {self.world} processes; "
                             f"the batch size is the global batch, split across processes")

    def __iter__(self):
        order = (list(RandomSampler(range(self.n), generator=self.generator)) if self.shuffle
                 else list(range(self.n)))
        for start in range(0, self.n, self.batch_size):
            block = order[start:start + self.batch_size]
            if len(block) < self.world:
                return
            yield block[self.rank::self.world]

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest >= self.world else 0)


def _bn_buffers(model: nn.Module) -> list[torch.Tensor]:
    """Running statistics of every BatchNorm (they drift apart across ranks in train mode)."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            out += [m.running_mean, m.running_var]
    return out


@torch.no_grad()
def average_gradients(model: nn.Module, n_local: int, finite: bool) -> bool:
    """All-reduce gradients (weighted by each rank's batch size) and BatchNorm statistics.

    Each rank's loss is a mean over its ``n_local`` images, so ``sum_r n_r g_r / sum_r n_r`` is
    the gradient of the mean over the global batch. One flat buffer, one collective per step;
    it also carries whether every rank's loss was finite (returned: all ranks then agree to stop).
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    stats = _bn_buffers(model)
    ref = grads[0] if grads else next(model.parameters())
    flags = torch.tensor([float(n_local), 0.0 if finite else 1.0], dtype=ref.dtype,
                         device=ref.device)
    flat = torch.cat([g.reshape(-1) * n_local for g in grads]
                     + [s.reshape(-1).to(ref.dtype) for s in stats] + [flags])
    dist.all_reduce(flat)
    total, bad = float(flat[-2]), float(flat[-1])
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g) / total)
        offset += g.numel()
    for s in stats:
        s.copy_((flat[offset:offset + s.numel()].view_as(s) / world_size()).to(s.dtype))
        offset += s.numel()
    return bad == 0


@torch.no_grad()
def broadcast_module(model: nn.Module) -> None:
    """Every rank takes rank 0's parameters and buffers."""
    if not active():
        return
    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, 0)


def broadcast_float(value: float, device=None) -> float:
    """Rank 0's ``value`` on every rank (e.g. the validation score only rank 0 computed)."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, 0)
    return float(t)


def sum_floats(values: list[float], device=None) -> list[float]:
    """Element-wise sum of ``values`` over the ranks."""
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
