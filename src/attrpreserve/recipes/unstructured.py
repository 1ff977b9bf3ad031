"""Unstructured pruning: global magnitude pruning of conv weights (and a Vision Transformer's
block Linear layers) in rounds, fine-tuned after each (the paper's unstructured setting). Masks stay enforced during fine-tuning (see
:mod:`attrpreserve.compress.unstructured`) and are made permanent at the end."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..compress import finalize, global_magnitude_prune, schedule, sparsity
from .base import FineTuning, Loaders, Recipe, in_rounds, option, require, trainable_copy


@dataclass
class UnstructuredOptions:
    rounds: int = option(3, "pruning rounds, each followed by --epochs of fine-tuning")
    per_round: float = option(0.2, "fraction of the remaining weights pruned per round")

    def __post_init__(self):
        require(self.rounds >= 1, f"rounds must be positive, got {self.rounds}")
        require(0 <= self.per_round < 1, f"per_round must be in [0, 1), got {self.per_round}")


def unstructured_prune(model: nn.Module, data: Loaders, finetune: FineTuning, rounds: int,
                       per_round: float = 0.2, include_linear: bool = False) -> list[dict]:
    """``rounds`` x (prune ``per_round`` of the remaining weights, fine-tune).

    ``model`` is pruned in place and keeps its masks (call ``finalize`` before saving); the
    step's teacher is never modified. Returns one record per round:
    ``{round, target, sparsity, best_val_mAP}``.
    """
    targets = schedule(rounds, per_round)
    return in_rounds(model, data, finetune, rounds,
                     lambda r: global_magnitude_prune(model, per_round, include_linear),
                     lambda r: {"target": targets[r - 1],
                                "sparsity": sparsity(model, include_linear)},
                     desc="prune round")


class UnstructuredPruning(Recipe):
    """Global magnitude pruning of conv weights, ``rounds`` x ``per_round``."""

    name, label, Options = "unstructured", "unstructured pruning", UnstructuredOptions
    summary = "global magnitude pruning of conv weights in rounds, fine-tuned after each"

    def strength(self, value, rounds=1):
        """Final sparsity ``value`` reached in ``rounds`` equal rounds."""
        return {"rounds": rounds, "per_round": 1.0 - (1.0 - float(value)) ** (1.0 / rounds)}

    def run(self, teacher, data, finetune, options):
        student = trainable_copy(teacher)
        rounds = unstructured_prune(student, data, finetune, options.rounds, options.per_round)
        finalize(student)
        history = {"rounds": rounds, "best_epoch": None,  # selected within each round
                   "best_val_mAP": rounds[-1]["best_val_mAP"]}
        return student, history, {"rounds": options.rounds, "per_round": options.per_round,
                                  "sparsity": rounds[-1]["sparsity"]}
