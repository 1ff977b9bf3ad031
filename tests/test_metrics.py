"""Metrics against independent references (sklearn, scipy, numpy) and hand-built cases."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    label_ranking_average_precision_score,
    roc_auc_score,
)
from torch import nn
from torch.nn.utils import prune

from attrpreserve.evaluate import (
    argmax_agreement,
    cell_size,
    center_of_mass_shift,
    center_point_maps,
    cosine,
    count_macs,
    count_nonzero_params,
    count_params,
    energy_pointing_game,
    file_bytes,
    is_constant,
    latency_ms,
    mean_average_precision,
    per_class_mean,
    minmax_normalize,
    peak_distance,
    per_image_average_precision,
    pointing_hits,
    pointing_hits_tolerance,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    roc_auc,
    sample_f1,
    spearman,
    ssim,
    topk_intersection,
    topk_iou,
    topk_sets,
)


def _random_masks(gen, p, h, w):
    masks = torch.rand(p, h, w, generator=gen) < 0.3
    masks[:, 0, 0] = True  # never degenerate
    masks[:, -1, -1] = False
    return masks


# --------------------------------------------------------------------------- ROC-AUC
def _sklearn_auc(maps, masks, valid=None):
    out = []
    for i in range(maps.shape[0]):
        keep = np.ones(maps[i].numel(), bool) if valid is None else valid[i].reshape(-1).numpy()
        y = masks[i].reshape(-1).numpy()[keep]
        s = maps[i].reshape(-1).double().numpy()[keep]
        out.append(roc_auc_score(y, s))
    return np.array(out)


@pytest.mark.numerics
def test_roc_auc_matches_sklearn_random():
    gen = torch.Generator().manual_seed(0)
    maps = torch.randn(6, 12, 10, generator=gen)
    masks = _random_masks(gen, 6, 12, 10)
    got = roc_auc(maps, masks)
    assert got.dtype == torch.float64 and got.shape == (6,)
    np.testing.assert_allclose(got.numpy(), _sklearn_auc(maps, masks), atol=1e-6)


@pytest.mark.numerics
def test_roc_auc_matches_sklearn_with_ties():
    gen = torch.Generator().manual_seed(1)
    maps = torch.round(torch.rand(5, 16, 16, generator=gen) * 3)  # 4 levels: many ties
    masks = _random_masks(gen, 5, 16, 16)
    maps[0] = 2.0  # constant map -> 0.5
    got = roc_auc(maps, masks)
    np.testing.assert_allclose(got.numpy(), _sklearn_auc(maps, masks), atol=1e-6)
    assert got[0].item() == pytest.approx(0.5)
    # min-max normalisation does not change AUC
    lo = maps.amin(dim=(1, 2), keepdim=True)
    hi = maps.amax(dim=(1, 2), keepdim=True)
    norm = (maps - lo) / (hi - lo).clamp(min=1e-12)
    np.testing.assert_allclose(roc_auc(norm, masks).numpy(), got.numpy(), atol=1e-12)


@pytest.mark.numerics
def test_roc_auc_with_void_pixels():
    gen = torch.Generator().manual_seed(2)
    maps = torch.round(torch.randn(5, 10, 9, generator=gen) * 2)
    masks = _random_masks(gen, 5, 10, 9)
    valid = torch.rand(5, 10, 9, generator=gen) > 0.2
    valid[:, 0, 0] = True
    valid[:, -1, -1] = True
    valid[3] = True  # a row without void, ranked with the vectorised path
    # a void pixel with an extreme score must not matter
    maps[0][~valid[0]] = 100.0
    got = roc_auc(maps, masks, valid)
    np.testing.assert_allclose(got.numpy(), _sklearn_auc(maps, masks, valid), atol=1e-6)
    assert not np.allclose(got[0].item(), _sklearn_auc(maps[:1], masks[:1])[0])


def test_roc_auc_nan_for_degenerate_masks():
    maps = torch.randn(4, 5, 5, generator=torch.Generator().manual_seed(3))
    masks = torch.zeros(4, 5, 5, dtype=torch.bool)
    masks[1] = True  # all positive
    masks[2, :2] = True  # fine
    masks[3, :2] = True
    valid = torch.ones(4, 5, 5, dtype=torch.bool)
    valid[3, 2:] = False  # only object pixels are valid -> degenerate
    got = roc_auc(maps, masks, valid)
    assert math.isnan(got[0]) and math.isnan(got[1]) and math.isnan(got[3])
    assert not math.isnan(got[2])


# --------------------------------------------------------------------------- pointing game
def test_pointing_hits_hand_cases():
    maps = torch.zeros(4, 4, 5)
    masks = torch.zeros(4, 4, 5, dtype=torch.bool)
    masks[:, 1:3, 1:3] = True
    maps[0, 2, 2] = 1.0  # hit
    maps[1, 0, 4] = 1.0  # miss
    maps[2, 0, 0] = 1.0  # tie: first argmax (0, 0) is outside -> miss
    maps[2, 1, 1] = 1.0
    maps[3, 1, 1] = 1.0  # tie the other way round: first argmax (1, 1) -> hit
    maps[3, 3, 4] = 1.0
    assert pointing_hits(maps, masks).tolist() == [True, False, False, True]


def test_pointing_hits_skips_void_max():
    maps = torch.zeros(2, 4, 4)
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, 2, 2] = True
    valid = torch.ones(2, 4, 4, dtype=torch.bool)
    maps[:, 0, 0] = 5.0  # global max, but void
    valid[:, 0, 0] = False
    maps[0, 2, 2] = 3.0  # best valid pixel is in the object
    maps[1, 3, 3] = 3.0  # best valid pixel is background
    assert pointing_hits(maps, masks).tolist() == [False, False]
    assert pointing_hits(maps, masks, valid).tolist() == [True, False]
    # a pair with no valid pixel is a miss
    assert not pointing_hits(maps[:1], masks[:1], torch.zeros(1, 4, 4, dtype=torch.bool))[0]


def test_pointing_tolerance_known_distances():
    h, w = 40, 40
    masks = torch.zeros(5, h, w, dtype=torch.bool)
    masks[:, 5, 5] = True
    peaks = [(5, 19), (5, 20), (5, 21), (14, 17), (5, 5)]  # distances 14, 15, 16, 15 (9-12-15), 0
    maps = torch.zeros(5, h, w)
    for i, (r, c) in enumerate(peaks):
        maps[i, r, c] = 1.0
    # TorchRay: accept = d**2 < tolerance**2 (strict)
    assert pointing_hits_tolerance(maps, masks).tolist() == [True, False, False, False, True]
    assert pointing_hits_tolerance(maps, masks, inclusive=True).tolist() == [
        True, True, False, True, True,
    ]
    assert pointing_hits_tolerance(maps, masks, tolerance=16.5).tolist() == [True] * 5
    # void pixels are not object pixels
    valid = torch.ones_like(masks)
    valid[:, 5, 5] = False
    assert not pointing_hits_tolerance(maps, masks, valid=valid).any()


def _torchray_evaluate(mask, point, tolerance=15):
    """TorchRay's PointingGame.evaluate, transcribed; point = (u, v) = (col, row)."""
    v, u = torch.meshgrid(
        (torch.arange(mask.shape[0], dtype=torch.float32) - point[1]) ** 2,
        (torch.arange(mask.shape[1], dtype=torch.float32) - point[0]) ** 2,
        indexing="ij",
    )
    accept = (v + u) < tolerance**2
    return bool((mask & accept).view(-1).any())


def test_pointing_tolerance_matches_torchray():
    gen = torch.Generator().manual_seed(4)
    p, h, w = 40, 48, 56
    maps = torch.rand(p, h, w, generator=gen)
    masks = torch.zeros(p, h, w, dtype=torch.bool)
    for i in range(p):  # random boxes, some far from the peak
        r0, c0 = torch.randint(0, h - 6, (2,), generator=gen).tolist()
        c0 = c0 % (w - 6)
        masks[i, r0 : r0 + 5, c0 : c0 + 5] = True
    got = pointing_hits_tolerance(maps, masks)
    ref = []
    for i in range(p):
        idx = int(torch.argmax(maps[i]))
        ref.append(_torchray_evaluate(masks[i], (idx % w, idx // w)))
    assert got.tolist() == ref
    assert 0 < sum(ref) < p


def test_per_class_mean_and_center_baseline():
    values = torch.tensor([1.0, 0.0, 1.0, 1.0, float("nan")])
    classes = torch.tensor([0, 0, 3, 3, 5])
    assert per_class_mean(values, classes) == pytest.approx((0.5 + 1.0) / 2)
    assert per_class_mean(torch.tensor([True, False, True]), [2, 2, 7]) == pytest.approx(0.75)
    for h, w in [(7, 9), (8, 6)]:
        maps = center_point_maps(3, h, w)
        assert maps.shape == (3, h, w)
        assert torch.argmax(maps[1]).item() == (h // 2) * w + w // 2
        assert (maps == maps.amax()).sum() == 3  # unique peak per map


@pytest.mark.numerics
def test_center_baseline_auc_and_energy_hand_case():
    """The centred Gaussian on a 5 x 5 image (sigma 0.25 x 5 = 1.25 px around pixel (2, 2)):
    its energy share and pixel AUC against a hand-made mask."""
    maps = center_point_maps(2, 5, 5)
    assert maps[0, 2, 2].item() == 1.0
    assert maps[0, 2, 0].item() == pytest.approx(math.exp(-4 / (2 * 1.25 ** 2)), abs=1e-15)
    # mask 0: the centre 3 x 3 block (squared distances 0, 1 x 4, 2 x 4); outside: 4 x 4,
    # 5 x 8, 8 x 4. Every object pixel is nearer than every background one: AUC 1.
    # mask 1: the left column, (r, 0): squared distances 8, 5, 4, 5, 8.
    masks = torch.zeros(2, 5, 5, dtype=torch.bool)
    masks[0, 1:4, 1:4] = True
    masks[1, :, 0] = True
    g = {d2: math.exp(-d2 / 3.125) for d2 in (0, 1, 2, 4, 5, 8)}
    total = g[0] + 4 * g[1] + 4 * g[2] + 4 * g[4] + 8 * g[5] + 4 * g[8]
    energy = energy_pointing_game(maps, masks)
    assert energy[0].item() == pytest.approx((g[0] + 4 * g[1] + 4 * g[2]) / total, abs=1e-12)
    assert energy[1].item() == pytest.approx((g[4] + 2 * g[5] + 2 * g[8]) / total, abs=1e-12)
    # AUC = P(object nearer than background) + P(tie) / 2 over (object, background) pairs
    d2 = [(r - 2) ** 2 + (c - 2) ** 2 for r in range(5) for c in range(5)]
    obj = [d2[5 * r] for r in range(5)]
    bg = [d for i, d in enumerate(d2) if i % 5 != 0]
    wins = sum((o < b) + 0.5 * (o == b) for o in obj for b in bg)
    auc = roc_auc(maps, masks)
    assert auc[0].item() == 1.0
    assert auc[1].item() == pytest.approx(wins / (len(obj) * len(bg)), abs=1e-12)


@pytest.mark.numerics
def test_energy_pointing_game_hand_case():
    maps = torch.tensor(
        [
            [[1.0, 3.0], [-4.0, 0.0]],  # inside 3 of positive 4
            [[-1.0, 0.0], [-2.0, 0.0]],  # no positive value
            [[2.0, 2.0], [2.0, 2.0]],
        ]
    )
    masks = torch.tensor([[[False, True], [True, False]]] * 3)
    valid = torch.ones_like(masks)
    valid[2, 0, 0] = False  # drops 2 from the total: 4 / 6 instead of 4 / 8
    got = energy_pointing_game(maps, masks, valid)
    assert got[0].item() == pytest.approx(0.75)
    assert math.isnan(got[1].item())
    assert got[2].item() == pytest.approx(4 / 6)
    assert energy_pointing_game(maps, masks)[2].item() == pytest.approx(0.5)


@pytest.mark.numerics
def test_relevance_mass_and_rank_hand_case():
    maps = torch.tensor([[[3.0, 1.0, 0.0], [-2.0, 2.0, 0.0]]])
    masks = torch.tensor([[[True, False, False], [True, True, False]]])
    # pos: inside 3 + 0 + 2 of 6; abs: inside 3 + 2 + 2 of 8
    assert relevance_mass_accuracy(maps, masks).item() == pytest.approx(5 / 6)
    assert relevance_mass_accuracy(maps, masks, pooling="abs").item() == pytest.approx(7 / 8)
    # K = 3; pos ranking 3 (obj), 2 (obj), 1 (bg) -> 2/3; abs ranking 3, 2, 2 all on the object
    assert relevance_rank_accuracy(maps, masks).item() == pytest.approx(2 / 3)
    assert relevance_rank_accuracy(maps, masks, pooling="abs").item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        relevance_mass_accuracy(maps, masks, pooling="max")


def test_relevance_rank_ties_void_and_degenerate():
    zeros = torch.zeros(2, 3, 3)
    masks = torch.zeros(2, 3, 3, dtype=torch.bool)
    masks[0, 1, 1] = True  # K = 1, all tied: the first row-major pixel (0, 0) wins -> miss
    masks[1, 0, 0] = True  # ... and here it is on the object -> hit
    assert relevance_rank_accuracy(zeros, masks).tolist() == [0.0, 1.0]
    assert torch.isnan(relevance_mass_accuracy(zeros, masks)).all()  # no relevance at all

    maps = torch.tensor([[[9.0, 0.0, 0.0], [0.0, 5.0, 4.0], [0.0, 0.0, 0.0]]])
    obj = torch.tensor([[[False, False, False], [False, True, True], [False, False, False]]])
    valid = torch.ones_like(obj)
    assert relevance_rank_accuracy(maps, obj).item() == pytest.approx(0.5)  # top-2: 9, 5
    valid[0, 0, 0] = False  # the 9 is void: never ranked, not in the mass
    assert relevance_rank_accuracy(maps, obj, valid).item() == pytest.approx(1.0)
    assert relevance_mass_accuracy(maps, obj, valid).item() == pytest.approx(1.0)
    valid[0, 1, 2] = False  # a void object pixel: K becomes 1
    assert relevance_rank_accuracy(maps, obj, valid).item() == pytest.approx(1.0)
    assert relevance_mass_accuracy(maps, obj, valid).item() == pytest.approx(1.0)
    empty = torch.zeros_like(obj)
    assert math.isnan(relevance_rank_accuracy(maps, empty).item())
    assert math.isnan(relevance_mass_accuracy(maps, empty).item())


@pytest.mark.numerics
def test_relevance_metrics_match_numpy_reference():
    gen = torch.Generator().manual_seed(11)
    maps = torch.round(torch.randn(6, 9, 8, generator=gen) * 2)  # signed, many ties
    masks = _random_masks(gen, 6, 9, 8)
    got_rank = relevance_rank_accuracy(maps, masks)
    for i in range(6):
        rel = np.maximum(maps[i].reshape(-1).double().numpy(), 0.0)
        gt = masks[i].reshape(-1).numpy()
        k = int(gt.sum())
        top = np.argsort(-rel, kind="stable")[:k]
        assert got_rank[i].item() == pytest.approx(gt[top].sum() / k)
    # with "pos" pooling the mass accuracy is the energy pointing game
    np.testing.assert_allclose(relevance_mass_accuracy(maps, masks).numpy(),
                               energy_pointing_game(maps, masks).numpy(), atol=1e-12)


# --------------------------------------------------------------------------- agreement
@pytest.mark.numerics
def test_spearman_matches_scipy():
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(5, 8, 7, generator=gen)
    b = a + 0.7 * torch.randn(5, 8, 7, generator=gen)
    a[1] = torch.round(a[1])  # ties
    b[2] = torch.round(b[2] * 2)
    a[4] = 1.0  # constant: scipy says NaN, we say 0
    got = spearman(a, b)
    for i in range(4):
        ref = spearmanr(a[i].reshape(-1).numpy(), b[i].reshape(-1).numpy()).statistic
        assert got[i].item() == pytest.approx(ref, abs=1e-10)
    assert got[4].item() == 0.0


def test_constant_maps_are_never_missing():
    """A blank (all-zero) or constant map scores Spearman 0 against a non-constant one, in
    either position; two constant maps score 1 (identical all-tied ranks); cosine 0 / 1."""
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(4, 7, 7, generator=gen)
    y = x.clone()
    y[0] = 0.0                       # the candidate's map vanished
    y[1] = 0.25                      # constant, not zero
    x[2], y[2] = 0.0, x[3].clone()   # the reference's map is blank
    x[3], y[3] = 0.0, 0.0            # both blank
    rho = spearman(x, y)
    assert not torch.isnan(rho).any()
    assert rho.tolist() == pytest.approx([0.0, 0.0, 0.0, 1.0], abs=1e-12)
    assert spearman(torch.full((1, 3, 3), 2.0), torch.zeros(1, 3, 3)).item() == 1.0
    assert is_constant(y).tolist() == [True, True, False, True]
    assert is_constant(x).tolist() == [False, False, True, True]
    # a constant map upsampled (float32 rounding) is still constant; a tiny real signal is not
    up = torch.nn.functional.interpolate(torch.full((1, 1, 7, 7), 0.3), size=(224, 224),
                                         mode="bilinear", align_corners=False)[:, 0]
    assert is_constant(up).item() and spearman(up, torch.rand(1, 224, 224)).item() == 0.0
    bump = torch.zeros(1, 7, 7)
    bump[0, 3, 3] = 1e-3
    assert not is_constant(bump).item()
    cos = cosine(x, y)
    assert cos[0].item() == 0.0 and cos[2].item() == 0.0 and cos[3].item() == 1.0


def test_peak_distance_in_cells_hand_case():
    """Two 4 x 4 maps peaking in diagonal neighbour cells (1, 1) and (2, 2), compared upsampled
    to 32 px (8 px per cell): the first argmax pixels are (11, 11) and (19, 19), 8 * sqrt(2) px
    = sqrt(2) cells apart."""
    a, b = torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    a[0, 0, 1, 1] = 1.0
    b[0, 0, 2, 2] = 1.0
    up = [torch.nn.functional.interpolate(m, size=(32, 32), mode="bilinear",
                                          align_corners=False)[:, 0] for m in (a, b)]
    cell = cell_size((4, 4), (32, 32))
    assert cell == 8.0 and cell_size((7, 7), (224, 224)) == 32.0
    assert cell_size((32, 32), (32, 32)) == 1.0  # input-resolution maps: a pixel is a cell
    px = peak_distance(*up).item()
    assert px == pytest.approx(8 * math.sqrt(2), abs=1e-9)
    assert px / cell == pytest.approx(math.sqrt(2), abs=1e-9)


@pytest.mark.numerics
def test_cosine_matches_numpy():
    gen = torch.Generator().manual_seed(6)
    a = torch.randn(3, 6, 5, generator=gen)
    b = torch.randn(3, 6, 5, generator=gen)
    b[2] = 0.0
    got = cosine(a, b)
    for i in range(2):
        x, y = a[i].reshape(-1).double().numpy(), b[i].reshape(-1).double().numpy()
        ref = x @ y / np.linalg.norm(x) / np.linalg.norm(y)
        assert got[i].item() == pytest.approx(ref, abs=1e-12)
    assert got[2].item() == 0.0
    assert cosine(a, 3 * a).numpy() == pytest.approx(np.ones(3))
    assert cosine(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2)).item() == 1.0


def test_topk_hand_case():
    # 2 x 5 = 10 pixels, frac 0.3 -> k = 3
    a = torch.tensor([[[9.0, 8.0, 7.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]]])
    b = torch.tensor([[[9.0, 0.0, 7.0, 0.0, 0.0], [0.0, 0.0, 8.0, 0.0, 0.0]]])
    set_a, set_b = topk_sets(a, b, frac=0.3)
    assert set_a.sum() == 3 and set_b.sum() == 3
    assert set_a[0, 0, :3].all() and set_b[0, 1, 2] and not set_b[0, 0, 1]
    assert topk_intersection(a, b, 0.3).item() == pytest.approx(2 / 3)
    assert topk_iou(a, b, 0.3).item() == pytest.approx(2 / 4)
    assert topk_iou(a, a, 0.3).item() == 1.0
    # k = ceil(frac * H * W), ties go to the lower row-major index
    tied = torch.zeros(1, 2, 5)
    s, _ = topk_sets(tied, tied, frac=0.15)  # ceil(1.5) = 2
    assert s.reshape(-1).nonzero().reshape(-1).tolist() == [0, 1]
    s, _ = topk_sets(tied, tied, frac=0.7)  # 0.7 * 10 is 7.000000000000001 in floats
    assert s.sum() == 7
    # partial ties on quantised maps: same sets as a stable descending sort (numpy reference)
    gen = torch.Generator().manual_seed(9)
    q = torch.round(torch.rand(4, 6, 7, generator=gen) * 4)
    s, _ = topk_sets(q, q, frac=0.2)  # k = ceil(8.4) = 9
    for i in range(4):
        order = np.argsort(-q[i].reshape(-1).numpy(), kind="stable")[:9]
        assert sorted(s[i].reshape(-1).nonzero().reshape(-1).tolist()) == sorted(order.tolist())


def test_argmax_agreement_and_center_of_mass_hand_cases():
    a = torch.zeros(3, 10, 10)
    b = torch.zeros(3, 10, 10)
    a[0, 2, 3] = 1.0
    b[0, 2, 3] = 5.0  # same pixel
    a[1, 0, 0] = 1.0
    b[1, 3, 4] = 1.0  # 5 px away
    a[2, 1, 1] = 1.0
    b[2, 1, 2] = 1.0  # 1 px away
    assert argmax_agreement(a, b).tolist() == [True, False, False]
    assert argmax_agreement(a, b, tolerance=1.0).tolist() == [True, False, True]
    assert argmax_agreement(a, b, tolerance=5.0).tolist() == [True, True, True]
    assert peak_distance(a, b).tolist() == pytest.approx([0.0, 5.0, 1.0])

    c = torch.zeros(3, 10, 10)
    d = torch.zeros(3, 10, 10)
    c[0, 0, 0] = c[0, 0, 2] = 1.0  # centre (0, 1)
    c[0, 5, 5] = -7.0  # negative part ignored
    d[0, 3, 5] = 2.0  # centre (3, 5): distance 5
    c[1, 4, 4] = 1.0
    d[1, 4, 4] = 3.0
    d[1, 4, 6] = 1.0  # centre (4, 4.5)
    c[2] = -1.0  # no positive mass
    d[2, 0, 0] = 1.0
    got = center_of_mass_shift(c, d)
    assert got[0].item() == pytest.approx(5.0)
    assert got[1].item() == pytest.approx(0.5)
    assert math.isnan(got[2].item())


# --------------------------------------------------------------------------- task
@pytest.mark.numerics
def test_map_hand_case_and_sklearn():
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.8, 0.7, 0.2], [0.7, 0.2, 0.1], [0.6, 0.4, 0.0]])
    labels = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    m, per_class = mean_average_precision(scores, labels)
    # class 0: positives ranked 1 and 3 -> (1/1 + 2/3) / 2; class 1: ranks 1 and 3 as well
    assert per_class[0] == pytest.approx((1 + 2 / 3) / 2)
    assert per_class[1] == pytest.approx((1 + 2 / 3) / 2)
    assert math.isnan(per_class[2])
    assert m == pytest.approx((1 + 2 / 3) / 2)

    rng = np.random.default_rng(7)
    s = rng.random((30, 5))
    y = (rng.random((30, 5)) < 0.4).astype(int)
    m, per_class = mean_average_precision(s, y)
    ref = [average_precision_score(y[:, k], s[:, k]) for k in range(5)]
    np.testing.assert_allclose(per_class, ref)
    assert m == pytest.approx(np.mean(ref))
    assert per_image_average_precision(torch.from_numpy(s), y) == pytest.approx(
        label_ranking_average_precision_score(y, s)
    )


def test_sample_f1_matches_sklearn():
    rng = np.random.default_rng(8)
    probs = rng.random((25, 4))
    labels = (rng.random((25, 4)) < 0.3).astype(int)
    labels[0] = 0  # an image without labels
    probs[0] = 0.1  # and no predictions
    ref = f1_score(labels, (probs >= 0.5).astype(int), average="samples", zero_division=0)
    got = sample_f1(torch.from_numpy(probs).float(), torch.from_numpy(labels))
    assert got == pytest.approx(ref)
    assert sample_f1(np.array([[0.5, 0.4]]), np.array([[1, 1]])) == pytest.approx(2 / 3)


# --------------------------------------------------------------------------- cost
def _tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    )


def test_count_macs_hand_count():
    model = _tiny_model().train()
    # conv1: 4*8*8 outputs x 3*3*3; conv2 (8x8 -> 4x4, groups 2): 6*4*4 outputs x 2*3*3; fc: 6*5
    expected = 4 * 8 * 8 * 27 + 6 * 4 * 4 * 18 + 6 * 5
    assert count_macs(model, (1, 3, 8, 8)) == expected
    assert count_macs(model, (2, 3, 8, 8)) == expected  # per image
    assert model.training  # mode restored
    assert all(not m._forward_hooks for m in model.modules())


def test_count_macs_removes_hooks_on_error():
    model = _tiny_model()
    with pytest.raises(RuntimeError):
        count_macs(model, (1, 5, 8, 8))  # wrong channel count
    assert all(not m._forward_hooks for m in model.modules())


def test_param_counts():
    model = _tiny_model()
    # conv1 3*4*9 + 4, bn 4 + 4, conv2 6*2*9, fc 6*5 + 5
    total = 112 + 8 + 108 + 35
    assert count_params(model) == total
    with torch.no_grad():
        model[0].weight[0] = 0.0  # 27 zeros
        model[6].bias.zero_()  # 5 zeros
    # BatchNorm's bias is initialised to zero: 4 more zeros
    assert count_nonzero_params(model) == total - 27 - 5 - 4
    prune.l1_unstructured(model[6], "weight", amount=10)
    assert count_params(model) == total
    assert count_nonzero_params(model) == total - 27 - 5 - 4 - 10


def test_latency_and_file_bytes(tmp_path):
    model = _tiny_model()
    ms = latency_ms(model, (1, 3, 16, 16), warmup=1, repeats=3)
    assert math.isfinite(ms) and ms > 0
    assert model.training
    (tmp_path / "a.bin").write_bytes(b"x" * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"y" * 23)
    assert file_bytes(tmp_path / "a.bin") == 100
    assert file_bytes(tmp_path) == 123
    with pytest.raises(FileNotFoundError):
        file_bytes(tmp_path / "missing")


# --------------------------------------------------------------------------- SSIM
def _ssim_single_window(x, y, sigma=1.5, c1=0.01**2, c2=0.03**2):
    """SSIM of two 11 x 11 maps with one Gaussian window covering them (numpy, by hand)."""
    r = np.arange(-5, 6)
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    g /= g.sum()
    mx, my = (g * x).sum(), (g * y).sum()
    vx, vy = (g * (x - mx) ** 2).sum(), (g * (y - my) ** 2).sum()
    cxy = (g * (x - mx) * (y - my)).sum()
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


@pytest.mark.numerics
def test_ssim_single_window_hand_computation():
    gen = torch.Generator().manual_seed(12)
    a = torch.rand(3, 11, 11, generator=gen, dtype=torch.float64)
    b = a + 0.4 * torch.rand(3, 11, 11, generator=gen, dtype=torch.float64)
    b[2] = -a[2]  # anti-correlated
    got = ssim(a, b)
    for i in range(3):
        x = (a[i] - a[i].min()) / (a[i].max() - a[i].min())
        y = (b[i] - b[i].min()) / (b[i].max() - b[i].min())
        ref = _ssim_single_window(x.numpy(), y.numpy())
        assert got[i].item() == pytest.approx(ref, abs=1e-10)
    assert got[2].item() < 0
    with pytest.raises(ValueError, match="11 x 11"):
        ssim(a[:, :10], b[:, :10])


@pytest.mark.numerics
def test_ssim_matches_skimage():
    metrics = pytest.importorskip("skimage.metrics")
    gen = torch.Generator().manual_seed(13)
    a = torch.rand(4, 20, 27, generator=gen)
    b = a + 0.6 * torch.randn(4, 20, 27, generator=gen)
    b[1] = torch.round(b[1] * 2)  # ties
    got = ssim(a, b)
    for i in range(4):
        ref = metrics.structural_similarity(
            minmax_normalize(a[i : i + 1])[0].numpy(), minmax_normalize(b[i : i + 1])[0].numpy(),
            data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert got[i].item() == pytest.approx(ref, abs=1e-10)


@pytest.mark.numerics
def test_ssim_identity_scale_and_constant_maps():
    gen = torch.Generator().manual_seed(14)
    a = torch.randn(2, 16, 16, generator=gen)
    np.testing.assert_allclose(ssim(a, a).numpy(), 1.0, atol=1e-12)
    np.testing.assert_allclose(ssim(a, 3 * a + 7).numpy(), 1.0, atol=1e-9)  # min-max scaled
    zero = torch.zeros(1, 16, 16)
    assert ssim(zero, zero).item() == pytest.approx(1.0)
    norm = minmax_normalize(a)
    assert norm.amin().item() == 0.0 and norm.amax().item() == 1.0
    assert minmax_normalize(torch.full((1, 3, 3), 4.0)).abs().sum() == 0
