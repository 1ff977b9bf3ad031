"""Localization metrics: a saliency map against the ground-truth object mask.

Conventions (shared by the whole ``evaluate`` package)
------------------------------------------------------
``maps``   float tensor ``P x H x W``: one saliency map per (image, class) pair, any scale, may
           be negative or all zero.
``masks``  bool tensor ``P x H x W``: the object's pixels for that pair's class.
``valid``  optional bool tensor ``P x H x W``: pixels that count.  ``False`` marks VOC's 255
           (void / boundary) pixels, which are neither object nor background.

Every function is vectorised over the ``P`` pairs and returns one value per pair (float64 or
bool) on the CPU, so callers can pool, bootstrap or filter them.  Pixel coordinates are
``(row, col)`` indices, distances are Euclidean distances in pixels.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from scipy.stats import rankdata

__all__ = [
    "pointing_hits",
    "pointing_hits_tolerance",
    "per_class_mean",
    "center_point_maps",
    "roc_auc",
    "energy_pointing_game",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
]

# The centre baseline's Gaussian width, as a share of the shorter side (center_point_maps)
CENTER_SIGMA = 0.25
# Upper bound on elements materialised at once by chunked computations (float64: 64 MiB).
_CHUNK_ELEMENTS = 1 << 23


# --------------------------------------------------------------------------- helpers
def _check_maps(maps) -> torch.Tensor:
    maps = torch.as_tensor(maps)
    if maps.dim() != 3:
        raise ValueError(f"maps must be P x H x W, got shape {tuple(maps.shape)}")
    if maps.is_complex():
        raise TypeError("maps must be real-valued")
    return maps


def _check_bool(name: str, x, like: torch.Tensor) -> torch.Tensor:
    """Return ``x`` as a bool tensor on ``like``'s device with ``like``'s shape.

    Non-bool inputs are accepted only if they hold 0/1 values, so that a raw VOC label
    (255 = void) can't silently become object pixels: pass void pixels through ``valid``.
    """
    x = torch.as_tensor(x, device=like.device)
    if tuple(x.shape) != tuple(like.shape):
        raise ValueError(f"{name} must have shape {tuple(like.shape)}, got {tuple(x.shape)}")
    if x.dtype != torch.bool:
        if not bool(((x == 0) | (x == 1)).all()):
            raise ValueError(f"{name} must be binary (0/1 or bool); pass void pixels via `valid`")
        x = x != 0
    return x


def _check_inputs(maps, masks, valid):
    """Validated ``(maps, masks, valid)`` as documented in the module docstring."""
    maps = _check_maps(maps)
    masks = _check_bool("masks", masks, maps)
    return maps, masks, None if valid is None else _check_bool("valid", valid, maps)


def _row_chunks(n_rows: int, row_elems: int) -> Iterator[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(1, row_elems))
    for start in range(0, n_rows, step):
        yield slice(start, min(n_rows, start + step))


def _first_argmax(maps: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Flat index (row-major) of the first maximum of each map, ``torch.argmax`` semantics.

    Pixels with ``valid == False`` are set to ``-inf`` first, so they are never chosen unless
    the whole row is void (callers handle that case).
    """
    flat = maps.reshape(maps.shape[0], -1)
    if valid is not None:
        if not flat.is_floating_point():
            flat = flat.to(torch.float64)
        flat = flat.masked_fill(~valid.reshape(flat.shape), float("-inf"))
    return torch.argmax(flat, dim=1)


def _argmax_rc(maps: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``P x 2`` int64 tensor of the (row, col) of the first argmax of each map."""
    width = maps.shape[2]
    idx = _first_argmax(maps, valid)
    return torch.stack((idx // width, idx % width), dim=1)


# --------------------------------------------------------------------------- pointing game
def pointing_hits(maps, masks, valid=None) -> torch.Tensor:
    """Pointing game, paper mode: hit iff the map's first argmax pixel lies inside the mask.

    The argmax is ``torch.argmax`` of the row-major flattened map, i.e. among tied maxima the
    first in row-major order wins.  Void pixels (``valid == False``) are removed from the argmax
    candidates (set to ``-inf``), so the point always lands on a pixel that is object or
    background; a pair with no valid pixel is a miss.  Which pairs count (the paper keeps only
    classes the model predicts, logit > 0) is the caller's filter; the score is the mean over
    the pooled pairs.

    Returns
    -------
    bool tensor ``P``.
    """
    maps, masks, valid = _check_inputs(maps, masks, valid)
    idx = _first_argmax(maps, valid)
    flat_masks = masks.reshape(masks.shape[0], -1)
    hits = flat_masks.gather(1, idx[:, None])[:, 0]
    if valid is not None:
        flat_valid = valid.reshape(valid.shape[0], -1)
        hits = hits & flat_valid.gather(1, idx[:, None])[:, 0]
    return hits.cpu()


def pointing_hits_tolerance(
    maps, masks, tolerance: float = 15.0, valid=None, inclusive: bool = False
) -> torch.Tensor:
    """Pointing game, standard mode (Zhang et al., "Top-down Neural Attention by Excitation
    Backprop", ECCV 2016; reference implementation TorchRay ``PointingGame.evaluate``).

    Hit iff the Euclidean distance (in pixels) from the map's first argmax pixel to the nearest
    mask pixel is below ``tolerance``.  Like TorchRay (``accept = d**2 < tolerance**2``) the
    comparison is strict by default, so a peak exactly 15 px from the object is a miss;
    ``inclusive=True`` uses ``<=`` instead.  Void pixels are excluded from the argmax candidates
    (as in :func:`pointing_hits`) and are not object pixels.  Aggregate with
    :func:`per_class_mean` (accuracy per class, then mean over classes) and report the
    :func:`center_point_maps` baseline beside it.

    Returns
    -------
    bool tensor ``P``.
    """
    maps, masks, valid = _check_inputs(maps, masks, valid)
    if valid is not None:
        masks = masks & valid
    n, h, w = maps.shape
    point = _argmax_rc(maps, valid)
    rows = torch.arange(h, device=maps.device)
    cols = torch.arange(w, device=maps.device)
    big = torch.iinfo(torch.int64).max
    d2_min = torch.empty(n, dtype=torch.int64, device=maps.device)
    for sl in _row_chunks(n, h * w):
        dr2 = (rows[None, :] - point[sl, 0:1]) ** 2  # p x H
        dc2 = (cols[None, :] - point[sl, 1:2]) ** 2  # p x W
        d2 = dr2[:, :, None] + dc2[:, None, :]
        d2 = d2.masked_fill(~masks[sl], big)
        d2_min[sl] = d2.reshape(d2.shape[0], -1).amin(dim=1)
    has_mask = masks.reshape(n, -1).any(dim=1)
    tol2 = float(tolerance) ** 2
    d2f = d2_min.to(torch.float64)
    hits = (d2f <= tol2) if inclusive else (d2f < tol2)
    hits = hits & has_mask
    if valid is not None:
        hits = hits & valid.reshape(n, -1).any(dim=1)
    return hits.cpu()


def per_class_mean(values, classes) -> float:
    """Mean over classes of the per-class mean of ``values`` (standard pointing-game accuracy).

    ``values`` (bool or float, ``P``) and ``classes`` (int, ``P``) are per pair.  Classes without
    pairs are skipped (TorchRay averages over all dataset classes, which is the same whenever
    every class occurs).  NaN values are treated as missing pairs.  NaN if nothing remains.
    """
    values = torch.as_tensor(values).detach().reshape(-1).to("cpu", torch.float64)
    classes = torch.as_tensor(classes).detach().reshape(-1).to("cpu", torch.int64)
    if values.shape != classes.shape:
        raise ValueError("values and classes must have the same length")
    keep = ~torch.isnan(values)
    values, classes = values[keep], classes[keep]
    if values.numel() == 0:
        return float("nan")
    uniq, inverse = torch.unique(classes, return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, values)
    counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(
        0, inverse, torch.ones_like(values)
    )
    return float((sums / counts).mean())


def center_point_maps(P: int, H: int, W: int, sigma: float = CENTER_SIGMA) -> torch.Tensor:
    """The centre baseline: maps ``P x H x W`` (float64) that know nothing of the image, a
    Gaussian ``exp(-d**2 / (2 s**2))`` of the distance ``d`` to pixel ``(H // 2, W // 2)``
    (TorchRay's ``center`` method points at ``(w / 2, h / 2)``), ``s = sigma * min(H, W)``.

    The maximum is unique and at that pixel (the pointing-game baseline); the values fall
    strictly with the distance, so the pixel AUC equals that of the negative distance to the
    centre, and the positive mass spreads over the middle of the image in proportion to its size
    (the energy and relevance baselines do not depend on the resolution).
    """
    rows = torch.arange(H, dtype=torch.float64) - H // 2
    cols = torch.arange(W, dtype=torch.float64) - W // 2
    d2 = rows[:, None] ** 2 + cols[None, :] ** 2
    s = sigma * min(H, W)
    return torch.exp(-d2 / (2 * s * s)).expand(P, H, W).clone()


# --------------------------------------------------------------------------- AUC / energy
def _auc_from_ranks(ranks: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mann-Whitney U / (n_pos * n_neg) per row; NaN where a class is missing."""
    n = labels.shape[1]
    n_pos = labels.sum(axis=1).astype(np.float64)
    n_neg = n - n_pos
    rank_sum = np.where(labels, ranks, 0.0).sum(axis=1)
    u = rank_sum - n_pos * (n_pos + 1.0) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = u / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def roc_auc(maps, masks, valid=None) -> torch.Tensor:
    """Pixel-wise ROC-AUC of each map (scores) against its mask (labels) (Park et al.).

    Exact: the Mann-Whitney statistic with average ranks for ties
    (``scipy.stats.rankdata(method="average")``), which equals
    ``sklearn.metrics.roc_auc_score(mask, map)`` (tied scores get half credit).  Only valid
    pixels count (void pixels are dropped, rows without void are ranked together, the others
    one by one).  Invariant to any strictly increasing rescaling (e.g. min-max normalisation);
    a constant map gives 0.5.  NaN when the (valid) mask is all positive or all negative, or
    the map contains NaN.

    Returns
    -------
    float64 tensor ``P`` on the CPU.
    """
    maps = _check_maps(maps)
    masks = _check_bool("masks", masks, maps)
    n = maps.shape[0]
    scores = maps.detach().reshape(n, -1).to("cpu", torch.float64).numpy()
    labels = masks.reshape(n, -1).cpu().numpy()
    out = np.full(n, np.nan, dtype=np.float64)
    if valid is None:
        full = np.arange(n)
        partial = np.arange(0)
    else:
        valid_np = _check_bool("valid", valid, maps).reshape(n, -1).cpu().numpy()
        all_valid = valid_np.all(axis=1)
        full, partial = np.flatnonzero(all_valid), np.flatnonzero(~all_valid)
    n_pix = scores.shape[1]
    for sl in _row_chunks(len(full), n_pix):
        rows = full[sl]
        if n_pix == 0:
            continue
        ranks = rankdata(scores[rows], method="average", axis=1)
        out[rows] = _auc_from_ranks(ranks, labels[rows])
    for i in partial:
        keep = valid_np[i]
        if not keep.any():
            continue
        ranks = rankdata(scores[i, keep], method="average")
        out[i] = _auc_from_ranks(ranks[None, :], labels[i, keep][None, :])[0]
    return torch.from_numpy(out)


def energy_pointing_game(maps, masks, valid=None) -> torch.Tensor:
    """Energy-based pointing game (Wang et al., "Score-CAM", CVPR-W 2020).

    ``sum(relu(map) * mask) / sum(relu(map))`` over valid pixels: the share of the positive
    attribution that falls on the object.  NaN when the map has no positive (valid) value.

    Returns
    -------
    float64 tensor ``P`` on the CPU.
    """
    maps = _check_maps(maps)
    masks = _check_bool("masks", masks, maps)
    pos = maps.detach().to(torch.float64).clamp(min=0)
    if valid is not None:
        pos = pos * _check_bool("valid", valid, maps)
    n = maps.shape[0]
    inside = (pos * masks).reshape(n, -1).sum(dim=1)
    total = pos.reshape(n, -1).sum(dim=1)
    out = torch.where(total > 0, inside / total, torch.full_like(total, float("nan")))
    return out.cpu()


# --------------------------------------------------------------------------- Arras et al.
def _pooled_relevance(maps: torch.Tensor, pooling: str) -> torch.Tensor:
    """Non-negative relevance per pixel, as the CLEVR-XAI evaluation requires:
    ``"pos"`` keeps the positive part (their ``sum,pos`` pooling), ``"abs"`` the magnitude."""
    x = maps.detach().to(torch.float64)
    if pooling == "pos":
        return x.clamp(min=0)
    if pooling == "abs":
        return x.abs()
    raise ValueError(f"pooling must be 'pos' or 'abs', got {pooling!r}")


def _relevance_and_object(maps, masks, valid, pooling):
    """Checked inputs as (pooled relevance, valid object pixels, valid) for the Arras metrics."""
    maps, masks, valid = _check_inputs(maps, masks, valid)
    obj = masks if valid is None else masks & valid
    return _pooled_relevance(maps, pooling), obj, valid


def relevance_mass_accuracy(maps, masks, valid=None, pooling: str = "pos") -> torch.Tensor:
    """Relevance mass accuracy (Arras et al., "CLEVR-XAI", Information Fusion 2022):
    ``R_within / R_total``, the share of the (non-negative, see ``pooling``) relevance that lies
    on the object's pixels.

    Void pixels count in neither sum.  With ``pooling="pos"`` this equals
    :func:`energy_pointing_game` wherever the object has a valid pixel.  NaN when the object has
    no valid pixel or the map no relevance.

    Returns
    -------
    float64 tensor ``P`` on the CPU.
    """
    rel, obj, valid = _relevance_and_object(maps, masks, valid, pooling)
    if valid is not None:
        rel = rel * valid
    n = rel.shape[0]
    inside = (rel * obj).reshape(n, -1).sum(dim=1)
    total = rel.reshape(n, -1).sum(dim=1)
    ok = (total > 0) & obj.reshape(n, -1).any(dim=1)
    return torch.where(ok, inside / total, torch.full_like(total, float("nan"))).cpu()


def relevance_rank_accuracy(maps, masks, valid=None, pooling: str = "pos") -> torch.Tensor:
    """Relevance rank accuracy (Arras et al., "CLEVR-XAI", Information Fusion 2022): with ``K``
    the number of object pixels, the fraction of the ``K`` most relevant pixels that lie on the
    object, ``|top_K ∩ GT| / K``.

    Relevance is pooled as in :func:`relevance_mass_accuracy`.  Ties at the K-th value go to
    the lower row-major index (stable descending sort), so the result is deterministic.  Void
    pixels are never ranked and ``K`` counts valid object pixels only.  NaN when ``K = 0``.

    Returns
    -------
    float64 tensor ``P`` on the CPU.
    """
    rel, obj, valid = _relevance_and_object(maps, masks, valid, pooling)
    if valid is not None:
        rel = rel.masked_fill(~valid, float("-inf"))
    n = rel.shape[0]
    flat, flat_obj = rel.reshape(n, -1), obj.reshape(n, -1)
    k = flat_obj.sum(dim=1)
    out = torch.full((n,), float("nan"), dtype=torch.float64, device=rel.device)
    positions = torch.arange(flat.shape[1], device=rel.device)
    for sl in _row_chunks(n, 2 * flat.shape[1]):
        order = torch.sort(flat[sl], dim=1, descending=True, stable=True).indices
        on_object = flat_obj[sl].gather(1, order) & (positions[None, :] < k[sl, None])
        hits = on_object.sum(dim=1).to(torch.float64)
        out[sl] = torch.where(k[sl] > 0, hits / k[sl].clamp(min=1), out[sl])
    return out.cpu()
