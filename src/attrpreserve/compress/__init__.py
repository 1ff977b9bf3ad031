"""Compression recipes (distillation now; pruning and quantization build on the same loop)."""

from .distill import DistillStep, multilabel_kd_loss
from .unstructured import (PruneFinetuneStep, finalize, global_magnitude_prune, prunable,
                           schedule, sparsity, unstructured_prune)

__all__ = ["DistillStep", "multilabel_kd_loss",
           "PruneFinetuneStep", "finalize", "global_magnitude_prune", "prunable", "schedule",
           "sparsity", "unstructured_prune"]
