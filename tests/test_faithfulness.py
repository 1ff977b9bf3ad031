"""Deletion / insertion (RISE) on models whose answer is known, and the randomization check."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from attrpreserve.attribution import EXPLAINERS
from conftest import assert_close_reordered

from attrpreserve.evaluate import (
    blur_images,
    causal_curves,
    curve_auc,
    deletion_auc,
    insertion_auc,
    randomizable_layers,
    randomization_check,
    randomize_model,
    roc_auc,
    spearman,
    ssim,
)


class RegionMean(nn.Module):
    """Logit k = mean of channel 0 over region k (a boolean H x W mask per class)."""

    def __init__(self, regions: torch.Tensor):
        super().__init__()
        self.register_buffer("regions", regions.float())
        self.dummy = nn.Parameter(torch.zeros(()))  # a device to live on

    def forward(self, x):
        r = self.regions
        return torch.einsum("bhw,khw->bk", x[:, 0], r) / r.sum(dim=(1, 2)) + 0 * self.dummy


def _first_row_model(h=4, w=4):
    regions = torch.zeros(2, h, w, dtype=torch.bool)
    regions[0, 0] = True  # class 0: first row
    regions[1, -1] = True  # class 1: last row
    return RegionMean(regions)


# --------------------------------------------------------------------------- deletion / insertion
@pytest.mark.numerics
def test_deletion_curve_hand_case():
    model = _first_row_model()
    images = torch.ones(1, 3, 4, 4)
    idx, cls = torch.tensor([0, 0]), torch.tensor([0, 0])
    row_major_first = -torch.arange(16.0).view(4, 4)  # ranks the first row first
    row_major_last = torch.arange(16.0).view(4, 4)
    maps = torch.stack([row_major_first, row_major_last])
    # 16 px, 4 steps: 4 px per step; logit = share of the first row still present
    curves = causal_curves(model, images, idx, cls, maps, "deletion", steps=4, score="logit")
    np.testing.assert_allclose(curves.numpy(), [[1, 0, 0, 0, 0], [1, 1, 1, 1, 0]])
    auc = deletion_auc(model, images, idx, cls, maps, steps=4, score="logit")
    np.testing.assert_allclose(auc.numpy(), [0.5 / 4, 3.5 / 4])
    # steps that do not divide the pixels: floor(i * 16 / 3) = 0, 5, 10, 16 px changed
    curves = causal_curves(model, images, idx[:1], cls[:1], maps[:1], steps=3, score="logit")
    np.testing.assert_allclose(curves.numpy(), [[1, 0, 0, 0]])


@pytest.mark.numerics
def test_insertion_curve_hand_case_and_substrates():
    model = _first_row_model()
    images = torch.full((1, 3, 4, 4), 2.0)
    maps = -torch.arange(16.0).view(1, 4, 4)
    one = (torch.tensor([0]), torch.tensor([0]))
    ins = causal_curves(model, images, *one, maps, "insertion", steps=4, substrate="zero",
                        score="logit")
    np.testing.assert_allclose(ins.numpy(), [[0, 2, 2, 2, 2]])
    assert insertion_auc(model, images, *one, maps, steps=4, substrate="zero",
                         score="logit").item() == pytest.approx(3.5 * 2 / 4)
    # blur and mean of a constant image are the image: a flat insertion curve (up to the float32
    # rounding of the 11 x 11 blur kernel's weighted sums, which the CPU's conv kernel orders)
    for sub in ("blur", "mean"):
        flat = causal_curves(model, images, *one, maps, "insertion", steps=4, substrate=sub,
                             score="logit")
        assert_close_reordered(flat, torch.full_like(flat, 2.0), rel=1e-5)
    # the default score is the sigmoid probability (the logits 2 and 0 are exact; the curve's
    # sigmoid is taken in float64, so is the reference)
    prob = causal_curves(model, images, *one, maps, "deletion", steps=4)
    ref = torch.sigmoid(torch.tensor([[2.0, 0, 0, 0, 0]], dtype=torch.float64))
    assert_close_reordered(prob, ref)
    with pytest.raises(ValueError):
        causal_curves(model, images, *one, maps[:, :3], steps=4)


@pytest.mark.numerics
def test_curve_auc_matches_numpy_trapezoid():
    gen = torch.Generator().manual_seed(0)
    curves = torch.rand(5, 9, generator=gen, dtype=torch.float64)
    ref = [np.trapezoid(c, dx=1 / 8) for c in curves.numpy()]
    np.testing.assert_allclose(curve_auc(curves).numpy(), ref, atol=1e-12)


@pytest.mark.numerics
def test_blur_matches_scipy_gaussian_filter():
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 20, 17, generator=gen, dtype=torch.float64)
    got = blur_images(images)  # 11 x 11, sigma 5, edge replication
    for i in range(2):
        for c in range(3):
            # scipy: radius int(truncate * sigma + 0.5) = 5 with truncate 1; "nearest" = replicate
            ref = gaussian_filter(images[i, c].numpy(), sigma=5.0, truncate=1.0, mode="nearest")
            np.testing.assert_allclose(got[i, c].numpy(), ref, atol=1e-12)


@pytest.mark.numerics
def test_salient_region_first_beats_random_order():
    """A map that ranks the pixels the model reads first must give a lower deletion AUC and a
    higher insertion AUC than random orders (sigmoid probability, RISE substrates)."""
    h = w = 12
    regions = torch.zeros(2, h, w, dtype=torch.bool)
    regions[0, 2:6, 3:8] = True
    regions[1, 7:11, 1:5] = True
    model = RegionMean(regions)
    gen = torch.Generator().manual_seed(2)
    images = 0.5 * torch.rand(3, 3, h, w, generator=gen)
    images[:, :, regions.any(dim=0)] += 2.5  # bright objects: blurring dims them
    idx = torch.tensor([0, 1, 2, 2])
    cls = torch.tensor([0, 1, 0, 1])
    good = regions[cls].float() + 0.01 * torch.rand(4, h, w, generator=gen)
    kw = {"steps": 12, "batch_size": 7}
    d_good = deletion_auc(model, images, idx, cls, good, **kw)
    i_good = insertion_auc(model, images, idx, cls, good, **kw)
    for seed in range(3):
        rand = torch.rand(4, h, w, generator=torch.Generator().manual_seed(10 + seed))
        assert (d_good < deletion_auc(model, images, idx, cls, rand, **kw) - 0.05).all()
        assert (i_good > insertion_auc(model, images, idx, cls, rand, **kw) + 0.05).all()
    # chunking (bounded memory) does not change the numbers, up to float32 rounding: another
    # batch size runs the model's reductions in another order (the AUCs are float64 sums of
    # float32 model outputs; measured 5.8e-10 on AVX-512)
    assert_close_reordered(deletion_auc(model, images, idx, cls, good, steps=12,
                                        batch_size=1000), d_good, rel=1e-5)


def test_causal_curves_restores_train_mode():
    model = _first_row_model().train()
    causal_curves(model, torch.ones(1, 3, 4, 4), [0], [0], torch.rand(1, 4, 4), steps=2)
    assert model.training


# --------------------------------------------------------------------------- randomization
def _square_images(n=8, size=24, seed=1):
    """Noise with one bright red 6 x 6 square per image, and the squares' masks."""
    gen = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.rand(n, 3, size, size, generator=gen)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        r, c = torch.randint(2, size - 8, (2,), generator=gen).tolist()
        x[i, 0, r : r + 6, c : c + 6] += 1.0
        masks[i, r : r + 6, c : c + 6] = True
    return x, masks


def _square_detector():
    """A hand-set ("trained") model: class 0 = a bright square in the red channel."""
    model = nn.Sequential(nn.Conv2d(3, 4, 5, padding=2), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model[0].bias.fill_(-0.5)
        model[0].weight[0, 0] = 1.0 / 25  # 5 x 5 box filter on red
        model[0].weight[1, 1] = 1.0 / 25  # ... and on green
        model[2].weight.copy_(torch.eye(4)[:, :, None, None])
        model[6].weight[0, 0] = model[6].weight[1, 1] = 10.0
    return model.eval()


def test_randomize_model_layers_and_seed():
    model = _square_detector()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert randomizable_layers(model) == ["6", "2", "0"]  # output to input
    top = randomize_model(model, ["6"], seed=3)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])  # original untouched
    assert not torch.equal(top[6].weight, model[6].weight)
    assert torch.equal(top[0].weight, model[0].weight) and torch.equal(top[2].weight,
                                                                       model[2].weight)
    again = randomize_model(model, ["6"], seed=3)
    assert torch.equal(again[6].weight, top[6].weight)
    assert not torch.equal(randomize_model(model, ["6"], seed=4)[6].weight, top[6].weight)
    full = randomize_model(model, seed=3)
    assert all(not torch.equal(full[i].weight, model[i].weight) for i in (0, 2, 6))
    with pytest.raises(ValueError):
        randomize_model(model, ["nope"])


@pytest.mark.numerics
def test_randomized_maps_differ_and_identity_agrees():
    model = _square_detector()
    x, squares = _square_images()
    idx, cls = torch.arange(len(x)), torch.zeros(len(x), dtype=torch.long)
    original, _ = EXPLAINERS["gradient"](model, x, idx, cls, None)
    # the hand-set model's map sits on the square (a "trained" map, not noise)
    assert (roc_auc(original, squares) > 0.9).all()
    same, _ = EXPLAINERS["gradient"](randomize_model(model, []), x, idx, cls, None)
    assert torch.allclose(spearman(original, same), torch.ones(len(x), dtype=torch.float64))
    assert torch.allclose(ssim(original, same), torch.ones(len(x), dtype=torch.float64))
    rows = [randomization_check(model, x, idx, cls, "gradient", mode="full", seed=s)[0]
            for s in range(4)]
    assert all(r["randomized"] == ["6", "2", "0"] for r in rows)
    assert np.mean([r["spearman"] for r in rows]) < 0.3
    assert np.mean([r["ssim"] for r in rows]) < 0.3


def test_cascading_rows_follow_the_layers():
    model = _square_detector()
    x, _ = _square_images(4)
    idx, cls = torch.arange(4), torch.zeros(4, dtype=torch.long)
    rows = randomization_check(model, x, idx, cls, "gradcam", layer="3", mode="cascading",
                               seed=1)
    assert [r["randomized"] for r in rows] == [["6"], ["6", "2"], ["6", "2", "0"]]
    assert set(rows[0]) == {"randomized", "spearman", "spearman_abs", "ssim"}
    indep = randomization_check(model, x, idx, cls, "gradcam", layer="3", mode="independent")
    assert [r["randomized"] for r in indep] == [["6"], ["2"], ["0"]]
    with pytest.raises(ValueError):
        randomization_check(model, x, idx, cls, mode="sideways")
