"""Audit: how far did model B's explanations move from model A's, and where?

``audit(model_a, model_b, loader)`` works for any two torch models (B is usually a compressed
A).  It runs the streaming evaluator's pass (:func:`.runner.collect_pairs`) once with A as the
reference and reports, per explainer:

* agreement of B's maps with A's, overall and per class, with bootstrap CIs over images;
* localisation of each model against the masks and the paired deltas B - A with CIs (skipped
  when the loader has no masks), optionally the same for RISE deletion / insertion AUC;
* one row per image (named by file where the dataset has ``files``) and the images whose
  explanations moved most ("explanation forgotten"), vanished explanations first;
* whether agreeing predictions hide disagreeing explanations.

A constant (blank) map is never a missing value: it scores Spearman 0 against a non-constant
one (:func:`.agreement.spearman`) and the pair is flagged ``vanished``. Peak distances are in
cells of the explainer's native map (px beside). Single-label (softmax) models are compared by
their top-1 classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..attribution import EXPLAINERS, upsample
from ..attribution.api import model_device
from ..models.family import is_single_label
from .agreement import CONSTANT_MAPS, cell_size, is_constant
from .runner import (
    AGREEMENT,
    DEFINITIONS,
    FAITHFULNESS,
    LOCALIZATION,
    _unpack,
    collect_pairs,
    nan_to_none,
)
from .stats import bootstrap_columns, group_means, percentile_ci
from .task import mean_average_precision, sample_f1, top1_accuracy, top1_agreement

__all__ = ["audit", "LOW_SPEARMAN", "PEAK_TOLERANCE_CELLS"]

LOW_SPEARMAN = 0.5
"""A pair's explanations disagree when their Spearman correlation is below this, or when their
peaks are more than ``PEAK_TOLERANCE_CELLS`` apart."""

PEAK_TOLERANCE_CELLS = 1.5
"""Peaks agree within this many cells of the explainer's native map (a 7 x 7 Grad-CAM at
224 px: 48 px; an input-resolution map: 1.5 px): the same or a neighbouring cell, diagonals
(1.41) included."""

# the audit's per-pair agreement columns: the evaluator's, argmax_agree in cells, peak_cells
KEYS = (*AGREEMENT, "peak_cells")
_HEADLINE = ("spearman", "ssim", "cosine", "topk_intersection", "argmax_agree", "peak_cells")


def audit(model_a: nn.Module, model_b: nn.Module, loader, explainers=("gradcam",),
          layers: dict | None = None, n_boot: int = 1000, seed: int = 0, top: int = 12,
          progress: bool = True, faithfulness: bool = False,
          low_spearman: float = LOW_SPEARMAN, confidence: float = 0.95,
          peak_tolerance: float = PEAK_TOLERANCE_CELLS) -> dict:
    """Compare the explanations of ``model_b`` with those of ``model_a`` on ``loader``.

    ``loader`` yields ``(images, labels multi-hot, masks)`` in a fixed order (image indices
    are positions in that order, so don't shuffle); with masks ``None`` or all 255
    localisation is skipped.  Explained pairs are every (image, ground-truth class).
    ``layers={"a": name, "b": name}`` names each model's explained layer (Grad-CAM; input-level
    explainers ignore it).  CIs are percentile bootstrap intervals over images (``n_boot``
    replicates, ``seed``, ``confidence``); ``top`` images are listed as most moved;
    ``faithfulness=True`` adds RISE deletion / insertion AUC deltas; ``peak_tolerance``: cells
    of the native map within which two peaks agree.  ``model_a.single_label`` (a softmax
    classifier) compares top-1 classes instead of sigmoid decisions.

    Returns a JSON-safe dict (NaN -> None); see ``result["definitions"]`` for every metric.
    """
    layers = layers or {}
    models = {"a": model_a, "b": model_b}
    single = is_single_label(model_a)
    data = collect_pairs(models, loader, "a", tuple(explainers), layers, progress, faithfulness)
    facts = _map_facts(models, loader, tuple(explainers), layers, data)
    n_images = len(data["labels"])
    dataset = getattr(loader, "dataset", None)
    out = {
        "images": n_images,
        "pairs": int(len(data["classes"])),
        "localization": bool(data["localization"]),
        "class_names": list(getattr(dataset, "classes", []) or []),
        "task": _task(data, single),
        "definitions": _definitions(data, faithfulness, low_spearman, peak_tolerance, single),
        "settings": {"n_boot": n_boot, "seed": seed, "confidence": confidence,
                     "low_spearman": low_spearman, "peak_tolerance_cells": peak_tolerance,
                     "explainers": list(explainers), "layers": dict(layers)},
        "explainers": {},
    }
    names = _file_names(dataset, n_images)
    for e in explainers:
        out["explainers"][e] = _explainer_report(
            data, e, facts[e], names, single, n_boot, seed, top, faithfulness, low_spearman,
            peak_tolerance, confidence)
    return nan_to_none(out)


def _definitions(data, faithfulness, low_spearman, tolerance, single) -> dict[str, str]:
    """The definition of every number in the report (docs/metrics.md)."""
    names = [*AGREEMENT, *(spec[0] for spec in _specs(data, faithfulness)), "ci"]
    decision = ("the pair's class is (or is not) the model's top-1" if single else
                "the model's logit of the pair's class is > 0")
    return {
        **{k: DEFINITIONS[k] for k in names},
        "spearman": f"{DEFINITIONS['spearman']}; {CONSTANT_MAPS}",
        "cosine": f"{DEFINITIONS['cosine']}; 0 when exactly one map is all zero, 1 when both are",
        "peak_distance": "distance between the two maps' first argmax pixels, in px of the "
                         "compared (upsampled) maps",
        "peak_cells": "peak_distance divided by the px per cell of the explainer's native map "
                      "(cell_px: the compared size over the coarser model's map grid; 1 for "
                      "input-resolution explainers)",
        "argmax_agree": f"peaks at most {tolerance:g} cells apart (peak_cells <= {tolerance:g})",
        "vanished": "a pair whose map is constant (blank) for exactly one of the two models "
                    "(max - min <= 1e-6 x max |value|): Spearman 0, low agreement; an image is "
                    "flagged when any of its pairs is; blank names the model(s)",
        "low_agreement": f"Spearman < {low_spearman:g} or peaks more than {tolerance:g} cells "
                         "apart",
        "same_decision": "both models give the pair the same answer: "
                         + ("the same top-1 class" if single else
                            "their logits of the pair's class on the same side of 0"),
        "predicted": f"per pair and model: {decision}",
        "per_image": "means over the image's ground-truth pairs; localisation deltas B - A over "
                     "all its pairs (no predicted-pair filter)",
        "most_moved": "images with a vanished explanation first, then the lowest mean Spearman "
                      "over their pairs",
    }


def _specs(data, faithfulness):
    return (LOCALIZATION if data["localization"] else ()) + \
        (FAITHFULNESS if faithfulness else ())


def _decisions(data, single) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pair: does A / B predict the pair's class (top-1, or logit > 0), and do the two give
    the same answer (the same top-1 class, or the same decision on the class)?"""
    img, cls = data["image"], data["classes"]
    la, lb = data["logits"]["a"], data["logits"]["b"]
    if single:
        ta, tb = la.argmax(dim=1)[img], lb.argmax(dim=1)[img]
        return ta == cls, tb == cls, ta == tb
    dec_a, dec_b = la[img, cls] > 0, lb[img, cls] > 0
    return dec_a, dec_b, dec_a == dec_b


def _task(data, single) -> dict:
    """Top-1 accuracy of both models and top-1 agreement (single-label), or mAP / F1 and how
    often their sigmoid decisions agree (multi-label)."""
    labels, la, lb = data["labels"], data["logits"]["a"], data["logits"]["b"]
    top1 = {"top1_agreement": top1_agreement(la, lb)}
    agree = "share of images on which both models' top-scored classes agree"
    if single:
        return {"single_label": True, **top1,
                **{n: {"top1": top1_accuracy(data["logits"][n], labels)} for n in ("a", "b")},
                "definitions": {"top1": "share of labelled images whose top-scored class is "
                                        "the label", "top1_agreement": agree}}
    res = {"single_label": False, **top1}
    for n in ("a", "b"):
        m_ap, _ = mean_average_precision(data["logits"][n], labels)
        res[n] = {"mAP": m_ap, "F1": sample_f1(torch.sigmoid(data["logits"][n]), labels)}
    pa, pb = la > 0, lb > 0
    _, _, same = _decisions(data, single)
    res["decision_agreement"] = float((pa == pb).double().mean()) if pa.numel() else float("nan")
    res["label_set_agreement"] = float((pa == pb).all(dim=1).double().mean()) if len(pa) else \
        float("nan")
    res["pair_decision_agreement"] = float(same.double().mean()) if len(same) else float("nan")
    res["definitions"] = {
        "decision_agreement": "share of all (image, class) decisions (logit > 0) that agree",
        "label_set_agreement": "share of images whose predicted label sets are identical",
        "pair_decision_agreement": "share of ground-truth pairs with the same decision",
        "top1_agreement": agree,
    }
    return res


def _file_names(dataset, n_images: int) -> list[str] | None:
    """The audited images' file names (``dataset.files``; ``class/file`` when two class folders
    hold the same name), or ``None`` for datasets without files."""
    files = getattr(dataset, "files", None)
    if files is None or len(files) != n_images:
        return None
    names = [Path(f).name for f in files]
    if len(set(names)) < len(names):
        names = [f"{Path(f).parent.name}/{Path(f).name}" for f in files]
    return names


def _map_facts(models, loader, explainers, layers, data) -> dict[str, dict]:
    """Per explainer: each model's native map grid (h, w), the px per cell of the compared maps
    (the coarser model's), and per pair whether each model's map is constant (``blank``).

    ``collect_pairs`` keeps no maps, so this explains again: the first batch's first image
    (a layer explainer's grid) and the pairs whose Spearman is exactly 0, the value
    :func:`.agreement.spearman` gives a constant map against a non-constant one (usually
    none), each in its own batch as the first pass saw it.
    """
    image, classes, n = data["image"], data["classes"], len(data["image"])
    check = {e: ((data["pairs"]["b"][e]["spearman"] == 0).nonzero()[:, 0]
                 if e in data["pairs"]["b"] else torch.zeros(0, dtype=torch.long))
             for e in explainers}
    facts = {e: {"grid": {}, "cell_px": float("nan"),
                 "blank": {m: torch.zeros(n, dtype=torch.bool) for m in models}}
             for e in explainers}
    last = max((int(image[j].max()) for j in check.values() if len(j)), default=-1)
    offset = 0
    for batch in loader:
        images, _, masks = _unpack(batch)
        size = tuple((masks if masks is not None else images).shape[-2:])
        for e in explainers:
            js = check[e][(image[check[e]] >= offset) & (image[check[e]] < offset + len(images))]
            probe = offset == 0 and EXPLAINERS.meta(e)["resolution"] != "input"
            if offset == 0 and not probe:  # input-resolution maps: a pixel is a cell
                facts[e]["grid"] = {m: list(images.shape[-2:]) for m in models}
            idx = torch.cat([image[js] - offset, torch.zeros(int(probe), dtype=torch.long)])
            cls = torch.cat([classes[js], torch.zeros(int(probe), dtype=torch.long)])
            for m, model in models.items() if len(idx) else ():
                device = model_device(model)
                raw, _ = EXPLAINERS[e](model, images.to(device), idx.to(device),
                                       cls.to(device), layers.get(m))
                raw = raw.detach().float().cpu()
                facts[e]["blank"][m][js] = is_constant(upsample(raw[:len(js)], size))
                if probe:
                    facts[e]["grid"][m] = list(raw.shape[-2:])
            if offset == 0:
                facts[e]["cell_px"] = max(cell_size(g, size) for g in facts[e]["grid"].values())
        offset += len(images)
        if offset > last:
            break
    return facts


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


def _explainer_report(data, e, facts, names, single, n_boot, seed, top, faithfulness,
                      low_spearman, tolerance, confidence) -> dict:
    a, b = data["pairs"]["a"][e], dict(data["pairs"]["b"][e])
    image, classes = data["image"], data["classes"]
    # peaks in cells of the native map; argmax_agree at the audit's tolerance in cells
    b["peak_cells"] = b["peak_distance"] / facts["cell_px"]
    b["argmax_agree"] = b["peak_cells"] <= tolerance
    blank = facts["blank"]
    vanished = blank["a"] ^ blank["b"]
    class_ids = [int(k) for k in torch.unique(classes)]
    specs = _specs(data, faithfulness)
    dec_a, dec_b, same = _decisions(data, single)
    low = (b["spearman"] < low_spearman) | ~b["argmax_agree"]

    # every mean the report needs, on one shared set of bootstrap replicates
    cols = {}
    for k in KEYS:
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
    cols["hidden/all"] = (low_f, None)
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

    agreement = {k: summary(f"agr/{k}") for k in KEYS}
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
        row.update({k: summary(f"agr/{k}/{c}") for k in KEYS})
        row.update({out: delta(series(f"loc/{out}/a/{c}"), series(f"loc/{out}/b/{c}"))
                    for out, *_ in specs})
        per_class[str(c)] = row

    per_image = _per_image(data, a, b, specs, blank, names, single)
    hidden = {
        "rule": f"low agreement = Spearman < {low_spearman:g} or peaks more than "
                f"{tolerance:g} cells apart; same decision = "
                + ("the same top-1 class" if single else
                   "both logits of the pair's class on the same side of 0"),
        "low_agreement_pairs": int(low.sum()),
        "share_low": summary("hidden/all"),
        "same_decision_pairs": int(same.sum()),
        "same_decision_low_agreement_pairs": int((low & same).sum()),
        "share_low_among_same_decision": summary("hidden/same"),
        "both_predicted_pairs": int((dec_a & dec_b).sum()),
        "share_low_among_both_predicted": summary("hidden/both_predicted"),
        "different_decision_pairs": int((~same).sum()),
        "share_low_among_different_decision": summary("hidden/different"),
    }
    return {
        "grid": facts["grid"],
        "cell_px": facts["cell_px"],
        "vanished_pairs": int(vanished.sum()),
        "agreement": agreement,
        "localization": {k: v for k, v in deltas.items() if k not in faith_names}
        if data["localization"] else None,
        "faithfulness": {k: v for k, v in deltas.items() if k in faith_names}
        if faithfulness else None,
        "per_class": per_class,
        "per_image": per_image,
        "most_moved": _most_moved(per_image, data, b, blank, dec_a, dec_b, top),
        "hidden_disagreement": hidden,
    }


def _blank_of(blank, j) -> str | None:
    """The model ("a" or "b") whose map of pair ``j`` is blank while the other's is not."""
    a, b = bool(blank["a"][j]), bool(blank["b"][j])
    return None if a == b else "a" if a else "b"


def _per_image(data, a, b, specs, blank, names, single) -> list[dict]:
    """One row per image (loader order): its ground-truth classes, the mean agreement over its
    pairs, localisation deltas B - A averaged over its pairs (unfiltered: every pair), whether
    the two models' predictions agree (single-label: the same top-1, with both top-1 classes;
    multi-label: identical predicted label sets), and which models' maps vanished."""
    image, la, lb = data["image"], data["logits"]["a"], data["logits"]["b"]
    n_images = len(la)
    means = {k: group_means(b[k], image, n_images) for k in _HEADLINE}
    deltas = {out: group_means(b[key] - a[key], image, n_images) for out, key, *_ in specs}
    top_a, top_b = la.argmax(dim=1), lb.argmax(dim=1)
    agreed = top_a == top_b if single else ((la > 0) == (lb > 0)).all(dim=1)
    classes_of = [[] for _ in range(n_images)]
    blank_of = [set() for _ in range(n_images)]
    for j, (i, c) in enumerate(zip(image.tolist(), data["classes"].tolist())):
        classes_of[i].append(c)
        side = _blank_of(blank, j)
        if side:
            blank_of[i].add(side)
    rows = []
    for i in range(n_images):
        row = {"index": i, "classes": classes_of[i]}
        if names:
            row["name"] = names[i]
        row.update({k: float(v[i]) for k, v in means.items()})
        row.update({f"delta_{out}": float(v[i]) for out, v in deltas.items()})
        row["predictions_agreed"] = bool(agreed[i])
        if single:
            row.update(top1_a=int(top_a[i]), top1_b=int(top_b[i]))
        row["vanished"], row["blank"] = bool(blank_of[i]), sorted(blank_of[i])
        rows.append(row)
    return rows


def _most_moved(per_image, data, b, blank, dec_a, dec_b, top) -> list[dict]:
    """The ``top`` images with a vanished explanation first, then the lowest mean Spearman over
    their pairs, with per-pair details."""
    ranked = sorted((r for r in per_image if r["classes"]),
                    key=lambda r: (not r["vanished"], r["spearman"], r["index"]))
    image = data["image"]
    keep = ("index", "name", "classes", "spearman", "predictions_agreed", "top1_a", "top1_b",
            "vanished", "blank")
    out = []
    for r in ranked[:max(0, top)]:
        idx = (image == r["index"]).nonzero()[:, 0]
        pairs = [{"class": int(data["classes"][j]), "spearman": float(b["spearman"][j]),
                  "argmax_agree": bool(b["argmax_agree"][j]),
                  "peak_cells": float(b["peak_cells"][j]),
                  "predicted_a": bool(dec_a[j]), "predicted_b": bool(dec_b[j]),
                  "blank": _blank_of(blank, j)} for j in idx]
        out.append({**{k: r[k] for k in keep if k in r}, "pairs": pairs})
    return out
