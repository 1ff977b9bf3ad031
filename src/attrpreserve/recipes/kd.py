"""Distillation: train a student from scratch, by default a narrower copy of the teacher's
architecture, or a model of another family (``student``, e.g. EfficientNet-Lite2 -> ResNet-18)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from ..models import MODELS, create_model, is_single_label
from ..models.pretrained import is_timm
from ..models.students import STUDENTS, student_for
from .base import Recipe, option, require


@dataclass
class KDOptions:
    width_divisor: float = option(4.0, "student widths = teacher widths / R (a student of the "
                                       "teacher's own family)")
    student: str = option("", "a random-init student of another family instead: "
                              + ", ".join(STUDENTS) + " or timm:NAME (its own matched layer) "
                              "(default: none, a student of the teacher's own family)")
    student_width: float = option(1.0, "--student efficientnet-lite*: block width multiplier")

    def __post_init__(self):
        require(self.width_divisor > 0, f"width_divisor must be > 0, got {self.width_divisor}")
        require(not self.student or self.student in STUDENTS or is_timm(self.student),
                f"unknown student {self.student!r}; known: {', '.join(STUDENTS)}, or timm:NAME")
        require(self.student_width > 0, f"student_width must be > 0, got {self.student_width}")


class Distillation(Recipe):
    """Distil into the teacher's architecture with every width divided by ``width_divisor``,
    or into a random-init ``student`` of another family."""

    name, label, Options, distils = "kd", "distillation", KDOptions, True
    summary = "distil into a narrower student (or --student of another family)"

    def strength(self, value, rounds=1):
        return {"width_divisor": float(value)}

    def run(self, teacher, data, finetune, options):
        student = self._student(teacher, finetune, options)
        history = finetune(student, data, desc="kd").to_dict()
        step = finetune.step
        settings = {"temperature": step.temperature, "alpha": step.alpha}
        if options.student:
            return student, history, {"student": options.student,
                                      "student_width": options.student_width, **settings}
        return student, history, {"width_divisor": options.width_divisor, **settings}

    @staticmethod
    def _student(teacher, finetune, options):
        if options.student:
            require(is_single_label(teacher),
                    "--student is for single-label (softmax, pretrained:) teachers; distil a "
                    "multi-label teacher into its own family with --width-divisor")
            require(finetune.step.student_layer is None,
                    "--layer names the matched layer of teacher and student alike; with "
                    "--student leave it unset (each model uses its own matched layer)")
            return student_for(teacher, options.student, options.student_width)
        spec = teacher.spec
        require("width_divisor" in inspect.signature(MODELS[spec["name"]]).parameters,
                f"kd needs a model family with a width divisor (vgg, vgg16) or --student; "
                f"{spec['name']!r} has none")
        student = create_model(spec["name"],
                               **{**spec["kwargs"], "width_divisor": options.width_divisor})
        return student.to(next(teacher.parameters()).device)
