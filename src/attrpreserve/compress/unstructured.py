"""Global magnitude pruning masks (the paper's unstructured setting), the surgery only.

Each call prunes a fraction of the *remaining* conv weights (and the Linear layers a family card
names, :func:`prunable`) by global L1 magnitude
(``torch.nn.utils.prune``); the recipe (``recipes.unstructured``) fine-tunes between calls.
Masks stay enforced during fine-tuning: the reparametrisation ``weight = weight_orig *
weight_mask`` is recomputed by a forward pre-hook, so the optimizer only moves ``weight_orig`` and
pruned entries stay zero. :func:`finalize` makes them permanent.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

from ..models.family import family_of

__all__ = ["prunable", "global_magnitude_prune", "sparsity", "schedule", "finalize"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable(model: nn.Module, include_linear: bool = False) -> list[tuple[nn.Module, str]]:
    """``(module, "weight")`` for every conv layer (and Linear layer if ``include_linear``),
    plus the layers the model's family card adds (``magnitude_layers``: a Vision
    Transformer's attention and MLP Linear layers, whose weights are most of the model)."""
    kinds = _CONV + ((nn.Linear,) if include_linear else ())
    layers = [m for m in model.modules() if isinstance(m, kinds)]
    family = family_of(model)
    if family is not None and family.magnitude_layers is not None:
        layers += [m for m in family.magnitude_layers(model) if m not in layers]
    return [(m, "weight") for m in layers]


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
