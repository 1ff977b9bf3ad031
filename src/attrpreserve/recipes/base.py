"""What a compression recipe is: a registered object with its options, strength and label.

A recipe turns a frozen teacher into a trained compressed student. It owns

- ``Options``: a dataclass of its settings; each field is declared with
  :func:`~attrpreserve.options.option`, whose help text (and optional flag name and choices)
  the CLI turns into ``attrpreserve compress`` flags, so a new option is written once;
- ``label`` and ``summary``: how reports and ``--help`` name it; ``distils``: whether it
  trains a new student (the pipeline then builds a distillation step) rather than fine-tuning
  a copy of the teacher;
- :meth:`Recipe.strength`: the option values that set its compression strength from one number
  (sweeps and the demo use it);
- :meth:`Recipe.run`: ``(teacher, data, finetune, options) -> (student, history, settings)``,
  ``settings`` being recorded as the checkpoint's ``compression``.

The pipeline loads teacher and data, builds the fine-tuning step once (task loss + distillation
+ lambda x matching, :func:`~attrpreserve.recipes.steps.fine_tuning_step`) and calls ``run``.
"""

from __future__ import annotations

import copy
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, NamedTuple

from torch import nn
from torch.utils.data import DataLoader

from ..engine import History, TrainConfig, fit
from ..options import option, option_flag, require
from ..registry import Registry

__all__ = ["RECIPES", "Recipe", "Loaders", "FineTuning", "option", "option_flag", "in_rounds",
           "trainable_copy", "require"]


class Loaders(NamedTuple):
    """The data a recipe trains on: training batches and validation batches (or ``None``)."""

    train: DataLoader
    val: DataLoader | None


@dataclass
class FineTuning:
    """How every recipe trains: the run's step (built once by the pipeline) and schedule.

    Calling it trains ``model`` with :func:`~attrpreserve.engine.fit` and returns the history;
    ``step`` may be wrapped by a recipe (QAT freezes ranges part-way)."""

    step: Any
    train: TrainConfig = field(default_factory=TrainConfig)
    tag: str = ""  # shown in progress bars (the matching)

    def __call__(self, model: nn.Module, data: Loaders, desc: str, step=None) -> History:
        desc = f"{desc} [{self.tag}]" if self.tag else desc
        return fit(model, data.train, data.val, step or self.step, self.train, desc=desc)


def in_rounds(model: nn.Module, data: Loaders, finetune: FineTuning, rounds: int, surgery,
              record, desc: str) -> list[dict]:
    """``rounds`` x (``surgery(r)`` on ``model`` in place, fine-tune): the pruning recipes'
    loop. Returns one record per round: ``{"round": r, **record(r), "best_val_mAP": ...}``."""
    require(finetune.step.teacher is not model,
            "teacher must be a separate (unpruned) copy of the model")
    require(rounds >= 1, f"rounds must be positive, got {rounds}")
    records = []
    for r in range(1, rounds + 1):
        surgery(r)
        hist = finetune(model, data, desc=f"{desc} {r}")
        records.append({"round": r, **record(r), "best_val_mAP": hist.best_val_mAP})
    return records


def trainable_copy(teacher: nn.Module) -> nn.Module:
    """A student that starts as the teacher (pruning and quantization fine-tune from it)."""
    return copy.deepcopy(teacher).requires_grad_(True)


class Recipe:
    """Base of the compression recipes; subclasses set the class attributes and ``run``."""

    name: ClassVar[str]
    label: ClassVar[str]
    summary: ClassVar[str]  # one line for --help
    Options: ClassVar[type]
    distils: ClassVar[bool] = False

    def options(self, given=None):
        """``given`` as this recipe's ``Options``: ``None`` gives the defaults, a dict (a YAML
        file, an older config) is validated field by field."""
        if isinstance(given, self.Options):
            return given
        if given is None:
            return self.Options()
        if isinstance(given, dict):
            known = {f.name for f in fields(self.Options)}
            unknown = sorted(set(given) - known)
            require(not unknown, f"{self.name} has no option {', '.join(unknown)}; "
                    f"known: {', '.join(sorted(known))}")
            return self.Options(**given)
        raise TypeError(f"{self.name} options must be {self.Options.__name__} or a dict, "
                        f"got {type(given).__name__}")

    def defaults(self) -> dict:
        """``{field: default}`` of the options."""
        return {f.name: f.default for f in fields(self.Options) if f.default is not MISSING}

    def strength(self, value: float, rounds: int = 1) -> dict:
        """Option values that set the compression strength to ``value``."""
        raise NotImplementedError

    def run(self, teacher: nn.Module, data: Loaders, finetune: FineTuning, options):
        """Compress ``teacher``; returns ``(student, history, settings)``."""
        raise NotImplementedError


RECIPES: Registry[Recipe] = Registry("compression method")
