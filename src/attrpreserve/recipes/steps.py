"""The fine-tuning steps every recipe trains with: a task term plus ``lam`` x attribution
matching against the frozen teacher. :func:`fine_tuning_step` picks the step for a teacher and a
recipe; the pipeline builds it once per run and hands it to the recipe.

Task terms: multi-label teachers fine-tune pruned and quantized students on their labels (BCE,
:class:`LabelStep`) and distil narrower students (binary KD, :class:`DistillStep`);
single-label (softmax, ``pretrained:``) teachers always distil with cross entropy on labeled
rows (:class:`SoftmaxDistillStep`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..matching import AttributionMatcher, MatchingLoss
from ..matching.losses import matched_layers
from ..models.family import is_single_label

__all__ = ["MatchedStep", "LabelStep", "DistillStep", "SoftmaxDistillStep",
           "multilabel_kd_loss", "softmax_kd_loss", "fine_tuning_step", "TEMPERATURE", "ALPHA"]

# Distillation's defaults, defined here once (the steps, ``CompressConfig`` and the CLI read
# them): temperature T and the weight alpha of the KD term (1 - alpha weighs the labels).
TEMPERATURE, ALPHA = 4.0, 0.9


def multilabel_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       labels: torch.Tensor | None, temperature: float = TEMPERATURE,
                       alpha: float = ALPHA) -> torch.Tensor:
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

    def __post_init__(self):
        matched_layers(self.matching, self.teacher_layer, self.student_layer)  # fail early

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
class LabelStep(MatchedStep):
    """Multi-label BCE on the labels + ``lam`` x matching (pruning and QAT fine-tuning)."""

    def task(self, s_out, t_out, labels):
        return "bce", F.binary_cross_entropy_with_logits(s_out, labels)


@dataclass
class DistillStep(MatchedStep):
    """KD loss (binary KL at temperature T, weight alpha, plus BCE) + ``lam`` x matching."""

    temperature: float = TEMPERATURE
    alpha: float = ALPHA

    def task(self, s_out, t_out, labels):
        return "kd", multilabel_kd_loss(s_out, t_out, labels, self.temperature, self.alpha)


def softmax_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    labels: torch.Tensor | None = None, temperature: float = TEMPERATURE,
                    alpha: float = ALPHA) -> torch.Tensor:
    """Distillation for single-label (softmax) classifiers such as ImageNet models.

    ``T^2 KL(softmax(t/T) || softmax(s/T))`` (batch mean) on every row; rows with a label
    (multi-hot ``labels``, normalised into a target distribution) add ``(1 - alpha)`` x cross
    entropy, the KD term then weighing ``alpha``. Without labeled rows (unlabeled photos) the
    loss is the KD term alone: the teacher is the only supervision.
    """
    t = teacher_logits.detach() / temperature
    kd = F.kl_div(F.log_softmax(student_logits / temperature, 1), F.log_softmax(t, 1),
                  reduction="batchmean", log_target=True) * temperature ** 2
    rows = labels.sum(1) > 0 if labels is not None and labels.numel() else None
    if rows is None or not bool(rows.any()):
        return kd
    target = labels[rows] / labels[rows].sum(1, keepdim=True)
    return alpha * kd + (1 - alpha) * F.cross_entropy(student_logits[rows], target)


@dataclass
class SoftmaxDistillStep(DistillStep):
    """Step of a single-label (softmax) model: :func:`softmax_kd_loss` + ``lam`` x matching."""

    def task(self, s_out, t_out, labels):
        return "kd", softmax_kd_loss(s_out, t_out, labels, self.temperature, self.alpha)


def fine_tuning_step(teacher: nn.Module, matching: MatchingLoss | None, lam: float,
                     layer: str | None = None, temperature: float = TEMPERATURE, alpha: float = ALPHA,
                     distils: bool = False) -> MatchedStep:
    """The step a run fine-tunes with: ``SoftmaxDistillStep`` for a single-label teacher, else
    ``DistillStep`` for a recipe that ``distils`` (a new student) and ``LabelStep`` for one that
    fine-tunes a copy of the teacher. ``layer`` is matched in teacher and student alike."""
    if is_single_label(teacher):
        return SoftmaxDistillStep(teacher, matching, lam, layer, layer, temperature, alpha)
    if distils:
        return DistillStep(teacher, matching, lam, layer, layer, temperature, alpha)
    return LabelStep(teacher, matching, lam, layer, layer)
