"""Quantization-aware training: a fake-quant copy of the teacher fine-tuned at ``bits``, exported
beside its checkpoint as an int8 model. The surgery (prepare, calibrate, freeze, convert,
export) is :mod:`attrpreserve.compress.quantize`; here is the training around it."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .. import state
from ..compress import (convert_int8, export_int8, freeze_qat, int8_cpu, int8_kernel_note,
                        is_qat, prediction_agreement, prepare_qat)
from .base import FineTuning, Loaders, Recipe, option, require

INT8_FILE = "model.int8.safetensors"


@dataclass
class QuantizationOptions:
    bits: int = option(8, "weight bits, 2-8 (activations are 8-bit; the exported model runs "
                          "int8 kernels either way)")

    def __post_init__(self):
        require(2 <= self.bits <= 8, f"bits must be in [2, 8], got {self.bits}")


class _FreezeAt:
    """Wraps a training step; freezes ranges and BN statistics before step number ``at``."""

    def __init__(self, step, at: int | None):
        self.step, self.at, self.calls = step, at, 0

    def __call__(self, model, images, labels):
        if self.at is not None and self.calls == self.at:
            freeze_qat(model)
        self.calls += 1
        return self.step(model, images, labels)


def _restore_frozen(model, step, frozen) -> None:
    if frozen and is_qat(model):
        freeze_qat(model)


# Freezing is a flag outside the state dict: training-state snapshots record it, so a resumed
# run freezes the same way (registered beside the driver that freezes, so it is there whenever
# the driver runs).
state.register_extra("qat_frozen", lambda model, step: bool(getattr(model, "qat_frozen", False)),
                     _restore_frozen)


def quantization_aware_train(model: nn.Module, data: Loaders, finetune: FineTuning,
                             bits: int = 8, act_bits: int = 8, calibration_batches: int = 8,
                             freeze_after: float | None = 0.75, backend: str | None = None):
    """Prepare a fake-quant copy of the float ``model`` and fine-tune it with ``finetune``.

    Ranges are calibrated on ``calibration_batches`` training batches first; after
    ``freeze_after`` of the training steps the ranges and BN statistics freeze (``None``:
    never). The step's teacher may be ``model`` itself: it is never modified. Returns
    ``(qat_model, history)`` with the fine-tuning history plus the settings; convert with
    :func:`~attrpreserve.compress.convert_int8`.
    """
    require(freeze_after is None or 0 <= freeze_after <= 1,
            f"freeze_after must be in [0, 1] or None, got {freeze_after}")
    qat = prepare_qat(model, bits, act_bits, backend,
                      calibration=data.train if calibration_batches else None,
                      calibration_batches=calibration_batches)
    at = None if freeze_after is None else int(
        freeze_after * finetune.train.epochs * len(data.train))
    step = _FreezeAt(finetune.step, at)
    hist = finetune(qat, data, desc=f"qat {bits}-bit", step=step)
    frozen = at is not None and step.calls > at
    history = {**hist.to_dict(), "bits": bits, "act_bits": act_bits, "backend": qat.qat_backend,
               "frozen_at_step": at if frozen else None}
    return qat, history


class Quantization(Recipe):
    """QAT at ``bits``; the checkpoint is the fake-quant model (the form attributions are
    computed on), exported beside it as int8 by :func:`export`.

    The int8 model's agreement with the fake-quant one is measured on the validation data on
    this CPU and recorded with the CPU's int8 features; where they may part (``int8_note``),
    the note is printed too."""

    name, label, Options = "quantization", "quantization", QuantizationOptions
    summary = "quantization-aware training, exported as int8"

    def strength(self, value, rounds=1):
        """The weight bit width."""
        return {"bits": int(value)}

    def run(self, teacher, data, finetune, options):
        student, history = quantization_aware_train(teacher, data, finetune, bits=options.bits)
        agree = prediction_agreement(student, convert_int8(student), data.val)
        cpu = int8_cpu()
        note = int8_kernel_note(student, agree["top1_agreement"], cpu)
        if note:
            print(f"warning: {note}", file=sys.stderr)
        return student, history, {"bits": options.bits, "int8_agreement": agree["agreement"],
                                  "int8_top1_agreement": agree["top1_agreement"],
                                  "int8_max_abs_logit_diff": agree["max_abs_logit_diff"],
                                  "int8_cpu": cpu, "int8_note": note}


def export(student: nn.Module, out: str | Path) -> None:
    """Write what ships besides the checkpoint: the converted int8 model of a fake-quant one."""
    if is_qat(student):
        export_int8(convert_int8(student), Path(out) / INT8_FILE)


def deployed(model: nn.Module) -> nn.Module:
    """The module that ships for ``model``: its int8 conversion if it is fake-quant."""
    return convert_int8(model) if is_qat(model) else model


def deployed_file(checkpoint: str | Path) -> Path:
    """The weights file that ships for a checkpoint folder (int8 export if there is one); a
    model file (an ONNX export) ships as itself."""
    if Path(checkpoint).is_file():
        return Path(checkpoint)
    int8 = Path(checkpoint) / INT8_FILE
    return int8 if int8.is_file() else Path(checkpoint) / "model.safetensors"
