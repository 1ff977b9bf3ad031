"""Iterative global magnitude pruning with fine-tuning (the paper's unstructured setting).

Each round prunes a fraction of the *remaining* conv weights by global L1 magnitude
(``torch.nn.utils.prune``), then fine-tunes with the engine's ``fit`` using a BCE task loss plus
``lam`` x attribution matching against the unpruned, frozen teacher.  Masks stay enforced during
fine-tuning: the reparametrisation ``weight = weight_orig * weight_mask`` is recomputed by a
forward pre-hook, so the optimizer only moves ``weight_orig`` and pruned entries stay zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune
from torch.utils.data import DataLoader

from ..engine import TrainConfig, fit
from ..matching import MatchingLoss
from .distill import MatchedStep

__all__ = ["prunable", "global_magnitude_prune", "sparsity", "schedule", "PruneFinetuneStep",
           "unstructured_prune", "finalize"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable(model: nn.Module, include_linear: bool = False) -> list[tuple[nn.Module, str]]:
    """``(module, "weight")`` for every conv layer (and Linear layer if ``include_linear``)."""
    kinds = _CONV + ((nn.Linear,) if include_linear else ())
    return [(m, "weight") for m in model.modules() if isinstance(m, kinds)]


def effective_weight(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """``orig * mask`` for a pruned parameter (fresh, not the possibly stale attribute), else it."""
    if hasattr(module, name + "_orig") and hasattr(module, name + "_mask"):
        return getattr(module, name + "_orig") * getattr(module, name + "_mask")
    return getattr(module, name)


def global_magnitude_prune(model: nn.Module, amount: float, include_linear: bool = False) -> None:
    """Prune ``amount`` of the still-unpruned prunable weights, by global L1 magnitude.

    ``global_unstructured`` applies a float ``amount`` to the entries whose mask is still 1
    (``PruningContainer`` slices them out), so repeated calls with 0.2 remove 20% of what remains
    each round: ``round(0.2 * remaining)`` weights.
    """
    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"amount must be in [0, 1], got {amount}")
    params = prunable(model, include_linear)
    if not params:
        raise ValueError("model has no prunable layers")
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=float(amount))


@torch.no_grad()
def sparsity(model: nn.Module, include_linear: bool = False) -> float:
    """Fraction of exactly-zero effective weights over the prunable parameters."""
    zeros = total = 0
    for module, name in prunable(model, include_linear):
        w = effective_weight(module, name)
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / total if total else 0.0


def schedule(rounds: int, per_round: float = 0.2) -> list[float]:
    """Cumulative target sparsity after each round: ``1 - (1 - per_round)^r``, r = 1..rounds."""
    return [1.0 - (1.0 - per_round) ** r for r in range(1, rounds + 1)]


@dataclass
class PruneFinetuneStep(MatchedStep):
    """Fine-tuning step of the pruning recipe: multi-label BCE + ``lam`` x matching."""

    def task(self, s_out, t_out, labels):
        return "bce", F.binary_cross_entropy_with_logits(s_out, labels)


def unstructured_prune(model: nn.Module, teacher: nn.Module, train_loader: DataLoader,
                       val_loader: DataLoader | None, rounds: int, per_round: float = 0.2,
                       finetune_cfg: TrainConfig | None = None,
                       matching: MatchingLoss | None = None, lam: float = 100.0,
                       include_linear: bool = False, teacher_layer: str | None = None,
                       student_layer: str | None = None,
                       step: MatchedStep | None = None) -> list[dict]:
    """``rounds`` x (prune ``per_round`` of the remaining weights, fine-tune with ``fit``).

    ``model`` is pruned in place and keeps its masks (call ``finalize`` before saving); the
    teacher is never modified. Fine-tuning uses ``step`` when given (e.g. a
    ``SoftmaxDistillStep`` for ImageNet models; it then carries teacher, matching and layers),
    else BCE + ``lam`` x ``matching``. Returns one record per round:
    ``{round, target, sparsity, best_val_mAP}``.
    """
    if teacher is model:
        raise ValueError("teacher must be a separate (unpruned) copy of the model")
    step = step or PruneFinetuneStep(teacher, matching, lam, teacher_layer, student_layer)
    records = []
    for r, target in enumerate(schedule(rounds, per_round), start=1):
        global_magnitude_prune(model, per_round, include_linear)
        hist = fit(model, train_loader, val_loader, step, finetune_cfg, desc=f"prune round {r}")
        records.append({"round": r, "target": target,
                        "sparsity": sparsity(model, include_linear),
                        "best_val_mAP": hist.best_val_mAP})
    return records


def finalize(model: nn.Module) -> nn.Module:
    """Make every pruning permanent (``prune.remove``): plain weights with exact zeros.

    Needed before ``save_checkpoint`` (the state dict then has the architecture's keys only) and
    for ``count_nonzero_params`` on the plain model.
    """
    for module in model.modules():
        for name in [n[: -len("_mask")] for n, _ in module.named_buffers(recurse=False)
                     if n.endswith("_mask")]:
            if hasattr(module, name + "_orig"):
                prune.remove(module, name)
    return model
