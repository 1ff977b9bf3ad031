"""Bootstrap confidence intervals over images for per-pair metrics and their paired deltas.

Why over images: the pairs of one image (one per ground-truth class) share the image and are
not independent, so the resampling unit is the image.  A bootstrap replicate draws ``n_images``
images with replacement; each pair then counts as many times as its image was drawn (its
*weight*).  Every statistic here is a (class-balanced) weighted mean, so one matrix product per
chunk of replicates evaluates all metrics on the same replicates: deltas between two models are
paired (both models see the same resampled images).

Confidence intervals are percentile intervals (Efron): the ``(1 - confidence) / 2`` and
``(1 + confidence) / 2`` quantiles (numpy's linear interpolation) of the replicates, with a fixed
seed (``numpy.random.default_rng(seed)``).  NaN values are missing pairs; replicates whose
statistic is undefined (e.g. no pair left in a filter) are ignored by the quantiles.

Gap recovered (:func:`gaps_recovered`) is a ratio of two such paired differences; its interval
is the percentile interval of the ratio computed replicate by replicate, reported only where the
gap's own interval excludes 0 (docs/metrics.md, "Fixed pair sets, class-balanced means and gap
recovered").
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

__all__ = [
    "resample_weights",
    "bootstrap_means",
    "percentile_ci",
    "mean_ci",
    "means_ci",
    "delta_ci",
    "gap_recovered",
    "gaps_recovered",
    "group_means",
    "bootstrap_columns",
]

_CHUNK_ELEMENTS = 1 << 22  # weights materialised at once (float64: 32 MiB)


def _np(x, dtype=None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.to(torch.float64) if x.is_floating_point() else x
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def resample_weights(groups, n_boot: int = 1000, seed: int = 0) -> Iterator[np.ndarray]:
    """Bootstrap replicates as pair weights, in chunks of ``b x P`` float64 arrays.

    ``groups`` (``P``, any hashable ids, e.g. image indices) says which pairs move together.
    Each replicate draws ``G`` groups uniformly with replacement (``G`` distinct groups); a
    pair's weight is how often its group was drawn.  Deterministic in ``seed``; the draws do
    not depend on how many pairs a group has, only on ``G``, ``n_boot`` and ``seed``.
    """
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    _, inverse = np.unique(_np(groups).reshape(-1), return_inverse=True)
    n_groups, n_pairs = int(inverse.max()) + 1 if len(inverse) else 0, len(inverse)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, n_pairs + n_groups))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        draws = rng.integers(0, max(1, n_groups), size=(b, n_groups))
        offsets = (np.arange(b) * n_groups)[:, None]
        counts = np.bincount((draws + offsets).ravel(), minlength=b * n_groups)
        yield counts.reshape(b, n_groups)[:, inverse].astype(np.float64)


def _columns(values, where) -> tuple[np.ndarray, np.ndarray]:
    """``P x M`` values with NaN -> 0 and the ``P x M`` 0/1 membership of each pair."""
    v = _np(values, np.float64)
    v = v[:, None] if v.ndim == 1 else v
    m = np.ones_like(v, dtype=bool) if where is None else _np(where, bool)
    m = np.broadcast_to(m[:, None] if m.ndim == 1 else m, v.shape)
    m = m & ~np.isnan(v)
    return np.where(m, v, 0.0), m.astype(np.float64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _signed_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` where ``den != 0``, NaN elsewhere (and where either is NaN)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan)


def bootstrap_means(values, groups, where=None, n_boot: int = 1000,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Means of ``M`` per-pair metrics and their bootstrap replicates over groups (images).

    ``values`` is ``P`` or ``P x M``; ``where`` (bool, same shape or ``P``) selects the pairs
    each mean pools; NaN values are left out.  Column ``m``'s mean is
    ``sum(w * x * keep) / sum(w * keep)`` with ``w`` the pair weights (1 for the estimate).

    Returns
    -------
    (estimate ``M``, replicates ``n_boot x M``), NaN where no pair is pooled; ``n_boot=0``
    gives the estimate and no replicates.
    """
    x, keep = _columns(values, where)
    estimate = _ratio(x.sum(axis=0), keep.sum(axis=0))
    if n_boot == 0:  # the estimate alone
        return estimate, np.empty((0, x.shape[1]))
    reps = [_ratio(w @ x, w @ keep) for w in resample_weights(groups, n_boot, seed)]
    return estimate, np.concatenate(reps, axis=0)


def percentile_ci(replicates, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of each column of ``replicates`` (NaN replicates ignored; NaN when
    all are NaN)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be in (0, 1)")
    r = np.asarray(replicates, dtype=np.float64)
    r = r[:, None] if r.ndim == 1 else r
    q = 100.0 * np.array([(1 - confidence) / 2, (1 + confidence) / 2])
    out = np.full((2, r.shape[1]), np.nan)
    for j in range(r.shape[1]):
        col = r[:, j][~np.isnan(r[:, j])]
        if len(col):
            out[:, j] = np.percentile(col, q)
    return out[0], out[1]


def _class_balanced(x_cols: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Per-class means laid out as ``K`` columns per metric (``... x (M * K)``) -> mean over
    the classes that have pairs, per metric (``... x M``)."""
    k = len(np.unique(classes))
    shaped = x_cols.reshape(*x_cols.shape[:-1], x_cols.shape[-1] // k, k)  # also 0 replicates
    with np.errstate(invalid="ignore"):
        present = ~np.isnan(shaped)
        total = np.where(present, shaped, 0.0).sum(axis=-1)
        count = present.sum(axis=-1)
    return _ratio(total, count.astype(np.float64))


def _stack(values_list, where_list, classes):
    """Columns for several (values, where) metrics; with ``classes`` one column per class."""
    cols, masks = [], []
    for v, m in zip(values_list, where_list):
        x, keep = _columns(v, m)
        if classes is None:
            cols.append(x)
            masks.append(keep)
        else:
            for k in np.unique(classes):
                sel = (classes == k)[:, None]
                cols.append(x * sel)
                masks.append(keep * sel)
    return np.concatenate(cols, axis=1), np.concatenate(masks, axis=1)


def _means_and_reps(values_list, where_list, groups, classes, n_boot, seed):
    classes = None if classes is None else _np(classes).reshape(-1)
    x, keep = _stack(values_list, where_list, classes)
    est, reps = bootstrap_means(x, groups, keep > 0, n_boot, seed)
    if classes is not None:
        est, reps = _class_balanced(est, classes), _class_balanced(reps, classes)
    return est, reps


def _split(values, where) -> tuple[list, list]:
    """``P`` or ``P x M`` values (and ``where``: ``None``, ``P`` or ``P x M``) as ``M`` single
    columns, the layout :func:`_means_and_reps` takes."""
    v = _np(values, np.float64)
    v = v[:, None] if v.ndim == 1 else v
    w = None if where is None else _np(where, bool)
    if w is not None and w.ndim == 1:
        w = np.broadcast_to(w[:, None], v.shape)
    return ([v[:, j] for j in range(v.shape[1])],
            [None if w is None else w[:, j] for j in range(v.shape[1])])


def means_ci(values, groups, where=None, classes=None, n_boot: int = 1000, seed: int = 0,
             confidence: float = 0.95) -> list[dict]:
    """:func:`mean_ci` of each column of ``values`` (``P x M``; ``where`` ``P`` or ``P x M``),
    all on the same bootstrap replicates: ``[{"mean", "ci_low", "ci_high"}]`` per column.
    ``n_boot=0``: means only, intervals NaN."""
    vs, ws = _split(values, where)
    est, reps = _means_and_reps(vs, ws, groups, classes, n_boot, seed)
    lo, hi = percentile_ci(reps, confidence)
    return [{"mean": float(est[j]), "ci_low": float(lo[j]), "ci_high": float(hi[j])}
            for j in range(len(vs))]


def mean_ci(values, groups, where=None, classes=None, n_boot: int = 1000, seed: int = 0,
            confidence: float = 0.95) -> dict:
    """Mean of a per-pair metric with its percentile bootstrap CI over images (``groups``).

    ``classes`` (per pair) switches to the class-balanced mean: per-class means, then their
    mean over the classes present (the standard pointing game's aggregation).

    Returns ``{"mean", "ci_low", "ci_high", "n_boot", "confidence"}``.
    """
    (out,) = means_ci(values, groups, where, classes, n_boot, seed, confidence)
    return {**out, "n_boot": int(n_boot), "confidence": float(confidence)}


def delta_ci(a, b, groups, where_a=None, where_b=None, classes=None, n_boot: int = 1000,
             seed: int = 0, confidence: float = 0.95) -> dict:
    """Paired difference ``mean_B - mean_A`` of a per-pair metric with a percentile bootstrap
    CI over images.

    ``a`` and ``b`` are the two models' values on the same pairs (aligned, ``groups`` = image
    per pair); ``where_a`` / ``where_b`` let each mean pool its own pairs (e.g. the pairs each
    model predicts, for the paper-mode pointing game); ``classes`` as in :func:`mean_ci`.
    Both means are computed on the same replicates, so the delta is paired by image.  With
    equal filters and no NaN this is the bootstrap of the mean per-pair difference.

    Returns ``{"a", "b", "delta", "ci_low", "ci_high", "n_boot", "confidence"}``.
    """
    est, reps = _means_and_reps([a, b], [where_a, where_b], groups, classes, n_boot, seed)
    lo, hi = percentile_ci(reps[:, 1] - reps[:, 0], confidence)
    return {"a": float(est[0]), "b": float(est[1]), "delta": float(est[1] - est[0]),
            "ci_low": float(lo[0]), "ci_high": float(hi[0]), "n_boot": int(n_boot),
            "confidence": float(confidence)}


NUMERICAL_ZERO = 1e-9  # a gap interval within this of 0 counts as containing 0


def gaps_recovered(teacher, naive, matched, groups, where=None, classes=None,
                   n_boot: int = 1000, seed: int = 0, confidence: float = 0.95) -> list[dict]:
    """Gap recovered ``(matched - naive) / (teacher - naive)`` of each metric (column), with a
    paired percentile bootstrap interval of the ratio itself.

    ``teacher``, ``naive`` and ``matched`` are the three models' per-pair values on the same
    pairs (``P`` or ``P x M``; NaN = missing); ``where`` (``P`` or ``P x M``, or a tuple of
    three, one per model) selects the pooled pairs (a fixed pair set: the same for the three);
    ``classes`` switches to class-balanced means (:func:`mean_ci`).  Each replicate resamples
    the images once for all three models (:func:`resample_weights`), so the gap, the gain and
    the ratio are computed from the same resampled images.

    The ratio is reported only where the gap's own interval excludes 0 (by more than
    :data:`NUMERICAL_ZERO`, so that two computations of the same maps differing by rounding
    have no gap); otherwise the status is ``"no gap"`` (the naive model is not distinguishable
    from the teacher: there is nothing to recover, and the ratio would divide by noise).
    Replicates whose gap is exactly 0 are left out of the ratio's quantiles.  Works for
    lower-is-better metrics too (the ratio is sign-free: 1 = back at the teacher, 0 = no
    better than naive, < 0 = worse than naive).

    Returns one dict per column: ``status`` ("ok", "no gap", or "undefined" where a mean or
    the gap's interval is undefined), ``teacher``, ``naive``, ``matched``, ``gap`` (teacher -
    naive) with ``gap_ci_low`` / ``gap_ci_high``, ``gain`` (matched - naive) with
    ``gain_ci_low`` / ``gain_ci_high``, and ``recovered`` with ``ci_low`` / ``ci_high`` (NaN
    unless the status is "ok").
    """
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1: the no-gap rule needs the gap's interval")
    wheres = where if isinstance(where, tuple) else (where, where, where)
    cols = [_split(v, w) for v, w in zip((teacher, naive, matched), wheres)]
    m = len(cols[0][0])
    if any(len(vs) != m for vs, _ in cols):
        raise ValueError("teacher, naive and matched need the same number of columns")
    est, reps = _means_and_reps([v for vs, _ in cols for v in vs],
                                [w for _, ws in cols for w in ws], groups, classes, n_boot, seed)
    t, n, x = est.reshape(3, m)
    rt, rn, rx = (reps[:, i * m:(i + 1) * m] for i in range(3))
    gap_lo, gap_hi = percentile_ci(rt - rn, confidence)
    gain_lo, gain_hi = percentile_ci(rx - rn, confidence)
    ratio_lo, ratio_hi = percentile_ci(_signed_ratio(rx - rn, rt - rn), confidence)
    out = []
    for j in range(m):
        if np.isnan([t[j], n[j], x[j], gap_lo[j], gap_hi[j]]).any():
            status = "undefined"
        else:
            clear = gap_lo[j] > NUMERICAL_ZERO or gap_hi[j] < -NUMERICAL_ZERO
            status = "ok" if clear else "no gap"
        ok = status == "ok"
        out.append({"status": status, "teacher": float(t[j]), "naive": float(n[j]),
                    "matched": float(x[j]), "gap": float(t[j] - n[j]),
                    "gap_ci_low": float(gap_lo[j]), "gap_ci_high": float(gap_hi[j]),
                    "gain": float(x[j] - n[j]), "gain_ci_low": float(gain_lo[j]),
                    "gain_ci_high": float(gain_hi[j]),
                    "recovered": float((x[j] - n[j]) / (t[j] - n[j])) if ok else float("nan"),
                    "ci_low": float(ratio_lo[j]) if ok else float("nan"),
                    "ci_high": float(ratio_hi[j]) if ok else float("nan")})
    return out


def gap_recovered(teacher, naive, matched, groups, where=None, classes=None,
                  n_boot: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict:
    """:func:`gaps_recovered` of one per-pair metric (``P`` values per model): one dict."""
    for v in (teacher, naive, matched):
        if _np(v).ndim != 1:
            raise ValueError("gap_recovered takes one metric (P values); see gaps_recovered")
    return gaps_recovered(teacher, naive, matched, groups, where, classes, n_boot, seed,
                          confidence)[0]


def group_means(values, groups, n_groups: int | None = None) -> np.ndarray:
    """Mean of ``values`` per integer group id ``0..n_groups-1`` (e.g. per image), NaN values
    left out; NaN for a group without values."""
    v = _np(values, np.float64).reshape(-1)
    g = _np(groups).reshape(-1).astype(np.int64)
    n_groups = int(g.max()) + 1 if n_groups is None else int(n_groups)
    ok = ~np.isnan(v)
    total = np.bincount(g[ok], weights=v[ok], minlength=n_groups)
    count = np.bincount(g[ok], minlength=n_groups).astype(np.float64)
    return _ratio(total, count)


def bootstrap_columns(columns: dict, groups, n_boot: int = 1000,
                      seed: int = 0) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Means of many named per-pair columns on one shared set of bootstrap replicates.

    ``columns`` maps a name to ``(values P, where P or None)``.  Returns
    ``({name: estimate}, {name: replicates n_boot})``; replicates of different columns come
    from the same resampled images, so differences of columns are paired deltas and their
    percentile CIs (:func:`percentile_ci`) are valid.
    """
    names = list(columns)
    if not names:
        return {}, {}
    x = np.stack([_np(columns[n][0], np.float64).reshape(-1) for n in names], axis=1)
    where = np.stack([np.ones(x.shape[0], bool) if columns[n][1] is None
                      else _np(columns[n][1], bool).reshape(-1) for n in names], axis=1)
    est, reps = bootstrap_means(x, groups, where, n_boot, seed)
    return ({n: float(est[i]) for i, n in enumerate(names)},
            {n: reps[:, i] for i, n in enumerate(names)})
