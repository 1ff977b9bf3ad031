"""Compression recipes' building blocks: distillation, structured and unstructured pruning,
quantization-aware training; each fine-tunes with the same attribution-matching step."""

from .distill import (DistillStep, MatchedStep, SoftmaxDistillStep, multilabel_kd_loss,
                      softmax_kd_loss)
from .quantize import (calibrate, compare_cost, convert_int8, export_int8, freeze_qat, int8_bytes,
                       int8_cpu, int8_kernel_note, int16_safe_weight, is_qat,
                       prediction_agreement, prepare_qat, quantization_aware_train,
                       read_int8_state)
from .structured import (IMPORTANCES, paper_layers, paper_rates, prune_channels,
                         register_importance, structured_prune)
from .unstructured import (PruneFinetuneStep, finalize, global_magnitude_prune, prunable,
                           schedule, sparsity, unstructured_prune)

__all__ = ["DistillStep", "MatchedStep", "SoftmaxDistillStep", "multilabel_kd_loss",
           "softmax_kd_loss",
           "calibrate", "compare_cost", "convert_int8", "export_int8", "freeze_qat",
           "int8_bytes", "int8_cpu", "int8_kernel_note", "int16_safe_weight", "is_qat",
           "prediction_agreement", "prepare_qat",
           "quantization_aware_train", "read_int8_state",
           "IMPORTANCES", "paper_layers", "paper_rates", "prune_channels", "register_importance",
           "structured_prune",
           "PruneFinetuneStep", "finalize", "global_magnitude_prune", "prunable", "schedule",
           "sparsity", "unstructured_prune"]
