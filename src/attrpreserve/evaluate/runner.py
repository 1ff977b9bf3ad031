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

from ..attribution import EXPLAINERS, upsample
from . import agreement as agr
from . import localization as loc
from .cost import count_macs, count_nonzero_params, count_params, file_bytes, latency_ms
from .task import mean_average_precision, sample_f1

STD_TOLERANCE = 15.0  # px, the standard pointing game's tolerance (Zhang et al. 2016)
ARGMAX_TOLERANCE = 4.0  # px at input resolution: "the peak lands where the teacher's does"
TOPK = 0.1  # fraction of pixels in the top-k agreement sets


def _pair_metrics(maps, masks, valid) -> dict[str, torch.Tensor]:
    return {
        "hit": loc.pointing_hits(maps, masks, valid),
        "hit_std": loc.pointing_hits_tolerance(maps, masks, STD_TOLERANCE, valid),
        "auc": loc.roc_auc(maps, masks, valid),
        "energy": loc.energy_pointing_game(maps, masks, valid),
    }


def _agreement(ref, maps) -> dict[str, torch.Tensor]:
    return {
        "spearman": agr.spearman(ref, maps),
        "topk_iou": agr.topk_iou(ref, maps, TOPK),
        "topk_intersection": agr.topk_intersection(ref, maps, TOPK),
        "cosine": agr.cosine(ref, maps),
        "argmax_agree": agr.argmax_agreement(ref, maps, ARGMAX_TOLERANCE),
        "com_shift": agr.center_of_mass_shift(ref, maps),
    }


def _mean(x: torch.Tensor, where: torch.Tensor | None = None) -> float:
    x = x.double()
    if where is not None:
        x = x[where]
    x = x[~torch.isnan(x)]
    return float(x.mean()) if len(x) else float("nan")


def evaluate_models(models: dict[str, nn.Module], loader: DataLoader, reference: str | None = None,
                    explainers: tuple[str, ...] = ("gradcam",), layers: dict | None = None,
                    progress: bool = True) -> dict[str, dict]:
    """Task and attribution metrics of each model (by name) on ``loader``.

    Returns ``{name: {"task": {...}, "attribution": {explainer: {...}}}}``. Paper-mode pointing
    game and AUC pool the pairs the model predicts (logit > 0); the standard pointing game is
    the per-class mean over every ground-truth pair; agreement pools every ground-truth pair.
    """
    for e in explainers:
        if e not in EXPLAINERS:
            raise ValueError(f"unknown explainer {e!r}; known: {', '.join(EXPLAINERS)}")
    layers = layers or {}
    logits = {n: [] for n in models}
    pairs = {n: {e: [] for e in explainers} for n in models}
    labels_all, classes_all, center = [], [], []
    for m in models.values():
        m.eval()
    for images, labels, masks in tqdm(loader, desc="evaluate", leave=False, disable=not progress):
        img_idx, cls = labels.nonzero(as_tuple=True)
        obj = masks[img_idx] == (cls + 1)[:, None, None]
        valid = masks[img_idx] != 255
        labels_all.append(labels)
        classes_all.append(cls)
        center.append(loc.pointing_hits_tolerance(
            loc.center_point_maps(len(cls), *obj.shape[1:]), obj, STD_TOLERANCE, valid))
        for e in explainers:
            ref_maps = None
            for name, model in _reference_first(models, reference):
                device = next(model.parameters()).device
                raw, out = EXPLAINERS[e](model, images.to(device), img_idx.to(device),
                                         cls.to(device), layers.get(name))
                maps, out = upsample(raw, obj.shape[1:]).float().cpu(), out.float().cpu()
                if e == explainers[0]:
                    logits[name].append(out)
                rec = _pair_metrics(maps, obj, valid)
                rec["predicted"] = out[img_idx, cls] > 0
                if name == reference:
                    ref_maps = maps
                elif ref_maps is not None:
                    rec.update(_agreement(ref_maps, maps))
                pairs[name][e].append(rec)
    labels_all, classes_all = torch.cat(labels_all), torch.cat(classes_all)
    baseline = float(torch.cat(center).float().mean()) if center else float("nan")
    return {name: _summarise(torch.cat(logits[name]), labels_all, classes_all, pairs[name],
                             baseline, name != reference and reference is not None)
            for name in models}


def _reference_first(models, reference):
    items = list(models.items())
    return sorted(items, key=lambda kv: kv[0] != reference)


def _summarise(logits, labels, classes, per_explainer, center_baseline, with_agreement) -> dict:
    m_ap, per_class = mean_average_precision(logits, labels)
    row = {"task": {"mAP": m_ap, "F1": sample_f1(torch.sigmoid(logits), labels),
                    "per_class_AP": per_class}, "attribution": {}}
    for e, recs in per_explainer.items():
        cat = {k: torch.cat([r[k] for r in recs]) for k in recs[0]}
        pred = cat["predicted"]
        hit_std = cat["hit_std"].double()
        att = {
            "pointing_game": _mean(cat["hit"], pred),
            "pointing_game_std": loc.per_class_mean(hit_std, classes),
            "pointing_game_std_center_baseline": center_baseline,
            "auc": _mean(cat["auc"], pred),
            "energy_pg": _mean(cat["energy"]),
            "pairs": int(len(pred)),
            "predicted_pairs": int(pred.sum()),
        }
        if with_agreement:
            att["agreement"] = {k: _mean(cat[k]) for k in
                                ("spearman", "topk_iou", "topk_intersection", "cosine",
                                 "argmax_agree", "com_shift")}
        row["attribution"][e] = att
    return row


def model_cost(models: dict[str, nn.Module], input_shape: tuple[int, ...],
               checkpoints: dict[str, str | Path] | None = None, repeats: int = 20) -> dict:
    """Params, non-zero params, MACs, bytes on disk and batch-1 CPU latency, measured together."""
    checkpoints = checkpoints or {}
    out = {}
    for name, model in models.items():
        ckpt = checkpoints.get(name)
        out[name] = {
            "params": count_params(model),
            "nonzero_params": count_nonzero_params(model),
            "macs": count_macs(model, input_shape),
            "bytes": file_bytes(Path(ckpt) / "model.safetensors") if ckpt else None,
        }
    # Latency interleaved over rounds so machine noise hits every model alike.
    lat = {n: [] for n in models}
    for _ in range(3):
        for name, model in models.items():
            lat[name].append(latency_ms(model, input_shape, warmup=2, repeats=repeats))
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
