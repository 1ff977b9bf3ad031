"""Knowledge distillation for multi-label classifiers, with optional attribution matching."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..matching import AttributionMatcher, MatchingLoss


def multilabel_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       labels: torch.Tensor | None, temperature: float = 4.0,
                       alpha: float = 0.9) -> torch.Tensor:
    """``alpha T^2 KL(teacher || student) + (1 - alpha) BCE`` over per-class binary distributions.

    Each class is a two-way distribution ``[sigmoid(z/T), 1 - sigmoid(z/T)]``; the KL is averaged
    over batch and classes (method.md). Without labels only the KL term is used.
    """
    t, s = teacher_logits.detach() / temperature, student_logits / temperature
    p_t = torch.sigmoid(t)
    kl = (p_t * (F.logsigmoid(t) - F.logsigmoid(s))
          + (1 - p_t) * (F.logsigmoid(-t) - F.logsigmoid(-s))).mean()
    kd = temperature ** 2 * kl
    if labels is None:
        return kd
    return alpha * kd + (1 - alpha) * F.binary_cross_entropy_with_logits(student_logits, labels)


@dataclass
class MatchedStep:
    """Training step: a task term plus ``lam`` x attribution matching against a frozen teacher.

    Subclasses define ``task(student_logits, teacher_logits, labels) -> (name, loss)``; the
    matcher puts the teacher in eval mode and gives it no gradient.
    """

    teacher: nn.Module
    matching: MatchingLoss | None = None
    lam: float = 100.0
    teacher_layer: str | None = None
    student_layer: str | None = None

    def task(self, s_out, t_out, labels) -> tuple[str, torch.Tensor]:
        raise NotImplementedError

    def __call__(self, student: nn.Module, images: torch.Tensor, labels: torch.Tensor):
        matcher = AttributionMatcher(self.teacher, student, self.matching,
                                     self.teacher_layer, self.student_layer)
        s_out, t_out, match = matcher(images, labels)
        name, task = self.task(s_out, t_out, labels)
        loss = task + self.lam * match if self.matching is not None else task
        return loss, {name: task.detach(), "match": match.detach()}


@dataclass
class DistillStep(MatchedStep):
    """KD loss (binary KL at temperature T, weight alpha, plus BCE) + ``lam`` x matching."""

    temperature: float = 4.0
    alpha: float = 0.9

    def task(self, s_out, t_out, labels):
        return "kd", multilabel_kd_loss(s_out, t_out, labels, self.temperature, self.alpha)
