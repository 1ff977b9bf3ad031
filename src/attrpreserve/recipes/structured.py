"""Structured pruning: remove whole conv filters (L1 norm, Li et al.; the paper's setting) and
fine-tune, one-shot or in rounds. The surgery is :mod:`attrpreserve.compress.structured`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..compress import IMPORTANCES, conv_channels, example_input, n_pruned, paper_rates
from ..compress import pruning_units, remove_filters, remove_units, resolve_rates
from ..evaluate.cost import count_macs, count_params
from .base import FineTuning, Loaders, Recipe, in_rounds, option, require, trainable_copy


@dataclass
class StructuredOptions:
    rate: float = option(0.5, "fraction of each pruned conv's filters removed (paper 0.7); a "
                              "Vision Transformer: of each block's heads and MLP channels")
    prune_layers: str = option("all", "prune every conv, or the paper's first + last six convs",
                               choices=("all", "paper"))
    importance: str = option("l1", "filter ranking (l1 = Li et al.; l2, fpgm, bn_scale, random)")
    rounds: int = option(1, "1 = one-shot (paper); N = N prune+fine-tune rounds",
                         flag="--structured-rounds")

    def __post_init__(self):
        require(0 <= self.rate < 1, f"rate must be in [0, 1), got {self.rate}")
        require(self.prune_layers in ("all", "paper"),
                f"prune_layers must be 'all' or 'paper', got {self.prune_layers!r}")
        IMPORTANCES.check(self.importance)
        require(self.rounds >= 1, f"structured_rounds must be positive, got {self.rounds}")


def structured_prune(model: nn.Module, data: Loaders, finetune: FineTuning, rates,
                     rounds: int = 1, importance="l1", example: torch.Tensor | None = None,
                     round_to: int | None = None) -> list[dict]:
    """``rounds`` x (remove filters, fine-tune): one-shot when ``rounds == 1``.

    After round ``r`` each rated conv has lost ``n_pruned(C0, rate * r / rounds)`` of its
    original ``C0`` filters (a linear schedule ending at ``rates``). Returns one record per
    round: ``{round, target, params, macs, best_val_mAP}`` (``target``: the share of the final
    rates reached). ``model`` is pruned in place; the step's teacher is never modified.
    """
    example = example_input(model, example)
    units = pruning_units(model)
    if units:  # a ViT: its heads and MLP channels instead of conv filters, the same schedule
        require(not isinstance(rates, dict) and importance == "l1",
                "a Vision Transformer prunes the heads and MLP channels of every block by "
                "their L1 norm: use --prune-layers all and --importance l1")
        rates = {name: float(rates) for name in units}

        def surgery(r: int) -> None:
            remove_units(model, {n: units[n] - n_pruned(units[n], rate * r / rounds, round_to)
                                 for n, rate in rates.items()})
        return in_rounds(model, data, finetune, rounds, surgery,
                         lambda r: {"target": r / rounds, "params": count_params(model),
                                    "units": pruning_units(model),
                                    "macs": count_macs(model, (1, *example.shape[1:]))},
                         desc="structured round")
    rates = resolve_rates(model, rates)
    base = conv_channels(model)

    def surgery(r: int) -> None:
        now = conv_channels(model)
        remove_filters(model, {n: n_pruned(base[n], rate * r / rounds, round_to)
                               - (base[n] - now[n]) for n, rate in rates.items()},
                       importance, example)

    return in_rounds(model, data, finetune, rounds, surgery,
                     lambda r: {"target": r / rounds, "params": count_params(model),
                                "macs": count_macs(model, (1, *example.shape[1:]))},
                     desc="structured round")


class StructuredPruning(Recipe):
    """L1-norm filter pruning at ``rate`` (every conv, or the paper's layers), fine-tuned."""

    name, label, Options = "structured", "structured pruning", StructuredOptions
    summary = "remove whole conv filters (a ViT: heads and MLP channels; L1 norm) and fine-tune"

    def strength(self, value, rounds=1):
        """The filter rate."""
        return {"rate": float(value)}

    def run(self, teacher, data, finetune, options):
        student = trainable_copy(teacher)
        rates = paper_rates(student, options.rate) if options.prune_layers == "paper" \
            else options.rate
        rounds = structured_prune(student, data, finetune, rates, options.rounds,
                                  options.importance)
        history = {"rounds": rounds, "best_epoch": None,  # selected within each round
                   "best_val_mAP": rounds[-1]["best_val_mAP"]}
        return student, history, {"rate": options.rate, "prune_layers": options.prune_layers,
                                  "importance": options.importance, "rounds": options.rounds,
                                  "params": rounds[-1]["params"], "macs": rounds[-1]["macs"]}
