"""Localisation on real photos whose masks use another label space than the model's classes.

An ImageNet classifier on COCO photos (``coco128:PATH``): the reference model's top-1 class is
explained for every model (as agreement is), and scored against the mask of the COCO category
it depicts when that category is in the photo (``category_ids``, e.g.
:func:`attrpreserve.data.coco.coco_ids`): pointing game (paper mode) and pixel ROC-AUC, the
functions of :mod:`.localization`. For every masked photo, whatever its top-1, the energy share
of the map (positive mass) on COCO things and on any labelled pixel (things + stuff) says how
much of the explanation sits on objects rather than on unlabeled background.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import logs
from ..attribution import EXPLAINERS, upsample
from ..attribution.api import model_device
from . import localization as loc
from .stats import delta_ci, mean_ci

__all__ = ["mask_localization", "MASK_METRICS"]

MASK_METRICS = ("pointing_game", "auc", "energy_things", "energy_labelled")
DEFINITIONS = {
    "pointing_game": "first argmax of the map (input size) inside the mask of the COCO category "
                     "of the reference's top-1 ImageNet class; photos where that category is "
                     "present",
    "auc": "pixel ROC-AUC of the map against that mask; same photos",
    "energy_things": "positive map mass on COCO thing pixels (ids 1-90) / positive mass; every "
                     "masked photo",
    "energy_labelled": "positive map mass on labelled pixels (things and stuff, id > 0) / "
                       "positive mass; 1 minus it is the share on unlabeled background",
    "pointing_game_center": "the pointing game of a map peaked at the image centre (baseline)",
    "things_area": "share of pixels that are things: a uniform map's energy_things",
}


def _targets(region: torch.Tensor, classes: torch.Tensor, category_ids) -> torch.Tensor:
    """B x H x W: pixels of the categories that each image's class depicts."""
    out = torch.zeros(region.shape, dtype=torch.bool)
    for i, c in enumerate(classes.tolist()):
        ids = sorted(category_ids(c))
        if ids:
            out[i] = torch.isin(region[i], torch.tensor(ids))
    return out


def _nan_unless(values: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    return torch.where(ok, values.to(torch.float64), torch.full_like(values, float("nan"),
                                                                     dtype=torch.float64))


def mask_localization(models: dict[str, nn.Module], loader, reference: str,
                      category_ids: Callable[[int], Iterable[int]],
                      explainers: tuple[str, ...] = ("gradcam",), layers: dict | None = None,
                      things: range = range(1, 91), n_boot: int = 1000, seed: int = 0,
                      progress: bool = True) -> dict:
    """Score every model's maps of the reference's top-1 class against real masks.

    ``loader`` yields ``(images, labels, mask, region)`` with ``region`` the category id per
    pixel (0 unlabeled, -1 everywhere for a photo without mask; such photos are skipped), e.g.
    a ``coco128:`` split. Returns ``{"images", "pairs", "classes": {class: photos},
    "baselines", "models": {name: {explainer: {metric: {mean, ci_low, ci_high}}}}, "delta":
    {name: {explainer: {metric: delta_ci}}} (vs the reference), "definitions"}``; CIs are
    percentile bootstrap over photos (``n_boot`` replicates, 0: none).
    """
    if reference not in models:
        raise ValueError(f"reference {reference!r} is not one of the models")
    layers = layers or {}
    values = {n: {e: {k: [] for k in MASK_METRICS} for e in explainers} for n in models}
    center, things_area, labelled_area, top1 = [], [], [], []
    ref = models[reference].eval()
    for batch in tqdm(loader, desc="mask localisation", leave=False, disable=not logs.bars(progress)):
        images, region = batch[0], batch[3].long()
        keep = (region >= 0).flatten(1).any(1)
        if not keep.any():
            continue
        images, region = images[keep], region[keep]
        with torch.no_grad():
            cls = ref(images.to(model_device(ref))).argmax(1).cpu()
        target = _targets(region, cls, category_ids)
        has = target.flatten(1).any(1)
        is_thing = (region >= things.start) & (region < things.stop)
        labelled = region > 0
        size = tuple(region.shape[-2:])
        top1.append(cls)
        center.append(_nan_unless(loc.pointing_hits(
            loc.center_point_maps(len(cls), *size), target), has))
        things_area.append(is_thing.flatten(1).double().mean(1))
        labelled_area.append(labelled.flatten(1).double().mean(1))
        index = torch.arange(len(cls))
        for name, model in models.items():
            model.eval()
            device = model_device(model)
            for e in explainers:
                raw, _ = EXPLAINERS[e](model, images.to(device), index.to(device),
                                       cls.to(device), layers.get(name))
                maps = upsample(raw, size).float().cpu()
                rec = values[name][e]
                rec["pointing_game"].append(_nan_unless(loc.pointing_hits(maps, target), has))
                rec["auc"].append(_nan_unless(loc.roc_auc(maps, target), has))
                rec["energy_things"].append(loc.energy_pointing_game(maps, is_thing))
                rec["energy_labelled"].append(loc.energy_pointing_game(maps, labelled))
    if not top1:
        raise ValueError("no photo with a mask in the loader")
    cls = torch.cat(top1)
    photos = torch.arange(len(cls))
    cat = {n: {e: {k: torch.cat(v) for k, v in per.items()} for e, per in d.items()}
           for n, d in values.items()}
    mapped = ~torch.isnan(torch.cat(center))

    def summary(v):
        if n_boot > 0:
            out = mean_ci(v, photos, n_boot=n_boot, seed=seed)
            return {k: out[k] for k in ("mean", "ci_low", "ci_high")}
        ok = v[~torch.isnan(v)]
        return {"mean": float(ok.mean()) if len(ok) else float("nan")}

    result = {
        "images": len(cls), "pairs": int(mapped.sum()),
        "classes": {str(int(c)): int((cls[mapped] == c).sum())
                    for c in torch.unique(cls[mapped])},
        "baselines": {"pointing_game_center": summary(torch.cat(center))["mean"],
                      "things_area": float(torch.cat(things_area).mean()),
                      "labelled_area": float(torch.cat(labelled_area).mean())},
        "models": {n: {e: {k: summary(v) for k, v in per.items()} for e, per in d.items()}
                   for n, d in cat.items()},
        "definitions": DEFINITIONS,
    }
    if n_boot > 0:
        result["delta"] = {
            n: {e: {k: {key: val for key, val in delta_ci(cat[reference][e][k], v, photos,
                                                          n_boot=n_boot, seed=seed).items()
                        if key in ("delta", "ci_low", "ci_high")}
                    for k, v in per.items()} for e, per in d.items()}
            for n, d in cat.items() if n != reference}
    return result
