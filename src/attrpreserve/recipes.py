"""Compression recipes by name: each turns a frozen teacher into a trained compressed student.

A recipe is ``fn(cfg, teacher, train_loader, val_loader, matcher) -> (student, history,
settings)``; ``pipeline.compress`` loads the teacher and data, builds the matcher, runs the
recipe and saves the student with ``settings`` as its ``compression`` record. Every recipe
fine-tunes with its task term plus ``cfg.lam`` x matching against the unmodified teacher.
"""

from __future__ import annotations

import copy
from typing import Callable

from torch import nn

from .compress import DistillStep, finalize, unstructured_prune
from .engine import fit
from .models import create_model

RECIPES: dict[str, Callable] = {}


def register_recipe(name: str):
    """Decorator adding a compression recipe to ``RECIPES``."""
    def wrap(fn):
        RECIPES[name] = fn
        return fn
    return wrap


def _trainable_copy(teacher: nn.Module) -> nn.Module:
    """A student that starts as the teacher (pruning and quantization fine-tune from it)."""
    student = copy.deepcopy(teacher)
    return student.requires_grad_(True)


@register_recipe("kd")
def distill(cfg, teacher, train_dl, val_dl, matcher):
    """Distil into the teacher's architecture with every width divided by ``width_divisor``."""
    spec = teacher.spec
    student = create_model(spec["name"], **{**spec["kwargs"], "width_divisor": cfg.width_divisor})
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
                                student_layer=cfg.layer)
    finalize(student)
    history = {"rounds": rounds, "best_epoch": None,  # selected within each round
               "best_val_mAP": rounds[-1]["best_val_mAP"]}
    return student, history, {"rounds": cfg.rounds, "per_round": cfg.per_round,
                              "sparsity": rounds[-1]["sparsity"]}


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
    raise ValueError(f"unknown compression method {method!r}; available: {', '.join(RECIPES)}")
