"""Agreement metrics: two saliency maps of the same (image, class) pair from two models.

``a`` is the reference (teacher) map, ``b`` the compared (student) map; both ``P x H x W``.
Every function returns one value per pair on the CPU (see :mod:`.localization` for the shared
conventions).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import rankdata

from .localization import _argmax_rc, _check_maps, _row_chunks

__all__ = [
    "CONSTANT_MAPS",
    "cell_size",
    "is_constant",
    "spearman",
    "cosine",
    "topk_sets",
    "topk_intersection",
    "topk_iou",
    "argmax_agreement",
    "peak_distance",
    "center_of_mass_shift",
    "minmax_normalize",
    "ssim",
    "SSIM_SIGMA",
    "SSIM_TRUNCATE",
]

# SSIM recipe (Wang et al., IEEE TIP 2004, as in skimage ``structural_similarity`` with
# ``gaussian_weights=True, use_sample_covariance=False, data_range=1``).
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # window radius int(3.5 * 1.5 + 0.5) = 5 px: an 11 x 11 Gaussian window


def _check_pair(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _check_maps(a), _check_maps(b)
    if a.shape != b.shape:
        raise ValueError(
            f"maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return a.detach(), b.detach().to(a.device)


CONSTANT_RTOL = 1e-6
CONSTANT_MAPS = ("a constant map (all values equal, e.g. a blank all-zero Grad-CAM) has no ranks "
                 "to compare: against a non-constant map it scores Spearman 0 (the value of an "
                 "uninformative map), against another constant map 1 (identical, all-tied "
                 "ranks); cosine is 0 when exactly one map is all zero and 1 when both are")
"""How :func:`spearman` and :func:`cosine` score constant maps (audit.json's definitions)."""


def is_constant(x) -> torch.Tensor:
    """Per map: all values equal, up to float32 rounding (``max - min <= 1e-6 * max |value|``);
    an all-zero (blank) map is constant.

    Returns
    -------
    bool tensor ``P``.
    """
    flat = _check_maps(x).detach().flatten(1).to(torch.float64)
    hi, lo = flat.amax(dim=1), flat.amin(dim=1)
    return ((hi - lo) <= CONSTANT_RTOL * torch.maximum(hi.abs(), lo.abs())).cpu()


def spearman(a, b) -> torch.Tensor:
    """Spearman rank correlation of the flattened maps (Adebayo et al., "Sanity Checks for
    Saliency Maps", NeurIPS 2018): Pearson correlation of the average ranks (ties share their
    mean rank), equal to ``scipy.stats.spearmanr`` per row.

    Never NaN, so that every model is scored on the same pairs: a constant map
    (:func:`is_constant`) against a non-constant one scores 0 (no rank information: the value
    of an uninformative map, e.g. a Grad-CAM that vanished); two constant maps score 1 (their
    all-tied ranks are identical).

    Returns
    -------
    float64 tensor ``P``.
    """
    a, b = _check_pair(a, b)
    n = a.shape[0]
    xa = a.flatten(1).to("cpu", torch.float64).numpy()
    xb = b.flatten(1).to("cpu", torch.float64).numpy()
    out = np.zeros(n, dtype=np.float64)
    for sl in _row_chunks(n, 2 * xa.shape[1]):
        ra = rankdata(xa[sl], method="average", axis=1)
        rb = rankdata(xb[sl], method="average", axis=1)
        ra -= ra.mean(axis=1, keepdims=True)
        rb -= rb.mean(axis=1, keepdims=True)
        num = (ra * rb).sum(axis=1)
        den = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[sl] = np.clip(num / den, -1.0, 1.0)
    const_a, const_b = is_constant(a).numpy(), is_constant(b).numpy()
    out[const_a != const_b] = 0.0
    out[const_a & const_b] = 1.0
    return torch.from_numpy(out)


def cosine(a, b, eps: float = 1e-12) -> torch.Tensor:
    """Cosine similarity of the flattened maps, ``<a, b> / max(|a| |b|, eps)`` in float64
    (the quantity the matching loss optimises).  0 when exactly one map is all zero; 1 when
    both are (identical maps, as in :func:`spearman` and :func:`ssim`): never NaN.

    Returns
    -------
    float64 tensor ``P``.
    """
    a, b = _check_pair(a, b)
    n = a.shape[0]
    xa = a.reshape(n, -1).to(torch.float64)
    xb = b.reshape(n, -1).to(torch.float64)
    num = (xa * xb).sum(dim=1)
    na, nb = xa.norm(dim=1), xb.norm(dim=1)
    out = num / (na * nb).clamp(min=eps)
    out[(na == 0) & (nb == 0)] = 1.0
    return out.cpu()


def _topk_count(n_pixels: int, frac: float) -> int:
    if not 0.0 < frac <= 1.0:
        raise ValueError(f"frac must be in (0, 1], got {frac}")
    # round() guards against float noise such as 0.07 * 100 = 7.000000000000001
    return min(n_pixels, max(1, math.ceil(round(frac * n_pixels, 9))))


def _topk_mask(x: torch.Tensor, k: int) -> torch.Tensor:
    n = x.shape[0]
    flat = x.reshape(n, -1)
    # Deterministic ties: everything above the k-th largest value, then the pixels equal to it
    # in row-major order until k are taken (torch.topk's choice among ties is unspecified and
    # differs between devices).
    kth = torch.topk(flat, k, dim=1).values[:, -1:]
    above = flat > kth
    tied = flat == kth
    need = k - above.sum(dim=1, keepdim=True)
    mask = above | (tied & (torch.cumsum(tied, dim=1) <= need))
    return mask.reshape(x.shape)


def topk_sets(a, b, frac: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool masks ``P x H x W`` of the top-k pixels of ``a`` and of ``b``,
    ``k = ceil(frac * H * W)`` (at least 1).  Ties at the k-th value are broken towards the lower
    row-major index, so the result is deterministic on every device.
    """
    a, b = _check_pair(a, b)
    k = _topk_count(a.shape[1] * a.shape[2], frac)
    return _topk_mask(a, k), _topk_mask(b, k)


def _topk_counts(a, b, frac: float):
    """Per pair: |A ∩ B|, |A| (= k) and |A ∪ B| of the two top-k sets, float64."""
    set_a, set_b = topk_sets(a, b, frac)
    count = lambda m: m.reshape(m.shape[0], -1).sum(dim=1).to(torch.float64)  # noqa: E731
    return count(set_a & set_b), count(set_a), count(set_a | set_b)


def topk_intersection(a, b, frac: float = 0.1) -> torch.Tensor:
    """Top-k intersection (Ghorbani et al., "Interpretation of Neural Networks is Fragile",
    AAAI 2019): fraction of ``a``'s top-k pixels that are also among ``b``'s top-k,
    ``|A ∩ B| / k`` with ``k = ceil(frac * H * W)``; ties as in :func:`topk_sets`.

    Returns
    -------
    float64 tensor ``P``.
    """
    inter, k, _ = _topk_counts(a, b, frac)
    return (inter / k).cpu()


def topk_iou(a, b, frac: float = 0.1) -> torch.Tensor:
    """Intersection over union ``|A ∩ B| / |A ∪ B|`` of the two top-k pixel sets
    (``k = ceil(frac * H * W)``; ties as in :func:`topk_sets`).

    Returns
    -------
    float64 tensor ``P``.
    """
    inter, _, union = _topk_counts(a, b, frac)
    return (inter / union).cpu()


def peak_distance(a, b) -> torch.Tensor:
    """Euclidean distance in pixels between the two maps' first argmax pixels
    (``torch.argmax`` on the row-major flattened map); 0 when the peaks coincide.  Divide by
    :func:`cell_size` for the distance in cells of an explainer's native map.

    Returns
    -------
    float64 tensor ``P``.
    """
    a, b = _check_pair(a, b)
    d = (_argmax_rc(a) - _argmax_rc(b)).to(torch.float64)
    return torch.sqrt((d * d).sum(dim=1)).cpu()


def cell_size(grid: tuple[int, int], size: tuple[int, int]) -> float:
    """Pixels per cell of a map computed on an ``h x w`` ``grid`` and compared upsampled to
    ``size`` ``H x W``: ``max(H / h, W / w)`` (a 7 x 7 Grad-CAM at 224 px: 32; a map already at
    ``size``, such as an input-resolution explainer's: 1)."""
    (h, w), (big_h, big_w) = grid, size
    return max(big_h / h, big_w / w)


def argmax_agreement(a, b, tolerance: float = 0.0) -> torch.Tensor:
    """Whether the two maps peak at the same place: :func:`peak_distance` ``<= tolerance``;
    ``tolerance=0`` requires the identical pixel.

    Returns
    -------
    bool tensor ``P``.
    """
    return peak_distance(a, b) <= float(tolerance)


def _center_of_mass(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, col) centre of mass of ``relu(x)`` per map, float64 ``P x 2``, and the mass."""
    n, h, w = x.shape
    wgt = x.to(torch.float64).clamp(min=0)
    mass = wgt.reshape(n, -1).sum(dim=1)
    rows = torch.arange(h, dtype=torch.float64, device=x.device)
    cols = torch.arange(w, dtype=torch.float64, device=x.device)
    r = (wgt.sum(dim=2) * rows).sum(dim=1) / mass
    c = (wgt.sum(dim=1) * cols).sum(dim=1) / mass
    return torch.stack((r, c), dim=1), mass


def center_of_mass_shift(a, b) -> torch.Tensor:
    """Distance in pixels between the centres of mass of the positive parts of the two maps
    (pixel (row, col) coordinates weighted by ``relu(map)``).  NaN if either map has no
    positive mass.

    Returns
    -------
    float64 tensor ``P``.
    """
    a, b = _check_pair(a, b)
    com_a, mass_a = _center_of_mass(a)
    com_b, mass_b = _center_of_mass(b)
    dist = torch.sqrt(((com_a - com_b) ** 2).sum(dim=1))
    ok = (mass_a > 0) & (mass_b > 0)
    return torch.where(ok, dist, torch.full_like(dist, float("nan"))).cpu()


def minmax_normalize(x) -> torch.Tensor:
    """Each map rescaled to ``[0, 1]`` by its own min and max (float64); a constant map
    becomes all zeros."""
    x = _check_maps(x).detach().to(torch.float64)
    lo = x.amin(dim=(1, 2), keepdim=True)
    span = x.amax(dim=(1, 2), keepdim=True) - lo
    return torch.where(span > 0, (x - lo) / span.clamp(min=1e-300), torch.zeros_like(x))


def _gaussian_window(sigma: float, truncate: float) -> torch.Tensor:
    """Normalised 1-D Gaussian of radius ``int(truncate * sigma + 0.5)`` (scipy's rule)."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def _valid_filter_matrix(g: torch.Tensor, n: int) -> torch.Tensor:
    """``(n - len(g) + 1) x n`` matrix whose row ``i`` applies ``g`` at positions ``i..i+len(g)-1``
    (a "valid" 1-D correlation as a matrix product, so filtering runs on BLAS in float64)."""
    win = g.numel()
    m = torch.zeros(n - win + 1, n, dtype=g.dtype, device=g.device)
    for i in range(n - win + 1):
        m[i, i : i + win] = g
    return m


def ssim(a, b, sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Structural similarity (Wang et al., IEEE TIP 2004) of the two maps.

    Recipe: each map is min-max scaled to ``[0, 1]`` (:func:`minmax_normalize`, so the data
    range is 1 and ``C1 = (k1)^2``, ``C2 = (k2)^2``); local means, variances and covariance use
    a Gaussian window (``sigma`` 1.5 px, radius ``int(truncate * sigma + 0.5)`` = 5, i.e.
    11 x 11) with population (not sample) covariance; the SSIM map is averaged over the
    positions where the window lies fully inside the map.  This equals
    ``skimage.metrics.structural_similarity(a01, b01, data_range=1, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False)``.  Two constant maps (both all zero after
    scaling) score 1.  Raises ``ValueError`` when a map is smaller than the window.

    Returns
    -------
    float64 tensor ``P``.
    """
    a, b = _check_pair(a, b)
    n, h, w = a.shape
    g = _gaussian_window(sigma, truncate).to(a.device)
    win = g.numel()
    if h < win or w < win:
        raise ValueError(f"SSIM needs maps of at least {win} x {win} px, got {h} x {w}")
    c1, c2 = k1 ** 2, k2 ** 2
    rows, cols = _valid_filter_matrix(g, h), _valid_filter_matrix(g, w).T
    out = torch.empty(n, dtype=torch.float64, device=a.device)
    for sl in _row_chunks(n, 10 * h * w):
        x, y = minmax_normalize(a[sl]), minmax_normalize(b[sl])
        stack = torch.stack((x, y, x * x, y * y, x * y), dim=1)  # p x 5 x H x W
        mx, my, xx, yy, xy = (rows @ stack @ cols).unbind(dim=1)
        vx, vy, cxy = xx - mx * mx, yy - my * my, xy - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        out[sl] = s.mean(dim=(1, 2))
    return out.cpu()
