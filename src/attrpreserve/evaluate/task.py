"""Prediction quality: mAP and F1 of multi-label (sigmoid) models, top-1 of single-label
(softmax) ones.

``scores`` / ``probs`` are ``N x K`` (images x classes; logits or probabilities), ``labels`` is
the ``N x K`` binary ground truth.  Torch tensors and numpy arrays are both accepted.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    label_ranking_average_precision_score,
)

__all__ = ["best_f1_threshold", "mean_average_precision", "per_class_top1",
           "per_image_average_precision", "sample_f1", "top1_accuracy", "top1_agreement"]

# the probability thresholds best_f1_threshold tries
F1_THRESHOLDS = tuple(round(0.01 * i, 2) for i in range(1, 100))


def _to_numpy(x, name: str, dtype=None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.to(torch.float64) if x.is_floating_point() else x
        x = x.numpy()
    x = np.asarray(x, dtype=dtype)
    if x.ndim != 2:
        raise ValueError(f"{name} must be N x K, got shape {x.shape}")
    return x


def _scores_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = _to_numpy(scores, "scores", np.float64)
    y = _to_numpy(labels, "labels")
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in shape")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be binary (0/1 or bool)")
    return s, y.astype(np.int64)


def mean_average_precision(scores, labels) -> tuple[float, list[float]]:
    """Standard multi-label mAP: per-class average precision
    (``sklearn.metrics.average_precision_score`` on column k, i.e. the non-interpolated
    ``sum_n (R_n - R_{n-1}) P_n``), averaged over the classes with at least one positive.

    Returns
    -------
    (mAP, per_class): ``per_class[k]`` is NaN for a class without positives; mAP is NaN when no
    class has a positive.
    """
    s, y = _scores_labels(scores, labels)
    per_class = []
    for k in range(y.shape[1]):
        if y[:, k].sum() == 0:
            per_class.append(float("nan"))
        else:
            per_class.append(float(average_precision_score(y[:, k], s[:, k])))
    present = [v for v in per_class if not np.isnan(v)]
    return (float(np.mean(present)) if present else float("nan")), per_class


def per_image_average_precision(scores, labels) -> float:
    """The paper code's variant, *per-image* AP: ranks the classes of each image
    (``sklearn.metrics.label_ranking_average_precision_score``), mean over images.  Not the
    standard mAP; name it as such.  (sklearn scores an image with no or all labels as 1.)
    """
    s, y = _scores_labels(scores, labels)
    return float(label_ranking_average_precision_score(y, s))


def sample_f1(probs, labels, threshold: float = 0.5) -> float:
    """Sample-averaged F1 of the predictions ``probs >= threshold``
    (``sklearn.metrics.f1_score(average="samples", zero_division=0)``).
    Pass probabilities (threshold 0.5) or logits with ``threshold=0``.
    """
    p, y = _scores_labels(probs, labels)
    pred = (p >= threshold).astype(np.int64)
    return float(f1_score(y, pred, average="samples", zero_division=0))


def best_f1_threshold(probs, labels, thresholds=F1_THRESHOLDS) -> float:
    """The threshold of ``thresholds`` at which :func:`sample_f1` of ``probs`` is highest (ties:
    the one nearest 0.5, then the lower); choose it on a split other than the scored one."""
    p, y = _scores_labels(probs, labels)
    scores = [(sample_f1(p, y, t), -abs(t - 0.5), -t) for t in thresholds]
    return thresholds[max(range(len(scores)), key=scores.__getitem__)]


def top1_accuracy(scores, labels) -> float:
    """Share of the images with at least one positive label whose top-scored class is a
    positive (single-label accuracy; with a teacher's top-1 as the labels, top-1 agreement
    with that teacher). NaN when no image has a label."""
    s, y = _scores_labels(scores, labels)
    has = y.any(axis=1)
    if not has.any():
        return float("nan")
    return float(y[has, s[has].argmax(axis=1)].mean())


def per_class_top1(scores, labels) -> list[float]:
    """Per class ``k``: :func:`top1_accuracy` over the images labelled ``k`` (NaN for a class
    without images)."""
    s, y = _scores_labels(scores, labels)
    hit = y[np.arange(len(y)), s.argmax(axis=1)] if len(y) else np.zeros(0)
    return [float(hit[y[:, k] == 1].mean()) if y[:, k].any() else float("nan")
            for k in range(y.shape[1])]


def top1_agreement(scores_a, scores_b) -> float:
    """Share of images on which two models' top-scored classes are the same."""
    a, b = _to_numpy(scores_a, "scores_a", np.float64), _to_numpy(scores_b, "scores_b", np.float64)
    if a.shape != b.shape:
        raise ValueError(f"scores {a.shape} and {b.shape} differ in shape")
    return float((a.argmax(1) == b.argmax(1)).mean()) if len(a) else float("nan")
