"""Compression recipes (distillation now; pruning and quantization build on the same loop)."""

from .distill import DistillStep, multilabel_kd_loss

__all__ = ["DistillStep", "multilabel_kd_loss"]
