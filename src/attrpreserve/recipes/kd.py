"""Distillation: train a narrower copy of the teacher's architecture from scratch."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from ..models import MODELS, create_model
from .base import Recipe, option, require


@dataclass
class KDOptions:
    width_divisor: float = option(4.0, "student widths = teacher widths / R")

    def __post_init__(self):
        require(self.width_divisor > 0, f"width_divisor must be > 0, got {self.width_divisor}")


class Distillation(Recipe):
    """Distil into the teacher's architecture with every width divided by ``width_divisor``."""

    name, label, Options, distils = "kd", "distillation", KDOptions, True
    summary = "distil into a narrower student"

    def strength(self, value, rounds=1):
        return {"width_divisor": float(value)}

    def run(self, teacher, data, finetune, options):
        spec = teacher.spec
        require("width_divisor" in inspect.signature(MODELS[spec["name"]]).parameters,
                f"kd needs a model family with a width divisor (vgg, vgg16); {spec['name']!r} "
                "has none: use structured or unstructured")
        student = create_model(spec["name"],
                               **{**spec["kwargs"], "width_divisor": options.width_divisor})
        student.to(next(teacher.parameters()).device)
        history = finetune(student, data, desc="kd").to_dict()
        step = finetune.step
        return student, history, {"width_divisor": options.width_divisor,
                                  "temperature": step.temperature, "alpha": step.alpha}
