"""Occlusion against captum's Occlusion, RISE on a model with a known answer, no autograd."""

import pytest
import torch
from captum.attr import Occlusion
from torch import nn

from conftest import assert_close_reordered

from attrpreserve.attribution import EXPLAINERS, occlusion, rise
from attrpreserve.attribution.perturbation import rise_masks, window_masks

PAIRS = [(0, 0), (0, 2), (1, 1), (2, 2)]


def small_cnn():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 9 * 9, 3)).eval()


@pytest.fixture
def setup():
    model = small_cnn()
    images = torch.rand(3, 3, 18, 18)
    idx = torch.tensor([i for i, _ in PAIRS])
    cls = torch.tensor([c for _, c in PAIRS])
    return model, images, idx, cls


def score_scale(logits, score="logit"):
    """The magnitude of the scores: occlusion and RISE maps are (weighted) differences of the
    model's scores, so their float32 rounding scales with the scores, not with the (smaller)
    differences."""
    scores = {"logit": logits, "sigmoid": torch.sigmoid(logits),
              "softmax": torch.softmax(logits, 1)}[score]
    return scores.abs().max()


class RegionMean(nn.Module):
    """Logit c = mean over channels and region c of the image; no parameters at all."""

    REGIONS = [(slice(2, 10), slice(4, 12)), (slice(20, 30), slice(18, 28))]

    def forward(self, x):
        return torch.stack([x[:, :, ys, xs].mean(dim=(1, 2, 3)) for ys, xs in self.REGIONS], 1)


@pytest.mark.numerics
@pytest.mark.parametrize("window,stride,baseline", [(4, 2, 0.0), (5, 3, 0.3), (3, 3, -1.0)])
def test_occlusion_matches_captum(setup, window, stride, baseline):
    model, images, idx, cls = setup
    maps, logits = occlusion(model, images, idx, cls, window=window, stride=stride,
                             baseline=baseline, batch_size=7)
    assert maps.shape == (len(PAIRS), 18, 18)
    assert_close_reordered(logits, model(images).detach())
    ref = Occlusion(model).attribute(images[idx], sliding_window_shapes=(3, window, window),
                                     strides=(3, stride, stride), baselines=baseline, target=cls,
                                     perturbations_per_eval=32)
    # other batches of occluded images (7 vs 32): other float32 kernels / reduction orders
    assert_close_reordered(maps, ref[:, 0], scale=score_scale(logits))


@pytest.mark.numerics
def test_occlusion_defaults(setup):
    """Window = side // 8 (at least 1), stride = window // 2, as captum with those shapes."""
    model, _, idx, cls = setup
    images = torch.rand(3, 3, 32, 32)
    maps, logits = occlusion(model_32(), images, idx, cls)
    ref = Occlusion(model_32()).attribute(images[idx], sliding_window_shapes=(3, 4, 4),
                                          strides=(3, 2, 2), baselines=0.0, target=cls,
                                          perturbations_per_eval=32)
    # other batches: float32 rounding
    assert_close_reordered(maps, ref[:, 0], scale=score_scale(logits))


def model_32():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                         nn.Flatten(), nn.Linear(64, 3)).eval()


def test_window_masks_cover_every_pixel():
    masks = window_masks(18, 18, 5, 3)
    assert masks.shape == (36, 18, 18)          # ceil(13 / 3) + 1 = 6 positions per axis
    assert masks[-1, 15:, 15:].all() and masks[-1].sum() == 9   # last window cropped
    assert (masks.sum(0) >= 1).all()
    with pytest.raises(ValueError):
        window_masks(8, 8, 4, 5)


def test_rise_masks_deterministic():
    a = torch.cat(list(rise_masks(300, 4, 0.5, (16, 20), seed=3, block=64)))
    b = torch.cat(list(rise_masks(300, 4, 0.5, (16, 20), seed=3, block=300)))
    c = torch.cat(list(rise_masks(300, 4, 0.5, (16, 20), seed=4)))
    assert a.shape == (300, 16, 20)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    assert abs(a.mean().item() - 0.5) < 0.05
    # smooth masks: neighbouring pixels differ by at most one cell's bilinear step
    assert (a[:, :, 1:] - a[:, :, :-1]).abs().max() <= 1 / 4 + 1e-6


@pytest.mark.numerics
def test_rise_matches_its_formula(setup):
    """sum_i score(model(x * M_i))[c] M_i / (N p), computed here one mask at a time."""
    model, images, idx, cls = setup
    options = dict(n_masks=50, grid=3, p=0.4, seed=7, score="softmax", batch_size=16)
    maps, _ = rise(model, images, idx, cls, center=False, **options)
    centered, _ = rise(model, images, idx, cls, **options)
    masks = torch.cat(list(rise_masks(50, 3, 0.4, (18, 18), seed=7)))
    with torch.no_grad():
        for j, (i, c) in enumerate(PAIRS):
            scores = [torch.softmax(model(images[i:i + 1] * m), 1)[0, c] for m in masks]
            ref = sum(s * m for s, m in zip(scores, masks)) / (50 * 0.4)
            # one mask at a time, summed in a loop vs batched: float32 rounding in another order
            assert_close_reordered(maps[j], ref)
            mean = sum(scores) / 50
            # centred: a small difference of terms of the size of the map above
            terms = ref.abs().max()
            ref = sum((s - mean) * m for s, m in zip(scores, masks)) / (50 * 0.4)
            assert_close_reordered(centered[j], ref, scale=terms)


@pytest.mark.numerics
@pytest.mark.parametrize("score", ["logit", "sigmoid"])
def test_rise_peaks_in_the_known_region(score):
    """The logit of class c is the mean of region c: its map must peak inside that region."""
    images = torch.rand(2, 3, 32, 32) * 0.5 + 0.5
    maps, logits = rise(RegionMean(), images, torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]),
                        n_masks=500, grid=8, score=score)
    assert_close_reordered(logits, RegionMean()(images))
    for j, c in enumerate([0, 1, 1]):
        ys, xs = RegionMean.REGIONS[c]
        inside = torch.zeros(32, 32, dtype=torch.bool)
        inside[ys, xs] = True
        peak = maps[j].flatten().argmax()
        assert inside.flatten()[peak], (j, c)
        assert maps[j][inside].mean() > maps[j][~inside].mean() + 3 * maps[j][~inside].std()


@pytest.mark.numerics
def test_occlusion_known_region():
    """Occluding a window only changes class c's logit where it overlaps region c."""
    images = torch.rand(1, 3, 32, 32) + 0.5
    maps, _ = occlusion(RegionMean(), images, torch.tensor([0, 0]), torch.tensor([0, 1]),
                        window=2, stride=2)   # the regions are aligned to this grid
    for j, (ys, xs) in enumerate(RegionMean.REGIONS):
        inside = torch.zeros(32, 32, dtype=torch.bool)
        inside[ys, xs] = True
        assert (maps[j][inside] > 0).all() and (maps[j][~inside].abs() < 1e-6).all()


@pytest.mark.numerics
@pytest.mark.parametrize("name,options", [("occlusion", {"window": 6, "stride": 3}),
                                          ("rise", {"n_masks": 40, "grid": 3})])
def test_batched_equals_single_and_deterministic(setup, name, options):
    model, images, idx, cls = setup
    maps, logits = EXPLAINERS[name](model, images, idx, cls, None, batch_size=16, **options)
    again, _ = EXPLAINERS[name](model, images, idx, cls, None, batch_size=16, **options)
    assert torch.equal(maps, again)
    scale = score_scale(logits, "logit" if name == "occlusion" else "sigmoid")  # the defaults
    for j in range(len(idx)):
        single, _ = EXPLAINERS[name](model, images[idx[j]:idx[j] + 1], torch.tensor([0]),
                                     cls[j:j + 1], None, batch_size=16, **options)
        # other batches: float32 rounding
        assert_close_reordered(maps[j], single[0], scale=scale)


class NoGradWrapper(nn.Module):
    """A model whose forward runs under no_grad (no autograd graph ever exists)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        with torch.no_grad():
            return self.inner(x)


@pytest.mark.numerics
@pytest.mark.parametrize("name", ["occlusion", "rise"])
def test_without_autograd(setup, name):
    model, images, idx, cls = setup
    options = {"n_masks": 20} if name == "rise" else {}
    ref, logits = EXPLAINERS[name](model, images, idx, cls, None, **options)
    scale = score_scale(logits, "logit" if name == "occlusion" else "sigmoid")  # the defaults
    frozen = small_cnn()
    frozen.load_state_dict(model.state_dict())
    frozen.requires_grad_(False)
    # (without autograd the conv may run other kernels: float32 rounding)
    for m in (frozen, NoGradWrapper(model)):
        maps, _ = EXPLAINERS[name](m, images, idx, cls, None, **options)
        assert_close_reordered(maps, ref, scale=scale)
    with torch.inference_mode():
        maps, _ = EXPLAINERS[name](model, images, idx, cls, None, **options)
    assert_close_reordered(maps, ref, scale=scale)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.numerics
def test_dynamic_int8_model(setup):
    """A torch.ao dynamic-quantized (int8 Linear) model: no autograd, maps close to float's."""
    import warnings

    model, images, idx, cls = setup
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    for name, options in (("occlusion", {}), ("rise", {"n_masks": 100})):
        ref, _ = EXPLAINERS[name](model, images, idx, cls, None, **options)
        maps, _ = EXPLAINERS[name](qmodel, images, idx, cls, None, **options)
        cos = torch.nn.functional.cosine_similarity(maps.flatten(1), ref.flatten(1))
        assert (cos > 0.95).all(), (name, cos)


@pytest.mark.numerics
def test_converted_int8_vgg():
    """The project's QAT -> int8 conversion (when present): maps close to the fake-quant model's."""
    quantize = pytest.importorskip("attrpreserve.compress.quantize")
    from attrpreserve.models import create_model

    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)
    qat = quantize.prepare_qat(create_model("vgg", num_classes=4, width=4, input_size=32),
                               calibration=images).eval()
    int8 = quantize.convert_int8(qat)
    idx, cls = torch.tensor([0, 1]), torch.tensor([1, 3])
    for name, options in (("occlusion", {}), ("rise", {"n_masks": 100})):
        ref, _ = EXPLAINERS[name](qat, images, idx, cls, None, **options)
        maps, logits = EXPLAINERS[name](int8, images, idx, cls, None, **options)
        assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all()
        cos = torch.nn.functional.cosine_similarity(maps.flatten(1), ref.flatten(1))
        assert (cos > 0.8).all(), (name, cos)


def test_empty_pairs_and_registry(setup):
    model, images, _, _ = setup
    none = torch.zeros(0, dtype=torch.long)
    for name in ("occlusion", "rise"):
        maps, logits = EXPLAINERS[name](model, images, none, none, None)
        assert maps.shape == (0, 18, 18) and logits.shape == (3, 3)
        assert EXPLAINERS.meta(name)["differentiable"] is False
    assert EXPLAINERS["occlusion"] is occlusion and EXPLAINERS["rise"] is rise
    with pytest.raises(ValueError, match="score"):
        rise(model, images, none, none, score="prob")
