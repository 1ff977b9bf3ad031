"""Compression recipes by name: each turns a frozen teacher into a trained compressed student.

A recipe is ``fn(cfg, teacher, train_loader, val_loader, matcher) -> (student, history,
settings)``; ``pipeline.compress`` loads the teacher and data, builds the matcher, runs the
recipe and saves the student with ``settings`` as its ``compression`` record. Every recipe
fine-tunes with its task term plus ``cfg.lam`` x matching against the unmodified teacher.
"""

from __future__ import annotations

import copy
import inspect
import sys
from pathlib import Path
from typing import Callable

from torch import nn

from .compress import (DistillStep, SoftmaxDistillStep, convert_int8, export_int8, finalize,
                       int8_cpu, int8_kernel_note, is_qat, paper_rates,
                       prediction_agreement,
                       quantization_aware_train, structured_prune, unstructured_prune)
from .engine import fit
from .models import MODELS, create_model
from .registry import Registry

RECIPES: Registry[Callable] = Registry("compression method")


def register_recipe(name: str):
    """Decorator adding a compression recipe to ``RECIPES``."""
    return RECIPES.register(name)


def _trainable_copy(teacher: nn.Module) -> nn.Module:
    """A student that starts as the teacher (pruning and quantization fine-tune from it)."""
    student = copy.deepcopy(teacher)
    return student.requires_grad_(True)


def _softmax_step(cfg, teacher: nn.Module, matcher):
    """The fine-tuning step of a single-label (softmax, ``pretrained:``) teacher, else None
    (the recipes' default multi-label BCE step)."""
    if not getattr(teacher, "single_label", False):
        return None
    return SoftmaxDistillStep(teacher, matcher, cfg.lam, cfg.layer, cfg.layer, cfg.temperature,
                              cfg.alpha)


@register_recipe("kd")
def distill(cfg, teacher, train_dl, val_dl, matcher):
    """Distil into the teacher's architecture with every width divided by ``width_divisor``."""
    spec = teacher.spec
    if "width_divisor" not in inspect.signature(MODELS[spec["name"]]).parameters:
        raise ValueError(f"kd needs a model family with a width divisor (vgg, vgg16); "
                         f"{spec['name']!r} has none: use structured or unstructured")
    student = create_model(spec["name"], **{**spec["kwargs"], "width_divisor": cfg.width_divisor})
    student.to(next(teacher.parameters()).device)
    step = DistillStep(teacher, matcher, cfg.lam, teacher_layer=cfg.layer,
                       student_layer=cfg.layer, temperature=cfg.temperature, alpha=cfg.alpha)
    history = fit(student, train_dl, val_dl, step, cfg.train,
                  desc=f"kd+{cfg.matching}").to_dict()
    return student, history, {"width_divisor": cfg.width_divisor,
                              "temperature": cfg.temperature, "alpha": cfg.alpha}


@register_recipe("unstructured")
def unstructured(cfg, teacher, train_dl, val_dl, matcher):
    """Global magnitude pruning of conv weights, ``rounds`` x ``per_round``, fine-tuned each round."""
    student = _trainable_copy(teacher)
    rounds = unstructured_prune(student, teacher, train_dl, val_dl, cfg.rounds, cfg.per_round,
                                cfg.train, matcher, cfg.lam, teacher_layer=cfg.layer,
                                student_layer=cfg.layer,
                                step=_softmax_step(cfg, teacher, matcher))
    finalize(student)
    history = {"rounds": rounds, "best_epoch": None,  # selected within each round
               "best_val_mAP": rounds[-1]["best_val_mAP"]}
    return student, history, {"rounds": cfg.rounds, "per_round": cfg.per_round,
                              "sparsity": rounds[-1]["sparsity"]}


@register_recipe("structured")
def structured(cfg, teacher, train_dl, val_dl, matcher):
    """L1-norm filter pruning at ``rate`` (every conv, or the paper's layers), fine-tuned."""
    student = _trainable_copy(teacher)
    rates = paper_rates(student, cfg.rate) if cfg.prune_layers == "paper" else cfg.rate
    rounds = structured_prune(student, teacher, train_dl, val_dl, rates, cfg.structured_rounds,
                              cfg.train, matcher, cfg.lam, cfg.importance,
                              teacher_layer=cfg.layer, student_layer=cfg.layer,
                              step=_softmax_step(cfg, teacher, matcher))
    history = {"rounds": rounds, "best_epoch": None,  # selected within each round
               "best_val_mAP": rounds[-1]["best_val_mAP"]}
    return student, history, {"rate": cfg.rate, "prune_layers": cfg.prune_layers,
                              "importance": cfg.importance, "rounds": cfg.structured_rounds,
                              "params": rounds[-1]["params"], "macs": rounds[-1]["macs"]}


INT8_FILE = "model.int8.safetensors"


@register_recipe("quantization")
def quantization(cfg, teacher, train_dl, val_dl, matcher):
    """Quantization-aware training at ``bits``; the checkpoint is the fake-quant model (the
    form attributions are computed on), exported beside it as int8 by :func:`export`.

    The int8 model's agreement with the fake-quant one is measured on the validation data on
    this CPU and recorded with the CPU's int8 features; where they may part (``int8_note``),
    the note is printed too."""
    student, history = quantization_aware_train(
        teacher, teacher, train_dl, val_dl, bits=cfg.bits, act_bits=8,
        finetune_cfg=cfg.train, matching=matcher, lam=cfg.lam, teacher_layer=cfg.layer,
        student_layer=cfg.layer, step=_softmax_step(cfg, teacher, matcher))
    agree = prediction_agreement(student, convert_int8(student), val_dl)
    cpu = int8_cpu()
    note = int8_kernel_note(student, agree["top1_agreement"], cpu)
    if note:
        print(f"warning: {note}", file=sys.stderr)
    return student, history, {"bits": cfg.bits, "int8_agreement": agree["agreement"],
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
    """The weights file that ships for a checkpoint folder (int8 export if there is one)."""
    int8 = Path(checkpoint) / INT8_FILE
    return int8 if int8.is_file() else Path(checkpoint) / "model.safetensors"


def strength(method: str, value: float, rounds: int = 1) -> dict:
    """``CompressConfig`` fields that set a recipe's compression strength to ``value``.

    kd: width divisor; structured: filter rate; unstructured: final sparsity reached in
    ``rounds`` equal rounds; quantization: bit width.
    """
    if method == "kd":
        return {"width_divisor": float(value)}
    if method == "structured":
        return {"rate": float(value)}
    if method == "unstructured":
        return {"rounds": rounds, "per_round": 1.0 - (1.0 - float(value)) ** (1.0 / rounds)}
    if method == "quantization":
        return {"bits": int(value)}
    raise RECIPES.unknown(method)
