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
class DistillStep:
    """Training step: KD loss against a frozen teacher plus ``lam`` x attribution matching."""

    teacher: nn.Module
    matching: MatchingLoss | None = None
    lam: float = 100.0
    temperature: float = 4.0
    alpha: float = 0.9
    teacher_layer: str | None = None
    student_layer: str | None = None

    def __call__(self, student: nn.Module, images: torch.Tensor, labels: torch.Tensor):
        matcher = AttributionMatcher(self.teacher, student, self.matching,
                                     self.teacher_layer, self.student_layer)
        s_out, t_out, match = matcher(images, labels)
        kd = multilabel_kd_loss(s_out, t_out, labels, self.temperature, self.alpha)
        loss = kd + self.lam * match if self.matching is not None else kd
        return loss, {"kd": kd.detach(), "match": match.detach()}
