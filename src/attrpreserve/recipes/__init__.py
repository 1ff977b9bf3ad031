"""Compression recipes by name: each turns a frozen teacher into a trained compressed student.

A recipe is one registered :class:`~attrpreserve.recipes.base.Recipe` object in one file (its
options, strength, label and ``run``); registering it below is all that adds it to the CLI, the
pipeline and the reports. The fine-tuning steps they share are in :mod:`.steps`.
"""

from .base import RECIPES, FineTuning, Loaders, Recipe, option, option_flag, trainable_copy
from .kd import Distillation
from .quantization import (INT8_FILE, Quantization, deployed, deployed_file, export,
                           quantization_aware_train)
from .steps import (DistillStep, LabelStep, MatchedStep, SoftmaxDistillStep, fine_tuning_step,
                    multilabel_kd_loss, softmax_kd_loss)
from .structured import StructuredPruning, structured_prune
from .unstructured import UnstructuredPruning, unstructured_prune

for _recipe in (Distillation(), StructuredPruning(), UnstructuredPruning(), Quantization()):
    RECIPES.register(_recipe.name, _recipe, label=_recipe.label)

__all__ = ["RECIPES", "FineTuning", "Loaders", "Recipe", "option", "option_flag",
           "trainable_copy", "INT8_FILE", "deployed", "deployed_file", "export",
           "quantization_aware_train", "structured_prune", "unstructured_prune",
           "DistillStep", "LabelStep", "MatchedStep", "SoftmaxDistillStep", "fine_tuning_step",
           "multilabel_kd_loss", "softmax_kd_loss"]
