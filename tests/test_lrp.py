"""LRP / Excitation Backprop explainers against zennit's own attributor and LRP's conservation."""

import pytest
import torch
from torch import nn
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonPlusFlat, ExcitationBackprop, LayerMapComposite, layer_map_base
from zennit.rules import AlphaBeta
from zennit.types import Linear

from conftest import assert_close_reordered

from attrpreserve.attribution import EXPLAINERS, ebp, lrp, lrp_a1b0
from attrpreserve.models import create_model

PAIRS = [(0, 0), (0, 2), (1, 1), (2, 0)]


def bn_model():
    """Conv + BatchNorm (non-trivial statistics) + ReLU + MaxPool, Linear head with bias."""
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


def bias_free_model():
    """No BatchNorm, no biases: LRP's epsilon / z+ / alpha1-beta0 rules conserve relevance."""
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(8 * 2 * 2, 3, bias=False))
    return model.eval()


@pytest.fixture
def pairs():
    idx = torch.tensor([i for i, _ in PAIRS])
    cls = torch.tensor([c for _, c in PAIRS])
    return idx, cls


def reference_composite(name):
    """Built here from zennit directly (not through attrpreserve's make_composite)."""
    if name == "epsilon_plus_flat":
        return EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])
    if name == "alpha1_beta0":
        layer_map = layer_map_base() + [(Linear, AlphaBeta(alpha=1, beta=0))]
        return LayerMapComposite(layer_map=layer_map, canonizers=[SequentialMergeBatchNorm()])
    return ExcitationBackprop(canonizers=[SequentialMergeBatchNorm()])


def zennit_reference(model, images, i, c, name, use_logit):
    """zennit's Gradient attributor, one pair at a time, summed over channels."""
    attributor = Gradient(model, reference_composite(name))
    x = images[i:i + 1].clone()

    def seed(out):
        onehot = torch.zeros_like(out)
        onehot[0, c] = out[0, c].detach() if use_logit else 1.0
        return onehot

    _, rel = attributor(x, seed)
    return rel[0].sum(0)


def test_registered():
    for name in ("lrp", "lrp_a1b0", "ebp"):
        assert name in EXPLAINERS and EXPLAINERS.meta(name)["differentiable"] is False
    assert EXPLAINERS["lrp"] is lrp and EXPLAINERS["lrp_a1b0"] is lrp_a1b0
    assert EXPLAINERS["ebp"] is ebp


@pytest.mark.numerics
@pytest.mark.parametrize("method,name,use_logit", [
    (lambda *a: lrp(*a), "epsilon_plus_flat", True),
    (lambda *a: lrp(*a, composite="alpha1_beta0"), "alpha1_beta0", True),
    (lambda *a: ebp(*a), "excitation_backprop", False),
])
def test_matches_zennit_gradient(pairs, method, name, use_logit):
    model = bn_model()
    images = torch.rand(3, 3, 16, 16)
    idx, cls = pairs
    maps, logits = method(model, images, idx, cls)
    assert maps.shape == (len(PAIRS), 16, 16) and logits.shape == (3, 3)
    # BatchNorm merged into the convs vs applied after them, a batch vs one image: float32
    # rounding in another order, at the scale of the batch's largest map (a pair's own map can be
    # much smaller: alpha1-beta0 drops the negative part)
    assert_close_reordered(logits, model(images).detach())
    for j, (i, c) in enumerate(PAIRS):
        ref = zennit_reference(model, images, i, c, name, use_logit)
        assert_close_reordered(maps[j], ref, scale=maps.abs().max())


def test_lrp_a1b0_registered_equals_composite(pairs):
    model = bn_model()
    images = torch.rand(3, 3, 16, 16)
    idx, cls = pairs
    a, _ = lrp_a1b0(model, images, idx, cls)
    b, _ = lrp(model, images, idx, cls, composite="alpha1_beta0")
    torch.testing.assert_close(a, b)


@pytest.mark.numerics
@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "alpha1_beta0"])
def test_lrp_conservation(pairs, composite):
    model = bias_free_model()
    images = torch.rand(3, 3, 16, 16)  # positive inputs (needed for alpha1-beta0's conservation)
    idx, cls = pairs
    maps, logits = lrp(model, images, idx, cls, composite=composite, epsilon=1e-9)
    injected = logits[idx, cls]
    torch.testing.assert_close(maps.sum(dim=(1, 2)), injected, rtol=1e-2, atol=1e-6)


@pytest.mark.numerics
def test_ebp_nonnegative_and_conservative(pairs):
    model = bias_free_model()
    images = torch.rand(3, 3, 16, 16)
    idx, cls = pairs
    maps, _ = ebp(model, images, idx, cls)
    assert (maps >= 0).all()
    torch.testing.assert_close(maps.sum(dim=(1, 2)), torch.ones(len(PAIRS)), rtol=1e-2, atol=0)
    # also non-negative on a model with BatchNorm (merged into the convs)
    maps, _ = ebp(bn_model(), images, idx, cls)
    assert (maps >= 0).all()


@pytest.mark.numerics
@pytest.mark.parametrize("name", ["lrp", "lrp_a1b0", "ebp"])
def test_batched_equals_single_and_model_restored(pairs, name):
    model = bn_model()
    model.requires_grad_(True)
    images = torch.rand(3, 3, 16, 16)
    idx, cls = pairs
    before = model(images).detach()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    n_params = len(list(model.parameters()))
    maps, _ = EXPLAINERS[name](model, images, idx, cls)
    for j, (i, c) in enumerate(PAIRS):
        single, _ = EXPLAINERS[name](model, images[i:i + 1], torch.tensor([0]),
                                     torch.tensor([c]))
        # another batch: other float32 kernels; the batch's largest map sets the scale
        assert_close_reordered(maps[j], single[0], scale=maps.abs().max())
    # no gradients on parameters, hooks and canonizers undone
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert len(list(model.parameters())) == n_params
    assert model[0].bias is None
    for m in model.modules():
        assert not m._forward_hooks and not m._backward_hooks and not m._forward_pre_hooks
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert torch.equal(model(images).detach(), before)


def test_empty_pairs():
    model = bn_model()
    images = torch.rand(2, 3, 16, 16)
    maps, logits = lrp(model, images, torch.zeros(0, dtype=torch.long),
                       torch.zeros(0, dtype=torch.long))
    assert maps.shape == (0, 16, 16) and logits.shape == (2, 3)


@pytest.mark.numerics
@pytest.mark.parametrize("name", ["lrp", "lrp_a1b0", "ebp"])
def test_runs_on_vgg(name):
    model = create_model("vgg", num_classes=3, width=4).eval()
    images = torch.rand(2, 3, 64, 64)
    before = model(images).detach()
    maps, logits = EXPLAINERS[name](model, images, torch.tensor([0, 1]), torch.tensor([2, 0]))
    assert maps.shape == (2, 64, 64) and torch.isfinite(maps).all()
    assert_close_reordered(logits, before)  # BatchNorm merged into the convs: float32 rounding
    assert torch.equal(model(images).detach(), before)


@pytest.mark.numerics
@pytest.mark.parametrize("name", ["lrp", "lrp_a1b0", "ebp"])
def test_runs_on_resnet18(name):
    from torchvision.models import resnet18
    model = resnet18(num_classes=3).eval()
    images = torch.rand(1, 3, 32, 32)
    before = model(images).detach()
    maps, logits = EXPLAINERS[name](model, images, torch.tensor([0]), torch.tensor([2]))
    assert maps.shape == (1, 32, 32) and torch.isfinite(maps).all()
    assert_close_reordered(logits, before)  # BatchNorm merged into the convs: float32 rounding
    assert torch.equal(model(images).detach(), before)
    assert all(p.grad is None for p in model.parameters())
