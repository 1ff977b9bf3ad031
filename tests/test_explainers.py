"""Input-level explainers (gradient, input x gradient, IG) against independent references."""

import pytest
import torch
from captum.attr import InputXGradient, IntegratedGradients, Saliency
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import assert_close_reordered

from attrpreserve.attribution import (EXPLAINERS, gradient, input_x_gradient,
                                      integrated_gradients)
from attrpreserve.evaluate.runner import evaluate_models

PAIRS = [(0, 0), (0, 2), (1, 1)]


def tiny_model():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))
    return model.eval()


@pytest.fixture
def setup():
    model = tiny_model()
    images = torch.randn(2, 3, 8, 8)
    idx = torch.tensor([i for i, _ in PAIRS])
    cls = torch.tensor([c for _, c in PAIRS])
    return model, images, idx, cls


def autograd_reference(model, images, i, c):
    x = images[i:i + 1].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x)[0, c], x)
    return x.detach()[0], g[0]


def test_registered():
    for name in ("gradcam", "gradient", "input_x_gradient", "ig"):
        assert name in EXPLAINERS and "differentiable" in EXPLAINERS.meta(name)
    assert EXPLAINERS.meta("gradcam")["differentiable"] is True
    assert not any(EXPLAINERS.meta(n)["differentiable"]
               for n in ("gradient", "input_x_gradient", "ig"))


@pytest.mark.numerics
def test_gradient_and_ixg_match_autograd(setup):
    model, images, idx, cls = setup
    g_maps, logits = gradient(model, images, idx, cls)
    ixg_maps, logits2 = input_x_gradient(model, images, idx, cls)
    assert g_maps.shape == ixg_maps.shape == (3, 8, 8)
    with torch.no_grad():
        ref_logits = model(images)
    # (with and without autograd, the conv may run other kernels: float32 rounding)
    assert_close_reordered(logits, ref_logits)
    assert_close_reordered(logits2, ref_logits)
    assert not g_maps.requires_grad and not logits.requires_grad
    for j, (i, c) in enumerate(PAIRS):
        # one image, not the batch of pairs: float32 rounding at the scale of the batch's maps
        x, g = autograd_reference(model, images, i, c)
        assert_close_reordered(g_maps[j], g.abs().amax(0), scale=g_maps.abs().max())
        assert_close_reordered(ixg_maps[j], (x * g).sum(0), scale=ixg_maps.abs().max())


@pytest.mark.numerics
def test_gradient_and_ixg_match_captum(setup):
    model, images, idx, cls = setup
    g_maps, _ = gradient(model, images, idx, cls)
    ixg_maps, _ = input_x_gradient(model, images, idx, cls)
    x = images[idx]
    sal = Saliency(model).attribute(x.clone().requires_grad_(), target=cls, abs=True).amax(1)
    ixg = InputXGradient(model).attribute(x.clone().requires_grad_(), target=cls).sum(1)
    assert_close_reordered(g_maps, sal)
    assert_close_reordered(ixg_maps, ixg)


@pytest.mark.numerics
@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
def test_ig_matches_captum_per_pair(setup, method):
    model, images, idx, cls = setup
    maps, logits = integrated_gradients(model, images, idx, cls, steps=16, baseline=0.0,
                                        method=method, internal_batch_size=8)
    assert maps.shape == (3, 8, 8)
    with torch.no_grad():
        assert_close_reordered(logits, model(images))
    for j, (i, c) in enumerate(PAIRS):
        ref = IntegratedGradients(model).attribute(
            images[i:i + 1], baselines=0.0, target=c, n_steps=16, method=method).sum(1)[0]
        # the same path points and weights, batched otherwise: float32 rounding
        assert_close_reordered(maps[j], ref, scale=maps.abs().max())


@pytest.mark.numerics
@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
def test_ig_completeness(setup, method):
    model, images, idx, cls = setup
    baseline = 0.0
    maps, _ = integrated_gradients(model, images, idx, cls, steps=64, baseline=baseline,
                                   method=method)
    with torch.no_grad():
        z = model(images[idx])[torch.arange(len(idx)), cls]
        z0 = model(torch.full_like(images[idx], baseline))[torch.arange(len(idx)), cls]
    torch.testing.assert_close(maps.sum(dim=(1, 2)), z - z0, atol=1e-2, rtol=0)


@pytest.mark.numerics
@pytest.mark.parametrize("name", ["gradient", "input_x_gradient", "ig"])
def test_batched_equals_single_pair(setup, name):
    model, images, idx, cls = setup
    fn = EXPLAINERS[name]
    maps, _ = fn(model, images, idx, cls, None)
    for j in range(len(idx)):
        single, _ = fn(model, images, idx[j:j + 1], cls[j:j + 1], None)
        # another batch: other float32 kernels; the batch's largest map sets the scale
        assert_close_reordered(maps[j], single[0], scale=maps.abs().max())


@pytest.mark.parametrize("name", ["gradient", "input_x_gradient", "ig"])
def test_parameters_untouched(setup, name):
    model, images, idx, cls = setup
    model[0].bias.requires_grad_(False)   # a frozen parameter must stay frozen
    EXPLAINERS[name](model, images, idx, cls, "1")
    for n, p in model.named_parameters():
        assert p.grad is None, n
        assert p.requires_grad == (n != "0.bias"), n


def test_ignores_layer_and_no_grad_context(setup):
    model, images, idx, cls = setup
    a, _ = gradient(model, images, idx, cls, None)
    with torch.no_grad():
        b, _ = gradient(model, images, idx, cls, "1")
        c, _ = integrated_gradients(model, images, idx, cls, "1", steps=4)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert c.shape == a.shape


def test_evaluate_models_runs_gradient():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3))
    images = torch.randn(2, 3, 16, 16)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    masks = torch.zeros(2, 16, 16, dtype=torch.int64)
    masks[0, :8, :8], masks[0, 8:, 8:], masks[1, 4:12, 4:12] = 1, 3, 2
    masks[1, 0, 0] = 255
    loader = DataLoader(TensorDataset(images, labels, masks), batch_size=2)
    res = evaluate_models({"m": model}, loader, explainers=("gradcam", "gradient"),
                          layers={"m": "1"}, progress=False)
    attr = res["m"]["attribution"]
    assert set(attr) == {"gradcam", "gradient"}
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
