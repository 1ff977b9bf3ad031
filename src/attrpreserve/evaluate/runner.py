"""Evaluate several models in one streaming pass: task quality, localisation, agreement, cost.

All models see the same batches; for every (image, ground-truth class) pair each model's map is
scored against the mask, and against the reference model's map of the same pair (agreement is
always measured against the run's teacher). Only per-pair numbers are kept, so memory stays
bounded on large evaluation sets.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .. import logs
from ..attribution import EXPLAINERS, upsample
from ..attribution.api import model_device
from ..models.family import is_single_label
from ..results_schema import CENTER_BASELINE
from ..results_schema import SELF_AGREEMENT
from . import agreement as agr
from . import localization as loc
from .cost import count_macs, count_nonzero_params, count_params, file_bytes, latency_ms
from .faithfulness import faithfulness_aucs
from .stats import delta_ci, gaps_recovered, group_means, mean_ci, means_ci
from .task import (best_f1_threshold, mean_average_precision, per_class_top1, sample_f1,
                   top1_accuracy, top1_agreement)

STD_TOLERANCE = 15.0  # px, the standard pointing game's tolerance (Zhang et al. 2016)
ARGMAX_TOLERANCE = 4.0  # px at input resolution: "the peak lands where the teacher's does"
TOPK = 0.1  # fraction of pixels in the top-k agreement sets
FAITHFULNESS_STEPS = 16  # deletion / insertion curve points - 1 (RISE uses 224 on 224 px)

# (result key, per-pair key, which pairs are pooled, class-balanced mean?)
LOCALIZATION = (
    ("pointing_game", "hit", "predicted", False),
    ("pointing_game_std", "hit_std", "all", True),
    ("auc", "auc", "predicted", False),
    ("energy_pg", "energy", "all", False),
    ("relevance_mass", "relevance_mass", "all", False),
    ("relevance_rank", "relevance_rank", "all", False),
)
FAITHFULNESS = (
    ("deletion_auc", "deletion_auc", "all", False),
    ("insertion_auc", "insertion_auc", "all", False),
)
# the headline agreement metrics first (docs/metrics.md)
AGREEMENT = ("spearman", "topk_iou", "peak_distance", "hit_given_teacher_hit",
             "topk_intersection", "cosine", "ssim", "argmax_agree", "com_shift")
# fixed pair sets, the same for every model (docs/metrics.md, "Pair sets")
PAIR_SETS = ("all", "teacher_correct")
AGGREGATIONS = ("pooled", "class_balanced")
# metrics whose gap recovered (matched vs naive vs teacher) is reported
GAP_METRICS = ("pointing_game", "auc", "energy_pg", "spearman", "topk_iou", "peak_distance",
               "hit_given_teacher_hit")

DEFINITIONS = {
    "pointing_game": "paper mode: first argmax inside the class mask, void pixels never chosen;"
                     " pairs the model predicts (logit > 0; single-label: its top-1), pooled",
    "pointing_game_std": f"Zhang et al. 2016 / TorchRay: argmax within {STD_TOLERANCE:g} px "
                         "(strict) of the mask; per-class accuracy, mean over classes",
    "auc": "pixel ROC-AUC (sklearn ties), void excluded; predicted pairs pooled",
    "energy_pg": "Score-CAM energy: positive mass inside / positive mass; all pairs",
    "relevance_mass": "Arras et al. 2022, relevance mass accuracy, 'pos' pooling; all pairs",
    "relevance_rank": "Arras et al. 2022, relevance rank accuracy (top-K, K = object size, "
                      "ties row-major), 'pos' pooling; all pairs",
    "spearman": "Spearman rank correlation of the two maps (average ranks)",
    "topk_iou": f"IoU of the top {TOPK:.0%} pixel sets",
    "topk_intersection": f"Ghorbani et al.: share of the reference's top {TOPK:.0%} pixels in "
                         "the other's",
    "cosine": "cosine similarity of the flattened maps",
    "ssim": "SSIM of min-max scaled maps, Gaussian window sigma 1.5 (11 px), C1 = 0.01^2, "
            "C2 = 0.03^2, population covariance, mean over full windows (= skimage)",
    "argmax_agree": f"peaks within {ARGMAX_TOLERANCE:g} px",
    "peak_distance": "distance between the two maps' first argmax pixels (px)",
    "hit_given_teacher_hit": "P(hit | teacher hit): paper-mode pointing-game hit on the pairs "
                             "where the reference model's map hits",
    "all": "pair set: every (image, ground-truth class) pair",
    "teacher_correct": "pair set: ground-truth pairs the reference model predicts (multi-label:"
                       " logit > 0; single-label: the class is its top-1)",
    "pooled": "mean over the set's pairs",
    "class_balanced": "mean over the classes with pairs in the set of the per-class means",
    "gap_recovered": "(matched - naive) / (teacher - naive) on a fixed pair set; percentile "
                     "interval of the ratio from a paired image bootstrap; only where the "
                     "gap's own interval excludes 0 (else status 'no gap')",
    "com_shift": "distance between the centres of mass of the positive parts (px)",
    "deletion_auc": f"RISE deletion AUC (trapezoid over equal pixel steps, {FAITHFULNESS_STEPS} "
                    "unless configured), black substrate, the model's probability of the class "
                    "(sigmoid; softmax for single-label models); all pairs",
    "insertion_auc": f"RISE insertion AUC ({FAITHFULNESS_STEPS} steps unless configured), "
                     "blurred substrate (11 px kernel, sigma 5, edge replication), probability "
                     "as for deletion; all pairs",
    "center_baseline": "METRIC_center_baseline: the metric of a map that ignores the image, a "
                       f"Gaussian centred on pixel (H // 2, W // 2), sigma {loc.CENTER_SIGMA:g} "
                       "x the shorter side, on the same pairs and aggregated the same way",
    "top1": "share of the labelled images whose top-scored class is a label; single-label "
            "models are scored by it (and per class), multi-label ones by mAP and F1",
    "F1_at_val_threshold": "multi-label models: sample F1 at the probability threshold "
                           "(F1_val_threshold) that maximises it on the val split",
    "ci": "percentile bootstrap over images (pairs of one image resampled together)",
}


def _unlocalized(rec: dict[str, torch.Tensor], valid) -> dict[str, torch.Tensor]:
    """``rec`` with NaN for the pairs whose image has no valid pixel (a photo without a box
    beside boxed ones in its batch): no localisation there, never a miss."""
    none = ~valid.flatten(1).any(1)
    if bool(none.any()):
        for v in rec.values():
            v[none] = float("nan")
    return rec


def _pair_metrics(maps, masks, valid) -> dict[str, torch.Tensor]:
    # hits as float64 so that NaN can mark pairs without masks
    return _unlocalized({
        "hit": loc.pointing_hits(maps, masks, valid).to(torch.float64),
        "hit_std": loc.pointing_hits_tolerance(maps, masks, STD_TOLERANCE, valid).to(
            torch.float64),
        "auc": loc.roc_auc(maps, masks, valid),
        "energy": loc.energy_pointing_game(maps, masks, valid),
        "relevance_mass": loc.relevance_mass_accuracy(maps, masks, valid),
        "relevance_rank": loc.relevance_rank_accuracy(maps, masks, valid),
    }, valid)


def _no_localization(n: int) -> dict[str, torch.Tensor]:
    nan = torch.full((n,), float("nan"), dtype=torch.float64)
    return {key: nan.clone() for _, key, _, _ in LOCALIZATION}


def _agreement(ref, maps, ref_rec, rec) -> dict[str, torch.Tensor]:
    """Agreement of ``maps`` with the reference's ``ref`` (``ref_rec`` / ``rec``: the two
    models' localisation records of the same pairs, for P(hit | teacher hit))."""
    big = min(maps.shape[-2:]) >= 11  # the SSIM window
    peaks = agr.peak_distance(ref, maps)
    nan = torch.full((len(maps),), float("nan"), dtype=torch.float64)
    return {
        "spearman": agr.spearman(ref, maps),
        "topk_iou": agr.topk_iou(ref, maps, TOPK),
        "peak_distance": peaks,
        "hit_given_teacher_hit": torch.where(ref_rec["hit"] == 1, rec["hit"], nan),
        "topk_intersection": agr.topk_intersection(ref, maps, TOPK),
        "cosine": agr.cosine(ref, maps),
        "ssim": agr.ssim(ref, maps) if big else nan,
        "argmax_agree": peaks <= ARGMAX_TOLERANCE,
        "com_shift": agr.center_of_mass_shift(ref, maps),
    }


def _mean(x: torch.Tensor, where: torch.Tensor | None = None) -> float:
    x = x.double()
    if where is not None:
        x = x[where]
    x = x[~torch.isnan(x)]
    return float(x.mean()) if len(x) else float("nan")


def _unpack(batch):
    """``(images, labels, masks or None)``; masks that are all void (255) count as absent."""
    images, labels = batch[0], batch[1]
    masks = batch[2] if len(batch) > 2 else None
    if masks is not None and bool((masks == 255).all()):
        masks = None
    return images, labels, masks


def collect_pairs(models: dict[str, nn.Module], loader, reference: str | None = None,
                  explainers: tuple[str, ...] = ("gradcam",), layers: dict | None = None,
                  progress: bool = True, faithfulness: bool = False,
                  faithfulness_steps: int = FAITHFULNESS_STEPS,
                  faithfulness_batch: int = 64) -> dict:
    """One streaming pass: the per-pair numbers of every model on every (image, ground-truth
    class) pair; maps are dropped batch by batch.

    ``loader`` yields ``(images, labels multi-hot, masks)`` (masks ``None``, missing or all 255:
    localisation values are NaN for that batch).  Images are numbered in loader order.

    Returns ``{"logits": {name: N x K}, "labels": N x K, "image": P, "classes": P,
    "center": {key: P}, "center_hit": P, "localization": bool, "single_label": {name: bool},
    "pairs": {name: {explainer: {key: P}}}}``: ``center`` holds the localisation keys of the
    centre baseline (:func:`~.localization.center_point_maps`), ``center_hit`` its 15 px hits;
    agreement keys (vs ``reference``) exist for the other models, faithfulness keys when
    asked. A ``single_label`` model (softmax) predicts its top-1 class, a multi-label one the
    classes with logit > 0 (``predicted``).
    """
    for e in explainers:
        if e not in EXPLAINERS:
            raise ValueError(f"unknown explainer {e!r}; known: {', '.join(EXPLAINERS)}")
    layers = layers or {}
    logits = {n: [] for n in models}
    pairs = {n: {e: [] for e in explainers} for n in models}
    single = {n: is_single_label(m) for n, m in models.items()}
    labels_all, classes_all, image_all, center = [], [], [], []
    any_masks, offset = False, 0
    for m in models.values():
        m.eval()
    for batch in tqdm(loader, desc="evaluate", leave=False, disable=not logs.bars(progress)):
        images, labels, masks = _unpack(batch)
        img_idx, cls = labels.nonzero(as_tuple=True)
        size = tuple(masks.shape[-2:]) if masks is not None else tuple(images.shape[-2:])
        if masks is not None:
            any_masks = True
            obj = masks[img_idx] == (cls + 1)[:, None, None]
            valid = masks[img_idx] != 255
            center.append(_pair_metrics(loc.center_point_maps(len(cls), *size), obj, valid))
        else:
            center.append(_no_localization(len(cls)))
        labels_all.append(labels)
        classes_all.append(cls)
        image_all.append(img_idx + offset)
        offset += len(images)
        for e in explainers:
            ref_maps = ref_rec = None
            for name, model in _reference_first(models, reference):
                device = model_device(model)
                x = images.to(device)
                raw, out = EXPLAINERS[e](model, x, img_idx.to(device), cls.to(device),
                                         layers.get(name))
                maps, out = upsample(raw, size).float().cpu(), out.float().cpu()
                if not torch.isfinite(out).all():  # NaN scores would pass for maps
                    raise ValueError(f"model {name!r} gives non-finite outputs (NaN or inf) on "
                                     f"images {offset - len(images)}-{offset - 1} of the "
                                     "scored split: its weights or inputs overflow")
                if e == explainers[0]:
                    logits[name].append(out)
                rec = _pair_metrics(maps, obj, valid) if masks is not None else \
                    _no_localization(len(cls))
                rec["predicted"] = predicted_pairs(out, img_idx, cls, single[name])
                if faithfulness:
                    at_input = upsample(raw, tuple(images.shape[-2:])).float()
                    rec.update(faithfulness_aucs(model, x, img_idx, cls, at_input,
                                                 faithfulness_steps, faithfulness_batch,
                                                 "softmax" if single[name] else "sigmoid"))
                if name == reference:
                    ref_maps, ref_rec = maps, rec
                elif ref_maps is not None:
                    rec.update(_agreement(ref_maps, maps, ref_rec, rec))
                pairs[name][e].append(rec)
    def cat(xs, dtype=torch.int64):
        return torch.cat(xs) if xs else torch.zeros(0, dtype=dtype)

    center_cat = {key: cat([c[key] for c in center], torch.float64)
                  for _, key, *_ in LOCALIZATION}
    return {
        "logits": {n: cat(v, torch.float32) for n, v in logits.items()},
        "labels": cat(labels_all, torch.float32),
        "image": cat(image_all), "classes": cat(classes_all),
        "center": center_cat, "center_hit": center_cat["hit_std"], "localization": any_masks,
        "single_label": single,
        "pairs": {n: {e: {k: torch.cat([r[k] for r in recs]) for k in recs[0]}
                      for e, recs in per.items() if recs} for n, per in pairs.items()},
    }


def evaluate_models(models: dict[str, nn.Module], loader: DataLoader, reference: str | None = None,
                    explainers: tuple[str, ...] = ("gradcam",), layers: dict | None = None,
                    progress: bool = True, faithfulness: bool = False,
                    faithfulness_steps: int = FAITHFULNESS_STEPS, faithfulness_batch: int = 64,
                    n_boot: int = 1000, seed: int = 0, per_image: bool = False,
                    baselines: dict[str, str] | None = None,
                    threshold_loader=None, control: str | None = None) -> dict[str, dict]:
    """Task and attribution metrics of each model (by name) on ``loader``.

    Returns ``{name: {"task": {...}, "attribution": {explainer: {...}}}}``. ``task``: a
    single-label (softmax) model's ``top1`` and ``per_class_top1`` (``mAP`` / ``F1`` null); a
    multi-label model's ``mAP``, ``F1`` (probability 0.5), ``top1`` and, given a
    ``threshold_loader`` (the val split; ``loader`` itself when that is the val split, whose
    logits are then reused), ``F1_at_val_threshold`` at the ``F1_val_threshold`` chosen there;
    ``top1_agreement`` with the reference. Paper-mode pointing game and AUC pool
    the pairs the model predicts (paper-comparable); the standard pointing game is the
    per-class mean over every ground-truth pair; agreement pools every ground-truth pair; each
    localisation metric has its ``METRIC_center_baseline`` beside it (definitions:
    :data:`DEFINITIONS`).

    Beside the means each explainer entry has ``per_class`` (``{metric: {class index (str):
    mean}}``, with ``pairs`` counts), for non-reference models ``agreement_ci`` and ``delta``
    (vs the reference: ``{metric: {a, b, delta, ci_low, ci_high}}``, percentile bootstrap over
    images with ``n_boot`` replicates and ``seed``; ``n_boot=0`` skips them), and with
    ``per_image`` ``{metric: [mean per image]}`` in loader order.  ``faithfulness=True`` adds
    RISE deletion / insertion AUCs (``faithfulness_steps`` + 1 forwards per pair, at most
    ``faithfulness_batch`` images at once).

    ``pair_sets``: every localisation and agreement metric on the fixed pair sets
    (:data:`PAIR_SETS`: all ground-truth pairs and, with a ``reference``, the pairs it predicts
    correctly, :func:`pair_set_masks`), pooled and class-balanced, each ``{mean, ci_low,
    ci_high}`` (``n_boot=0``: intervals null).  ``baselines`` maps a matched model's name to
    its naive model's (same recipe, no matching): each such model then gets
    ``gap_recovered`` (:data:`GAP_METRICS` per pair set and aggregation,
    :func:`~.stats.gaps_recovered` against the reference; needs ``n_boot >= 1``). ``control``
    names the fine-tune-only control (the reference fine-tuned like the compressed runs,
    nothing compressed): matched models then also get ``gap_recovered_vs_control``, the share
    of the compression-caused gap (control minus naive) recovered, the control's own values
    standing where the reference's do.
    """
    baselines = dict(baselines or {})
    for matched, naive in baselines.items():
        for n in (matched, naive) + ((control,) if control else ()):
            if n not in models or n == reference:
                raise ValueError(f"baselines name {n!r}, which is not a compared model; "
                                 f"models: {', '.join(models)}")
    data = collect_pairs(models, loader, reference, explainers, layers, progress, faithfulness,
                         faithfulness_steps, faithfulness_batch)
    thresholds = (_best_thresholds(data["logits"], data["labels"], data["single_label"])
                  if threshold_loader is loader else
                  _val_thresholds(models, data["single_label"], threshold_loader))
    opts = {"n_boot": n_boot, "seed": seed, "per_image": per_image, "faithfulness": faithfulness}
    ref_pairs = data["pairs"].get(reference) if reference is not None else None
    rows = {name: _summarise(data, name, ref_pairs if name != reference else None,
                             thresholds.get(name), **opts) for name in models}
    for name, row in rows.items():
        if reference is not None and name != reference:
            row["task"]["top1_agreement"] = top1_agreement(data["logits"][reference],
                                                           data["logits"][name])
    if not len(data["image"]):
        return rows
    sets = pair_set_masks(data["logits"][reference], data["image"], data["classes"],
                          data["single_label"][reference]) \
        if reference is not None else {"all": torch.ones(len(data["image"]), dtype=torch.bool)}
    specs = (LOCALIZATION if data["localization"] else ()) + (FAITHFULNESS if faithfulness
                                                               else ())
    center = {out + CENTER_BASELINE: data["center"][key]
              for out, key, *_ in LOCALIZATION} if data["localization"] else {}
    for e in explainers:
        columns = {name: {**_metric_columns(data["pairs"][name][e], specs), **center}
                   for name in models}
        for name, row in rows.items():
            row["attribution"][e]["pair_sets"] = _pair_set_means(
                columns[name], data["image"], data["classes"], sets, n_boot, seed)
        for matched, naive in baselines.items() if n_boot > 0 and reference is not None else ():
            for key, level in (("gap_recovered", reference), ("gap_recovered_vs_control",
                                                                control)):
                if level is None:
                    continue
                gap = _gap_recovered(columns[level], columns[naive], columns[matched],
                                     data["image"], data["classes"], sets, n_boot, seed)
                rows[matched]["attribution"][e][key] = {"naive": naive, "level": level, **gap}
    return rows


def pair_set_masks(logits: torch.Tensor, image: torch.Tensor, classes: torch.Tensor,
                   single_label: bool = False) -> dict[str, torch.Tensor]:
    """The fixed pair sets of :data:`PAIR_SETS` as boolean masks over the (image, ground-truth
    class) pairs ``image``, ``classes`` (``P``), from the reference model's ``logits``
    (``N x K``): ``all`` (every pair) and ``teacher_correct``, the pairs whose class the
    reference predicts: logit > 0 (multi-label), or the class is its top-1, the first argmax
    (``single_label``, a softmax classifier): :func:`predicted_pairs`."""
    return {"all": torch.ones(len(classes), dtype=torch.bool),
            "teacher_correct": predicted_pairs(logits, image, classes, single_label)}


def predicted_pairs(logits: torch.Tensor, image: torch.Tensor, classes: torch.Tensor,
                    single_label: bool = False) -> torch.Tensor:
    """Per (image, class) pair: does the model whose ``logits`` (``N x K``) these are predict
    the class? logit > 0 for a multi-label model, the class is its top-1 (the first argmax)
    for a ``single_label`` one."""
    if single_label:
        return logits.argmax(dim=1)[image] == classes
    return logits[image, classes] > 0


def _val_thresholds(models: dict, single: dict, loader) -> dict[str, float]:
    """Each multi-label model's F1 threshold (:func:`~.task.best_f1_threshold` of its sigmoid
    probabilities) chosen on ``loader``, in one pass; ``{}`` without a loader."""
    names = [n for n in models if not single[n]]
    if loader is None or not names:
        return {}
    logits, labels = {n: [] for n in names}, []
    with torch.no_grad():
        for batch in loader:
            labels.append(batch[1])
            for n in names:
                x = batch[0].to(model_device(models[n]))
                logits[n].append(models[n](x).float().cpu())
    return _best_thresholds({n: torch.cat(v) for n, v in logits.items()}, torch.cat(labels),
                            single)


def _best_thresholds(logits: dict, labels: torch.Tensor, single: dict) -> dict[str, float]:
    """Each multi-label model's :func:`~.task.best_f1_threshold` of its sigmoid probabilities."""
    return {n: best_f1_threshold(torch.sigmoid(v.float()), labels) for n, v in logits.items()
            if not single[n]}


def _metric_columns(cat: dict, specs) -> dict[str, torch.Tensor]:
    """A model's per-pair values by result key (localisation / faithfulness as in ``specs``,
    agreement when the model has it) as float64 ``P``."""
    cols = {out: cat[key] for out, key, *_ in specs}
    cols.update({k: cat[k] for k in AGREEMENT if k in cat})
    return {k: v.to(torch.float64) for k, v in cols.items()}


def _pair_set_means(columns, image, classes, sets, n_boot, seed) -> dict:
    """``{set: {"pairs", "pooled": {metric: {mean, ci_low, ci_high}}, "class_balanced": ...}}``,
    every metric on one shared set of replicates per set and aggregation."""
    names = list(columns)
    out = {}
    for s, mask in sets.items():
        entry = {"pairs": int(mask.sum())}
        for how in AGGREGATIONS:
            cls = classes if how == "class_balanced" else None
            stats = means_ci(torch.stack([columns[k] for k in names], dim=1), image, mask, cls,
                             n_boot, seed) if names else []
            entry[how] = dict(zip(names, stats))
        out[s] = entry
    return out


def _gap_recovered(teacher, naive, matched, image, classes, sets, n_boot, seed) -> dict:
    """``{set: {aggregation: {metric: gaps_recovered entry}}}`` of :data:`GAP_METRICS` that
    both compressed models have; the reference's agreement with itself is
    :data:`SELF_AGREEMENT`."""
    keys = [k for k in GAP_METRICS if k in naive and k in matched]
    if not keys:
        return {}
    n_pairs = len(image)
    t = torch.stack([teacher[k] if k in teacher else
                     torch.full((n_pairs,), SELF_AGREEMENT[k], dtype=torch.float64)
                     for k in keys], dim=1)
    n, m = (torch.stack([cols[k] for k in keys], dim=1) for cols in (naive, matched))
    return {s: {how: dict(zip(keys, gaps_recovered(
                t, n, m, image, mask, classes if how == "class_balanced" else None, n_boot,
                seed))) for how in AGGREGATIONS} for s, mask in sets.items()}


def _reference_first(models, reference):
    items = list(models.items())
    return sorted(items, key=lambda kv: kv[0] != reference)


def _filter(rec, which):
    return rec["predicted"] if which == "predicted" else None


def _per_class(values: torch.Tensor, classes: torch.Tensor, where=None) -> dict[str, float]:
    """``{str(class): mean}`` over the pairs of each class present (NaN values skipped)."""
    v = values.double() if where is None else values.double().masked_fill(~where, float("nan"))
    return {str(int(k)): _mean(v[classes == k]) for k in torch.unique(classes)}


def _aggregate(values: torch.Tensor, classes: torch.Tensor, where, balanced: bool) -> float:
    """Mean of ``values`` over the pairs ``where`` (all when ``None``), or the mean of the
    per-class means (``balanced``)."""
    if not balanced:
        return _mean(values, where)
    return loc.per_class_mean(values, classes) if where is None else \
        loc.per_class_mean(values[where], classes[where])


def _task(logits, labels, single: bool, threshold: float | None) -> dict:
    """Task quality: top-1 for a single-label model, mAP / F1 (and F1 at ``threshold``) and
    top-1 for a multi-label one (:func:`evaluate_models`)."""
    top1 = top1_accuracy(logits, labels)
    if single:
        return {"scoring": "single-label", "top1": top1,
                "per_class_top1": per_class_top1(logits, labels), "mAP": float("nan"),
                "F1": float("nan"), "per_class_AP": []}
    m_ap, per_class = mean_average_precision(logits, labels)
    probs = torch.sigmoid(logits)
    task = {"scoring": "multi-label", "mAP": m_ap, "F1": sample_f1(probs, labels), "top1": top1,
            "per_class_AP": per_class}
    if threshold is not None:
        task.update(F1_val_threshold=threshold,
                    F1_at_val_threshold=sample_f1(probs, labels, threshold))
    return task


def _summarise(data, name, ref_pairs, threshold, n_boot, seed, per_image, faithfulness) -> dict:
    logits, labels, classes = data["logits"][name], data["labels"], data["classes"]
    row = {"task": _task(logits, labels, data["single_label"][name], threshold),
           "attribution": {}}
    specs = LOCALIZATION + (FAITHFULNESS if faithfulness else ())
    for e, cat in data["pairs"][name].items():
        pred = cat["predicted"]
        att = {out: _aggregate(cat[key], classes, _filter(cat, which), balanced)
               for out, key, which, balanced in specs}
        att.update({out + CENTER_BASELINE: _aggregate(data["center"][key], classes,
                                                      _filter(cat, which), balanced)
                    for out, key, which, balanced in LOCALIZATION})
        att.update(pairs=int(len(pred)), predicted_pairs=int(pred.sum()))
        pc = {"pairs": {str(int(k)): int((classes == k).sum()) for k in torch.unique(classes)}}
        pc.update({out: _per_class(cat[key], classes, _filter(cat, which))
                   for out, key, which, _ in specs})
        with_agreement = ref_pairs is not None and "spearman" in cat
        if with_agreement:
            att["agreement"] = {k: _mean(cat[k]) for k in AGREEMENT}
            pc.update({k: _per_class(cat[k], classes) for k in AGREEMENT})
            if n_boot > 0:
                att["agreement_ci"], att["delta"] = _bootstrap(
                    cat, ref_pairs[e], data["image"], classes, specs, n_boot, seed)
        att["per_class"] = pc
        if per_image:
            att["per_image"] = _per_image(cat, data["image"], len(labels), specs,
                                          AGREEMENT if with_agreement else ())
        row["attribution"][e] = att
    return row


def _bootstrap(cat, ref, image, classes, specs, n_boot, seed) -> tuple[dict, dict]:
    """Agreement means' CIs and localisation / faithfulness deltas (this model minus the
    reference) with CIs, all from one set of image-level bootstrap replicates."""
    agreement = {k: mean_ci(cat[k], image, n_boot=n_boot, seed=seed) for k in AGREEMENT}
    agreement = {k: {"ci_low": v["ci_low"], "ci_high": v["ci_high"]}
                 for k, v in agreement.items()}
    delta = {}
    for out, key, which, balanced in specs:
        delta[out] = delta_ci(ref[key], cat[key], image, _filter(ref, which), _filter(cat, which),
                              classes if balanced else None, n_boot, seed)
        for k in ("n_boot", "confidence"):
            delta[out].pop(k)
    return agreement, delta


def _per_image(cat, image, n_images, specs, agreement_keys) -> dict[str, list]:
    """``{metric: [mean over the image's pairs]}`` (localisation over all its pairs, i.e.
    unfiltered), NaN for images without pairs."""
    keys = [(out, key) for out, key, *_ in specs] + [(k, k) for k in agreement_keys]
    return {out: group_means(cat[key], image, n_images).tolist() for out, key in keys}


def model_cost(models: dict[str, nn.Module], input_shape: tuple[int, ...],
               checkpoints: dict[str, str | Path] | None = None, repeats: int = 20,
               deployed: dict[str, nn.Module] | None = None) -> dict:
    """Params, non-zero params, MACs, bytes on disk and batch-1 CPU latency, measured together.

    ``checkpoints`` maps a name to a weights file or a checkpoint folder (its
    ``model.safetensors``); ``deployed`` maps a name to the module that ships in place of the
    evaluated one (e.g. the int8 conversion of a fake-quant model), which is the one timed.
    """
    checkpoints, deployed = checkpoints or {}, deployed or {}
    out = {}
    for name, model in models.items():
        ckpt = checkpoints.get(name)
        if ckpt is not None and not Path(ckpt).is_file():
            ckpt = Path(ckpt) / "model.safetensors"
        out[name] = {
            "params": count_params(model),
            "nonzero_params": count_nonzero_params(model),
            "macs": count_macs(model, input_shape),
            "bytes": file_bytes(ckpt) if ckpt else None,
        }
    # Latency interleaved over rounds so machine noise hits every model alike.
    lat = {n: [] for n in models}
    for _ in range(3):
        for name, model in models.items():
            lat[name].append(latency_ms(deployed.get(name, model), input_shape, warmup=2,
                                        repeats=repeats))
    for name in models:
        out[name]["latency_ms"] = float(np.median(lat[name]))
    return out


def nan_to_none(obj):
    """JSON-safe copy: NaN floats become null."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    return obj
