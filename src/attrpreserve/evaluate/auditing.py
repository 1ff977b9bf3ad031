"""Audit: how far did model B's explanations move from model A's, and where?

``audit(model_a, model_b, loader)`` works for any two torch models (B is usually a compressed
A).  It runs the streaming evaluator's pass (:func:`.runner.collect_pairs`) once with A as the
reference and reports, per explainer:

* agreement of B's maps with A's, overall and per class, with bootstrap CIs over images;
* localisation of each model against the masks and the paired deltas B - A with CIs (skipped
  when the loader has no masks), optionally the same for RISE deletion / insertion AUC;
* one row per image and the images whose explanations moved most ("explanation forgotten");
* whether agreeing predictions hide disagreeing explanations.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .runner import (
    AGREEMENT,
    ARGMAX_TOLERANCE,
    DEFINITIONS,
    FAITHFULNESS,
    LOCALIZATION,
    collect_pairs,
    nan_to_none,
)
from .stats import bootstrap_columns, group_means, percentile_ci
from .task import mean_average_precision, sample_f1, top1_agreement

__all__ = ["audit", "LOW_SPEARMAN"]

LOW_SPEARMAN = 0.5
"""A pair's explanations disagree when their Spearman correlation is below this, or when their
peaks are more than ``ARGMAX_TOLERANCE`` px apart."""

_HEADLINE = ("spearman", "ssim", "cosine", "topk_intersection", "argmax_agree")


def audit(model_a: nn.Module, model_b: nn.Module, loader, explainers=("gradcam",),
          layers: dict | None = None, n_boot: int = 1000, seed: int = 0, top: int = 12,
          progress: bool = True, faithfulness: bool = False,
          low_spearman: float = LOW_SPEARMAN, confidence: float = 0.95) -> dict:
    """Compare the explanations of ``model_b`` with those of ``model_a`` on ``loader``.

    ``loader`` yields ``(images, labels multi-hot, masks)`` in a fixed order (image indices
    are positions in that order, so don't shuffle); with masks ``None`` or all 255
    localisation is skipped.  Explained pairs are every (image, ground-truth class).
    ``layers={"a": name, "b": name}`` names each model's explained layer (Grad-CAM; input-level
    explainers ignore it).  CIs are percentile bootstrap intervals over images (``n_boot``
    replicates, ``seed``, ``confidence``); ``top`` images are listed as most moved;
    ``faithfulness=True`` adds RISE deletion / insertion AUC deltas.

    Returns a JSON-safe dict (NaN -> None); see ``result["definitions"]`` for every metric.
    """
    layers = layers or {}
    models = {"a": model_a, "b": model_b}
    data = collect_pairs(models, loader, "a", tuple(explainers), layers, progress, faithfulness)
    n_images = len(data["labels"])
    out = {
        "images": n_images,
        "pairs": int(len(data["classes"])),
        "localization": bool(data["localization"]),
        "class_names": list(getattr(getattr(loader, "dataset", None), "classes", []) or []),
        "task": _task(data),
        "definitions": _definitions(data, faithfulness, low_spearman),
        "settings": {"n_boot": n_boot, "seed": seed, "confidence": confidence,
                     "low_spearman": low_spearman, "argmax_tolerance_px": ARGMAX_TOLERANCE,
                     "explainers": list(explainers), "layers": dict(layers)},
        "explainers": {},
    }
    for e in explainers:
        out["explainers"][e] = _explainer_report(data, e, n_images, n_boot, seed, top,
                                                 faithfulness, low_spearman, confidence)
    return nan_to_none(out)


def _definitions(data, faithfulness, low_spearman) -> dict[str, str]:
    """The definition of every number in the report (docs/metrics.md)."""
    names = [*AGREEMENT, *(spec[0] for spec in _specs(data, faithfulness)), "ci"]
    return {
        **{k: DEFINITIONS[k] for k in names},
        "low_agreement": f"Spearman < {low_spearman:g} or peaks more than {ARGMAX_TOLERANCE:g} px"
                         " apart (a NaN Spearman, from a constant map, counts only through the"
                         " peak test)",
        "same_decision": "both models' logits of the pair's class on the same side of 0",
        "per_image": "means over the image's ground-truth pairs; localisation deltas B - A over "
                     "all its pairs (no predicted-pair filter)",
        "most_moved": "images with the lowest mean Spearman over their pairs",
    }


def _specs(data, faithfulness):
    return (LOCALIZATION if data["localization"] else ()) + \
        (FAITHFULNESS if faithfulness else ())


def _decisions(data) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair: does A / B predict the pair's class (logit > 0)?"""
    img, cls = data["image"], data["classes"]
    return data["logits"]["a"][img, cls] > 0, data["logits"]["b"][img, cls] > 0


def _task(data) -> dict:
    """mAP / F1 of both models and how often their decisions agree."""
    labels = data["labels"]
    res = {}
    for n in ("a", "b"):
        m_ap, _ = mean_average_precision(data["logits"][n], labels)
        res[n] = {"mAP": m_ap, "F1": sample_f1(torch.sigmoid(data["logits"][n]), labels)}
    pa, pb = data["logits"]["a"] > 0, data["logits"]["b"] > 0
    dec_a, dec_b = _decisions(data)
    res["decision_agreement"] = float((pa == pb).double().mean()) if pa.numel() else float("nan")
    res["label_set_agreement"] = float((pa == pb).all(dim=1).double().mean()) if len(pa) else \
        float("nan")
    res["pair_decision_agreement"] = float((dec_a == dec_b).double().mean()) if len(dec_a) else \
        float("nan")
    res["top1_agreement"] = top1_agreement(data["logits"]["a"], data["logits"]["b"])
    res["definitions"] = {
        "decision_agreement": "share of all (image, class) decisions (logit > 0) that agree",
        "label_set_agreement": "share of images whose predicted label sets are identical",
        "pair_decision_agreement": "share of ground-truth pairs with the same decision",
        "top1_agreement": "share of images on which both models' top-scored classes agree",
    }
    return res


def _filter(rec, which):
    return rec["predicted"] if which == "predicted" else None


def _and(where, extra):
    return extra if where is None else where & extra


def _ci(reps, confidence) -> tuple[float, float]:
    lo, hi = percentile_ci(reps, confidence)
    return float(lo[0]), float(hi[0])


def _class_balanced(columns: list[np.ndarray]) -> np.ndarray:
    """Mean over classes (NaN classes skipped) of per-class values, elementwise."""
    stack = np.stack(columns, axis=0)
    with np.errstate(invalid="ignore"):
        present = ~np.isnan(stack)
        count = present.sum(axis=0)
        total = np.where(present, stack, 0.0).sum(axis=0)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _explainer_report(data, e, n_images, n_boot, seed, top, faithfulness, low_spearman,
                      confidence) -> dict:
    a, b = data["pairs"]["a"][e], data["pairs"]["b"][e]
    image, classes = data["image"], data["classes"]
    class_ids = [int(k) for k in torch.unique(classes)]
    specs = _specs(data, faithfulness)
    dec_a, dec_b = _decisions(data)
    low = _low_agreement(b, low_spearman)
    same = dec_a == dec_b

    # every mean the report needs, on one shared set of bootstrap replicates
    cols = {}
    for k in AGREEMENT:
        cols[f"agr/{k}"] = (b[k], None)
        for c in class_ids:
            cols[f"agr/{k}/{c}"] = (b[k], classes == c)
    for out, key, which, _ in specs:
        for side, rec in (("a", a), ("b", b)):
            cols[f"loc/{out}/{side}"] = (rec[key], _filter(rec, which))
            for c in class_ids:
                cols[f"loc/{out}/{side}/{c}"] = (rec[key], _and(_filter(rec, which),
                                                               classes == c))
    low_f = low.to(torch.float64)
    cols["hidden/same"] = (low_f, same)
    cols["hidden/both_predicted"] = (low_f, dec_a & dec_b)
    cols["hidden/different"] = (low_f, ~same)
    est, reps = bootstrap_columns(cols, image, n_boot, seed) if len(image) else ({}, {})

    def series(name):
        """Estimate followed by the replicates; NaN when the column is absent."""
        if name in est:
            return np.concatenate([[est[name]], reps[name]])
        return np.full(n_boot + 1, np.nan)

    def summary(name):
        v = series(name)
        lo, hi = _ci(v[1:], confidence)
        return {"mean": float(v[0]), "ci_low": lo, "ci_high": hi}

    def delta(va, vb):
        d = vb - va
        lo, hi = _ci(d[1:], confidence)
        return {"a": float(va[0]), "b": float(vb[0]), "delta": float(d[0]),
                "ci_low": lo, "ci_high": hi}

    agreement = {k: summary(f"agr/{k}") for k in AGREEMENT}
    deltas = {}
    for out, _key, _which, balanced in specs:
        if balanced:  # mean over classes of the per-class means, replicate by replicate
            va, vb = (_class_balanced([series(f"loc/{out}/{s}/{c}") for c in class_ids])
                      for s in ("a", "b"))
        else:
            va, vb = series(f"loc/{out}/a"), series(f"loc/{out}/b")
        deltas[out] = delta(va, vb)
    faith_names = {spec[0] for spec in FAITHFULNESS}

    per_class = {}
    for c in class_ids:
        row = {"pairs": int((classes == c).sum())}
        row.update({k: summary(f"agr/{k}/{c}") for k in AGREEMENT})
        row.update({out: delta(series(f"loc/{out}/a/{c}"), series(f"loc/{out}/b/{c}"))
                    for out, *_ in specs})
        per_class[str(c)] = row

    per_image = _per_image(data, a, b, n_images, specs, dec_a, dec_b)
    hidden = {
        "rule": f"low agreement = Spearman < {low_spearman:g} or peaks more than "
                f"{ARGMAX_TOLERANCE:g} px apart; same decision = both logits of the pair's class "
                "on the same side of 0",
        "same_decision_pairs": int(same.sum()),
        "same_decision_low_agreement_pairs": int((low & same).sum()),
        "share_low_among_same_decision": summary("hidden/same"),
        "both_predicted_pairs": int((dec_a & dec_b).sum()),
        "share_low_among_both_predicted": summary("hidden/both_predicted"),
        "different_decision_pairs": int((~same).sum()),
        "share_low_among_different_decision": summary("hidden/different"),
    }
    return {
        "agreement": agreement,
        "localization": {k: v for k, v in deltas.items() if k not in faith_names}
        if data["localization"] else None,
        "faithfulness": {k: v for k, v in deltas.items() if k in faith_names}
        if faithfulness else None,
        "per_class": per_class,
        "per_image": per_image,
        "most_moved": _most_moved(per_image, data, b, dec_a, dec_b, top),
        "hidden_disagreement": hidden,
    }


def _low_agreement(rec, low_spearman) -> torch.Tensor:
    """Per pair: Spearman below the threshold (NaN, a constant map, is not low by itself) or
    peaks apart."""
    rho = rec["spearman"]
    return (~torch.isnan(rho) & (rho < low_spearman)) | ~rec["argmax_agree"].bool()


def _per_image(data, a, b, n_images, specs, dec_a, dec_b) -> list[dict]:
    """One row per image (loader order): its ground-truth classes, the mean agreement over its
    pairs, localisation deltas B - A averaged over its pairs (unfiltered: every pair), and
    whether the two predicted label sets are identical."""
    image = data["image"]
    means = {k: group_means(b[k], image, n_images) for k in _HEADLINE}
    deltas = {out: group_means(b[key] - a[key], image, n_images) for out, key, *_ in specs}
    same_sets = ((data["logits"]["a"] > 0) == (data["logits"]["b"] > 0)).all(dim=1)
    classes_of = [[] for _ in range(n_images)]
    for i, c in zip(image.tolist(), data["classes"].tolist()):
        classes_of[i].append(c)
    rows = []
    for i in range(n_images):
        row = {"index": i, "classes": classes_of[i]}
        row.update({k: float(v[i]) for k, v in means.items()})
        row.update({f"delta_{out}": float(v[i]) for out, v in deltas.items()})
        row["predictions_agreed"] = bool(same_sets[i])
        rows.append(row)
    return rows


def _most_moved(per_image, data, b, dec_a, dec_b, top) -> list[dict]:
    """The ``top`` images with the lowest mean Spearman over their pairs (images whose maps
    are all constant, Spearman NaN, come last), with per-pair details."""
    ranked = sorted((r for r in per_image if r["classes"]),
                    key=lambda r: (np.isnan(r["spearman"]), r["spearman"], r["index"]))
    image = data["image"]
    out = []
    for r in ranked[:max(0, top)]:
        idx = (image == r["index"]).nonzero()[:, 0]
        pairs = [{"class": int(data["classes"][j]), "spearman": float(b["spearman"][j]),
                  "argmax_agree": bool(b["argmax_agree"][j]),
                  "predicted_a": bool(dec_a[j]), "predicted_b": bool(dec_b[j])} for j in idx]
        out.append({"index": r["index"], "classes": r["classes"], "spearman": r["spearman"],
                    "predictions_agreed": r["predictions_agreed"], "pairs": pairs})
    return out
