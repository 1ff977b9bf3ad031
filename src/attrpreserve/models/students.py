"""Random-init students of another architecture than their teacher (distillation across
families, e.g. EfficientNet-Lite2 -> ResNet-18).

Each family's card declares its students (``models.family.Family.students``). A student is a
registry model like any other, so its checkpoints save and rebuild through
``models.checkpoint`` / ``loading``: torchvision ``resnet18`` and ``mobilenet_v3_small`` are
``torchvision_imagenet`` models (ImageNet mean / std inside, matched layer ``layer4`` /
``features.12``, the last conv block's output) and the EfficientNet-Lite variants
``efficientnet_liteN`` (``(x - 127) / 128`` inside, matched layer ``_head_act``), optionally
narrower (``width``). Every one takes [0, 1] images and has a ``num_classes`` single-label head
(softmax distillation). The teacher's and the student's matched layers
differ by name and may differ in size: the matching losses resize the student's map to the
teacher's (``matching.losses.normalized_distance``).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping

from torch import nn

from .family import FAMILIES
from .pretrained import is_timm, parse
from .registry import MODELS, create_model

__all__ = ["STUDENTS", "create_student", "student_for"]


class _Students(Mapping):
    """Student name -> (registry name, fixed keyword arguments): every family card's
    ``students``, read when asked (a family registered later adds its own)."""

    def _all(self) -> dict[str, tuple[str, dict]]:
        return {k: v for family in FAMILIES.values() for k, v in family.students.items()}

    def __getitem__(self, name: str) -> tuple[str, dict]:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


STUDENTS = _Students()


def create_student(arch: str, num_classes: int, input_size: int = 224,
                   width: float = 1.0) -> nn.Module:
    """A random-init student ``arch`` (a key of :data:`STUDENTS`, or ``timm:NAME``) with a
    ``num_classes`` head.

    ``input_size`` is the data's size (recorded in the spec; it fixes the static padding of the
    Lite models). ``width`` (Lite students only) multiplies their block widths."""
    if is_timm(arch):
        arch_name, path = parse(arch)
        if path is not None:
            raise ValueError(f"student {arch!r}: a student starts from random weights; drop "
                             f"'={path}'")
        name, fixed = "timm", {"arch": arch_name}
    elif arch not in STUDENTS:
        raise ValueError(f"unknown student {arch!r}; known: {', '.join(STUDENTS)}, or "
                         "timm:NAME")
    else:
        name, fixed = STUDENTS[arch]
    kwargs = {**fixed, "num_classes": int(num_classes), "input_size": int(input_size)}
    if width != 1.0:
        if "width" not in inspect.signature(MODELS[name]).parameters:
            raise ValueError(f"student {arch!r} has no width option (Lite students have)")
        kwargs["width"] = float(width)
    return create_model(name, **kwargs)


def student_for(teacher: nn.Module, arch: str, width: float = 1.0) -> nn.Module:
    """:func:`create_student` with the teacher's number of classes (its outputs: 10 for a
    teacher restricted to Imagenette's classes) and input size, on the teacher's device."""
    spec = getattr(teacher, "spec", None)
    if spec is None or "num_classes" not in spec["kwargs"]:
        raise ValueError("the teacher must be a registry model (loading.load_model gives one)")
    kwargs = spec["kwargs"]
    student = create_student(arch, kwargs["num_classes"], kwargs.get("input_size", 224), width)
    return student.to(next(teacher.parameters()).device)
