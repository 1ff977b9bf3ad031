"""Model surgery of the compression recipes: filter removal (structured), magnitude masks
(unstructured), fake-quant preparation and int8 conversion (quantization). No training here: the
recipes (:mod:`attrpreserve.recipes`) fine-tune around these operations."""

from .quantize import (calibrate, compare_cost, convert_int8, export_int8, freeze_qat, int8_bytes,
                       int8_cpu, int8_kernel_note, int16_safe_weight, is_qat,
                       prediction_agreement, prepare_qat, read_int8_state)
from .structured import (IMPORTANCES, conv_channels, example_input, n_pruned, paper_layers,
                         paper_rates, prune_channels, pruning_units, register_importance,
                         remove_filters, remove_units, resolve_rates)
from .unstructured import finalize, global_magnitude_prune, prunable, schedule, sparsity

__all__ = ["calibrate", "compare_cost", "convert_int8", "export_int8", "freeze_qat",
           "int8_bytes", "int8_cpu", "int8_kernel_note", "int16_safe_weight", "is_qat",
           "prediction_agreement", "prepare_qat", "read_int8_state",
           "IMPORTANCES", "conv_channels", "example_input", "n_pruned", "paper_layers",
           "paper_rates", "prune_channels", "pruning_units", "register_importance",
           "remove_filters", "remove_units", "resolve_rates",
           "finalize", "global_magnitude_prune", "prunable", "schedule", "sparsity"]
