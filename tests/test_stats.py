"""Bootstrap over images: against scipy.stats.bootstrap and hand-built cases."""

import numpy as np
import pytest
from scipy import stats

from attrpreserve.evaluate import (
    bootstrap_columns,
    delta_ci,
    group_means,
    mean_ci,
    per_class_mean,
    percentile_ci,
    resample_weights,
)
from attrpreserve.evaluate import stats as ap_stats


def _scipy_ci(data, statistic, paired, n_resamples, seed=0):
    res = stats.bootstrap(data, statistic, paired=paired, vectorized=True, method="percentile",
                          n_resamples=n_resamples, confidence_level=0.95,
                          rng=np.random.default_rng(seed))
    return res.confidence_interval.low, res.confidence_interval.high


def test_paired_delta_matches_scipy_bootstrap():
    rng = np.random.default_rng(0)
    a = rng.normal(0.6, 0.2, 40)
    b = a + rng.normal(-0.05, 0.1, 40)  # paired: b tracks a
    got = delta_ci(a, b, groups=np.arange(40), n_boot=20000, seed=1)
    lo, hi = _scipy_ci((a, b), lambda x, y, axis: np.mean(y - x, axis=axis), True, 20000)
    width = hi - lo
    assert got["delta"] == pytest.approx(np.mean(b - a))
    assert got["a"] == pytest.approx(a.mean()) and got["b"] == pytest.approx(b.mean())
    assert abs(got["ci_low"] - lo) < 0.05 * width and abs(got["ci_high"] - hi) < 0.05 * width
    # an unpaired bootstrap would be far wider: the pairing is what we test against
    lo_u, hi_u = _scipy_ci((a, b), lambda x, y, axis: np.mean(y, axis) - np.mean(x, axis),
                           False, 5000)
    assert (hi_u - lo_u) > 1.5 * width


def test_mean_ci_matches_scipy_bootstrap():
    rng = np.random.default_rng(1)
    x = rng.exponential(1.0, 60)
    got = mean_ci(x, groups=np.arange(60), n_boot=20000, seed=2)
    lo, hi = _scipy_ci((x,), lambda v, axis: np.mean(v, axis=axis), False, 20000)
    width = hi - lo
    assert got["mean"] == pytest.approx(x.mean())
    assert abs(got["ci_low"] - lo) < 0.05 * width and abs(got["ci_high"] - hi) < 0.05 * width


def test_constant_delta_has_zero_width():
    rng = np.random.default_rng(2)
    a = rng.random(30)
    groups = np.repeat(np.arange(10), 3)
    got = delta_ci(a, a + 0.25, groups, n_boot=500)
    assert got["delta"] == pytest.approx(0.25)
    assert got["ci_low"] == pytest.approx(0.25, abs=1e-12)
    assert got["ci_high"] == pytest.approx(0.25, abs=1e-12)
    same = delta_ci(a, a, groups, n_boot=500)
    assert same["delta"] == 0.0 and same["ci_low"] == 0.0 and same["ci_high"] == 0.0


def test_images_not_pairs_are_resampled():
    """Three identical pairs per image carry one image's information: the interval must equal
    the one-pair-per-image interval, and a pair-level bootstrap would be too narrow."""
    rng = np.random.default_rng(3)
    a, b = rng.random(25), rng.random(25)
    one = delta_ci(a, b, np.arange(25), n_boot=3000, seed=4)
    triple = delta_ci(np.repeat(a, 3), np.repeat(b, 3), np.repeat(np.arange(25), 3),
                      n_boot=3000, seed=4)
    assert triple["ci_low"] == pytest.approx(one["ci_low"], abs=1e-12)
    assert triple["ci_high"] == pytest.approx(one["ci_high"], abs=1e-12)
    pairs = delta_ci(np.repeat(a, 3), np.repeat(b, 3), np.arange(75), n_boot=3000, seed=4)
    assert (pairs["ci_high"] - pairs["ci_low"]) < 0.75 * (one["ci_high"] - one["ci_low"])


def test_filters_nan_and_class_balanced_means():
    a = np.array([1.0, 0.0, 1.0, np.nan, 1.0, 0.0])
    b = np.array([0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    where_a = np.array([True, True, False, True, True, True])
    where_b = np.array([True, False, True, True, True, False])
    groups = np.array([0, 0, 1, 1, 2, 2])
    got = delta_ci(a, b, groups, where_a, where_b, n_boot=200)
    # a pools pairs 0, 1, 4, 5 (pair 3 is NaN): 2 / 4; b pools 0, 2, 3, 4: 3 / 4
    assert got["a"] == pytest.approx(0.5) and got["b"] == pytest.approx(0.75)
    assert got["delta"] == pytest.approx(0.25)
    classes = np.array([0, 1, 0, 1, 0, 2])
    bal = mean_ci(b, groups, classes=classes, n_boot=200)
    # class 0: pairs 0, 2, 4 -> 2/3; class 1: pairs 1, 3 -> 1/2; class 2: 1 -> mean 13/18
    assert bal["mean"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert bal["mean"] == pytest.approx(per_class_mean(b, classes))
    assert bal["ci_low"] <= bal["mean"] <= bal["ci_high"]


def test_deterministic_and_chunk_independent(monkeypatch):
    rng = np.random.default_rng(5)
    x, groups = rng.random(50), rng.integers(0, 12, 50)
    first = mean_ci(x, groups, n_boot=300, seed=7)
    assert mean_ci(x, groups, n_boot=300, seed=7) == first
    assert mean_ci(x, groups, n_boot=300, seed=8) != first
    monkeypatch.setattr(ap_stats, "_CHUNK_ELEMENTS", 64)  # many small chunks of replicates
    chunked = mean_ci(x, groups, n_boot=300, seed=7)
    assert chunked == {k: pytest.approx(v, abs=1e-12) for k, v in first.items()}


def test_resample_weights_are_image_counts():
    groups = np.array([10, 10, 20, 30, 30, 30])
    chunks = list(resample_weights(groups, n_boot=50, seed=0))
    w = np.concatenate(chunks)
    assert w.shape == (50, 6)
    # pairs of one image share a weight; weights of the 3 images sum to 3 per replicate
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 5]).all()
    np.testing.assert_array_equal(w[:, [0, 2, 3]].sum(axis=1), 3)


def test_bootstrap_columns_share_replicates():
    rng = np.random.default_rng(6)
    a = rng.random(20)
    groups = np.arange(20)
    est, reps = bootstrap_columns({"a": (a, None), "a_again": (a.copy(), None),
                                   "half": (a, a > 0.5)}, groups, n_boot=100)
    np.testing.assert_array_equal(reps["a"], reps["a_again"])
    assert est["half"] == pytest.approx(a[a > 0.5].mean())
    lo, hi = percentile_ci(reps["a"])
    assert lo[0] < est["a"] < hi[0]


def test_group_means():
    got = group_means([1.0, 3.0, np.nan, 4.0], [0, 0, 1, 2], n_groups=4)
    np.testing.assert_array_equal(got[:1], [2.0])
    assert np.isnan(got[1]) and got[2] == 4.0 and np.isnan(got[3])


# --------------------------------------------------------------------------------------------
# Gap recovered: against a plain resampling loop with the same draws
# --------------------------------------------------------------------------------------------

def _plain_gap_loop(t, n, m, image, where, classes, n_boot, seed):
    """Gap, gain and ratio replicates, one replicate at a time in plain Python: draw the images
    with the same rng calls as ``resample_weights`` (``integers(0, G, G)`` per replicate; PCG64
    gives the same stream however the calls are split), list the pairs of every drawn image,
    and average (per class first when ``classes`` is given)."""
    ids = sorted(set(image))
    pairs_of = {g: [p for p in range(len(image)) if image[p] == g] for g in ids}
    rng = np.random.default_rng(seed)

    def mean(values, pairs):
        if classes is None:
            kept = [values[p] for p in pairs if where[p] and not np.isnan(values[p])]
            return sum(kept) / len(kept) if kept else float("nan")
        per_class = [mean_of_class(values, pairs, k) for k in sorted(set(classes))]
        per_class = [v for v in per_class if not np.isnan(v)]
        return sum(per_class) / len(per_class) if per_class else float("nan")

    def mean_of_class(values, pairs, k):
        kept = [values[p] for p in pairs
                if classes[p] == k and where[p] and not np.isnan(values[p])]
        return sum(kept) / len(kept) if kept else float("nan")

    gaps, gains, ratios = [], [], []
    for _ in range(n_boot):
        drawn = rng.integers(0, len(ids), size=len(ids))
        pairs = [p for d in drawn for p in pairs_of[ids[d]]]
        mt, mn, mm = mean(t, pairs), mean(n, pairs), mean(m, pairs)
        gaps.append(mt - mn)
        gains.append(mm - mn)
        ratios.append((mm - mn) / (mt - mn) if mt != mn else float("nan"))
    everything = list(range(len(image)))
    estimate = (mean(t, everything), mean(n, everything), mean(m, everything))
    return estimate, np.array(gaps), np.array(gains), np.array(ratios)


def _nanpercentile(x, q):
    x = x[~np.isnan(x)]
    return np.percentile(x, q)


# 9 images, 1-3 pairs each; classes 0-2; a teacher-correct style filter; NaN = missing pair
_IMAGE = [0, 0, 1, 2, 2, 2, 3, 4, 4, 5, 6, 6, 7, 8, 8]
_CLASS = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 0]
_T = [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0]
_N = [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
_M = [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, np.nan, 0.0, 1.0, 1.0, 0.0, 0.0]
_WHERE = [True, True, False, True, True, True, True, True, True, True, True, False, True,
          True, True]


@pytest.mark.parametrize("balanced", [False, True])
def test_gap_recovered_matches_a_plain_resampling_loop(balanced):
    classes = _CLASS if balanced else None
    got = ap_stats.gap_recovered(_T, _N, _M, _IMAGE, where=np.array(_WHERE),
                                 classes=None if classes is None else np.array(classes),
                                 n_boot=400, seed=3)
    (t, n, m), gaps, gains, ratios = _plain_gap_loop(_T, _N, _M, _IMAGE, _WHERE, classes,
                                                     400, 3)
    assert got["status"] == "ok"
    assert got["teacher"] == pytest.approx(t, abs=1e-12)
    assert got["naive"] == pytest.approx(n, abs=1e-12)
    assert got["matched"] == pytest.approx(m, abs=1e-12)
    assert got["gap"] == pytest.approx(t - n, abs=1e-12)
    assert got["recovered"] == pytest.approx((m - n) / (t - n), abs=1e-12)
    for key, reps in (("gap", gaps), ("gain", gains)):
        assert got[f"{key}_ci_low"] == pytest.approx(np.percentile(reps, 2.5), abs=1e-9)
        assert got[f"{key}_ci_high"] == pytest.approx(np.percentile(reps, 97.5), abs=1e-9)
    assert got["ci_low"] == pytest.approx(_nanpercentile(ratios, 2.5), abs=1e-9)
    assert got["ci_high"] == pytest.approx(_nanpercentile(ratios, 97.5), abs=1e-9)
    assert got["ci_low"] <= got["recovered"] <= got["ci_high"]


def test_gap_recovered_says_no_gap_when_teacher_equals_naive():
    rng = np.random.default_rng(8)
    teacher = rng.random(40)
    image = np.repeat(np.arange(20), 2)
    got = ap_stats.gap_recovered(teacher, teacher, teacher + 0.1, image, n_boot=200)
    assert got["status"] == "no gap"
    assert got["gap"] == 0.0 and got["gap_ci_low"] == 0.0 and got["gap_ci_high"] == 0.0
    assert np.isnan(got["recovered"]) and np.isnan(got["ci_low"]) and np.isnan(got["ci_high"])
    assert got["gain"] == pytest.approx(0.1)  # what matching changed is still reported
    # a gap lost in the noise: the interval straddles 0, so no ratio either
    noisy = ap_stats.gap_recovered(teacher, teacher + rng.normal(0, 0.3, 40) - 0.01,
                                   teacher, image, n_boot=200)
    assert noisy["gap_ci_low"] < 0 < noisy["gap_ci_high"] and noisy["status"] == "no gap"
    # a clear gap, lower-is-better style (naive above the teacher): the ratio is sign-free
    far = ap_stats.gap_recovered(teacher, teacher + 1.0, teacher + 0.25, image, n_boot=200)
    assert far["status"] == "ok" and far["recovered"] == pytest.approx(0.75)
    assert far["ci_low"] == pytest.approx(0.75) and far["ci_high"] == pytest.approx(0.75)
    missing = ap_stats.gap_recovered(teacher, np.full(40, np.nan), teacher, image, n_boot=50)
    assert missing["status"] == "undefined"


def test_gaps_recovered_columns_match_one_metric_at_a_time():
    rng = np.random.default_rng(9)
    t, n, m = (rng.random((30, 3)) for _ in range(3))
    n[:, 1] -= 0.5  # one clear gap
    image = np.repeat(np.arange(10), 3)
    where = rng.random(30) > 0.2
    cols = ap_stats.gaps_recovered(t, n, m, image, where, n_boot=150, seed=2)
    for j in range(3):
        one = ap_stats.gap_recovered(t[:, j], n[:, j], m[:, j], image, where, n_boot=150, seed=2)
        assert cols[j] == {k: pytest.approx(v, abs=1e-12, nan_ok=True) for k, v in one.items()}
    assert cols[1]["status"] == "ok"
    with pytest.raises(ValueError, match="n_boot"):
        ap_stats.gap_recovered(t[:, 0], n[:, 0], m[:, 0], image, n_boot=0)


def test_means_ci_columns_share_replicates_and_n_boot_zero():
    rng = np.random.default_rng(10)
    x = rng.random((24, 2))
    image = np.repeat(np.arange(8), 3)
    both = ap_stats.means_ci(x, image, n_boot=100, seed=1)
    for j in range(2):
        one = mean_ci(x[:, j], image, n_boot=100, seed=1)
        assert both[j] == {k: pytest.approx(one[k], abs=1e-12) for k in both[j]}
    bare = ap_stats.means_ci(x, image, n_boot=0)
    assert bare[0]["mean"] == pytest.approx(x[:, 0].mean())
    assert np.isnan(bare[0]["ci_low"]) and np.isnan(bare[1]["ci_high"])
