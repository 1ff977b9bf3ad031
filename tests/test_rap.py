"""RAP against hand-computed numbers, an independent plain-loop NumPy reference, conservation,
BatchNorm folding, pooling, batching, and its clear errors on unsupported models."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from conftest import assert_close_reordered

from attrpreserve.attribution import EXPLAINERS, rap
from attrpreserve.attribution.chain import build_chain
from attrpreserve.attribution.rap import propagate
from attrpreserve.models import create_model

# RAP against references computed another way (NumPy loops, hand-folded BatchNorm, one image at
# a time, a float mirror of a fake-quant model)
pytestmark = pytest.mark.numerics

def hand_mlp():
    """3 -> 3 -> 2 -> 2 with hand-set weights (the worked example below)."""
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2, bias=False), nn.ReLU(),
                          nn.Linear(2, 2)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1., 1, 0], [0, 1, 1], [1, -1, -1]]))
        model[0].bias.copy_(torch.tensor([0., 0, 0.5]))
        model[2].weight.copy_(torch.tensor([[1., -1, 2], [1, 1, -2]]))
        model[4].weight.copy_(torch.tensor([[1., -0.5], [0.5, 1]]))
        model[4].bias.copy_(torch.tensor([0.5, 0]))
    return model.double()


def layer_relevance(model, x, pairs):
    """{layer name: relevance at its input} for pairs [(image, class)]."""
    steps, out = build_chain(model, x)
    idx = torch.tensor([i for i, _ in pairs])
    cls = torch.tensor([c for _, c in pairs])
    rel, layers = propagate(steps, idx, cls, keep=True)
    return rel, dict(layers), out


# Worked example, x = (1, 2, -1):
#   a1 = relu(W1 x + b1) = (3, 1, 0.5);  a2 = relu(W2 a1) = (3, 3);  logits = W3 a2 + b3 = (2, 4.5)
# class 0, step 1 (absolute influence): z = a2 * W3[0] = (3, -1.5), |z| / 4.5 * 2 = (4/3, 2/3)
# step 2 (hidden W2): unit 0: z = (3, -1, 1), P = 4, N = 1 -> 4/3 * (3/4, 1/5, 1/4)
#                     unit 1: z = (3, 1, -1), P = 4, N = 1 -> 2/3 * (3/4, 1/4, 1/5)
#   sum: (3/2, 13/30, 7/15) = 2.4; excess 0.4 over 3 non-zero units -> shift 2/15
#   R1 = (41/30, 3/10, 1/3)                                       (sums to 2 = the logit)
# step 3 (input W1, z^B with l = -1, h = 2): x - l = (2, 3, 0), x - h = (-1, 0, -3)
#   unit 0: w = (1, 1, 0):   q = (2, 3, 0), 41/30 * q / 5
#   unit 1: w = (0, 1, 1):   q = (0, 3, 0), 3/10 * q / 3
#   unit 2: w = (1, -1, -1): q = (2, 0, 3), 1/3 * q / 5
#   R0 = (41/75 + 2/15, 41/50 + 3/10, 1/5) = (0.68, 1.12, 0.2)       (sums to 2)
# class 1: R2 = (1.5, 3); R' = (3.375, 1.05, 0.975), shift 0.3 -> R1 = (3.075, 0.75, 0.675);
#   R0 = (1.23 + 0.27, 1.845 + 0.75, 0.405) = (1.5, 2.595, 0.405)    (sums to 4.5)
HAND = {
    0: {"4": [4 / 3, 2 / 3], "2": [41 / 30, 3 / 10, 1 / 3], "0": [0.68, 1.12, 0.2]},
    1: {"4": [1.5, 3.0], "2": [3.075, 0.75, 0.675], "0": [1.5, 2.595, 0.405]},
}


def test_hand_computed_example():
    model = hand_mlp()
    x = torch.tensor([[1., 2, -1]], dtype=torch.float64)
    rel, layers, out = layer_relevance(model, x, [(0, 0), (0, 1)])
    torch.testing.assert_close(out, torch.tensor([[2., 4.5]], dtype=torch.float64))
    for j, c in enumerate((0, 1)):
        for name, expected in HAND[c].items():
            torch.testing.assert_close(layers[name][j].tolist(), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(rel.sum(1), torch.tensor([2., 4.5], dtype=torch.float64))


def test_shift_makes_weak_units_negative():
    """Uniform shifting turns units with less than the average excess negative (bi-polar)."""
    model = hand_mlp()
    with torch.no_grad():
        model[0].bias[2] = 0.02   # a1 = (3, 1, 0.02): unit 2 barely contributes
    x = torch.tensor([[1., 2, -1]], dtype=torch.float64)
    _, layers, out = layer_relevance(model, x, [(0, 0)])
    # a2 = (3 - 1 + 0.04, 3 + 1 - 0.04) = (2.04, 3.96); z = (2.04, -1.98); logit 0.56
    r2 = np.array([2.04, 1.98]) / 4.02 * 0.56
    # unit 0: z = (3, -1, 0.04): P = 3.04, N = 1; unit 1: z = (3, 1, -0.04): P = 4, N = 0.04
    r_raw = (r2[0] * np.array([3 / 3.04, 1 / 4.04, 0.04 / 3.04])
             + r2[1] * np.array([3 / 4, 1 / 4, 0.04 / 4.04]))
    r1 = r_raw - (r_raw.sum() - 0.56) / 3
    assert r1[2] < 0 < r1[1] < r1[0]
    torch.testing.assert_close(layers["2"][0].numpy(), r1, rtol=0, atol=1e-12)


def reference_rap(weights, biases, relu_after, x, c, bounds=None):
    """Plain-loop RAP (NumPy) on an MLP: ``relu_after[l]`` says whether a ReLU follows layer l."""
    acts = [x]
    for W, b, relu in zip(weights[:-1], biases[:-1], relu_after[:-1]):
        pre = W @ acts[-1] + b
        acts.append(np.maximum(pre, 0) if relu else pre)
    W, b, a = weights[-1], biases[-1], acts[-1]
    logit = W[c] @ a + b[c]
    z = np.array([a[j] * W[c, j] for j in range(len(a))])
    R = np.abs(z) / np.abs(z).sum() * logit
    for layer in range(len(weights) - 2, 0, -1):
        W, a = weights[layer], acts[layer]
        raw = np.zeros(len(a))
        for k in range(W.shape[0]):
            zk = [a[j] * W[k, j] for j in range(len(a))]
            P = sum(v for v in zk if v > 0)
            N = sum(-v for v in zk if v < 0)
            for j, v in enumerate(zk):
                if v > 0:
                    raw[j] += R[k] * v / P
                elif v < 0:
                    raw[j] += R[k] * -v / (P + N)
        nonzero = raw != 0
        raw[nonzero] -= (raw.sum() - R.sum()) / nonzero.sum()
        R = raw
    W = weights[0]
    low, high = (x.min(), x.max()) if bounds is None else bounds
    out = np.zeros(len(x))
    for k in range(W.shape[0]):
        q = np.array([W[k, j] * (x[j] - low) if W[k, j] > 0 else W[k, j] * (x[j] - high)
                      for j in range(len(x))])
        if q.sum() != 0:
            out += R[k] * q / q.sum()
    return out


def random_mlp(relu_after, sizes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    layers = []
    for i, relu in enumerate(relu_after):
        lin = nn.Linear(sizes[i], sizes[i + 1])
        with torch.no_grad():
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen))
            lin.bias.copy_(0.3 * torch.randn(lin.bias.shape, generator=gen))
        layers += [lin, nn.ReLU()] if relu else [lin]
    return nn.Sequential(*layers).double().eval()


@pytest.mark.parametrize("relu_after,bounds", [
    ((True, True, True, False), None),
    ((True, False, True, False), None),   # a hidden layer with negative inputs (no ReLU before)
    ((True, True, False), (-3.0, 3.0)),
])
def test_matches_numpy_reference(relu_after, bounds):
    sizes = [6, 7, 5, 4, 3][:len(relu_after) + 1]
    model = random_mlp(relu_after, sizes)
    weights = [m.weight.detach().numpy() for m in model if isinstance(m, nn.Linear)]
    biases = [m.bias.detach().numpy() for m in model if isinstance(m, nn.Linear)]
    x = torch.randn(3, sizes[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    pairs = [(0, 0), (0, 2), (1, 1), (2, 0), (2, 2)]
    steps, _ = build_chain(model, x)
    rel, _ = propagate(steps, torch.tensor([i for i, _ in pairs]),
                       torch.tensor([c for _, c in pairs]), bounds)
    for j, (i, c) in enumerate(pairs):
        ref = reference_rap(weights, biases, relu_after, x[i].numpy(), c, bounds)
        np.testing.assert_allclose(rel[j].numpy(), ref, rtol=1e-9, atol=1e-12)


def dense_matrix(conv, in_shape):
    """The matrix of ``conv`` (no bias) on inputs of ``in_shape``, built from basis images."""
    n = int(np.prod(in_shape))
    basis = torch.eye(n, dtype=torch.float64).view(n, *in_shape)
    with torch.no_grad():
        cols = torch.nn.functional.conv2d(basis, conv.weight, None, conv.stride, conv.padding)
    return cols.view(n, -1).T.numpy(), cols.shape[1:]


def test_conv_matches_numpy_reference_on_unrolled_convolutions():
    """Convolutions (padding, stride) give what the loop reference gives on their matrices."""
    torch.manual_seed(3)
    conv1 = nn.Conv2d(2, 3, 3, padding=1)
    conv2 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    model = nn.Sequential(conv1, nn.ReLU(), conv2, nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 3 * 3, 3)).double().eval()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    w1, shape1 = dense_matrix(conv1, (2, 5, 5))
    w2, _ = dense_matrix(conv2, tuple(shape1))
    b1 = conv1.bias.detach().numpy().repeat(25)
    b2 = conv2.bias.detach().numpy().repeat(9)
    w3, b3 = model[5].weight.detach().numpy(), model[5].bias.detach().numpy()
    pairs = [(0, 1), (1, 0), (1, 2)]
    steps, _ = build_chain(model, x)
    rel, _ = propagate(steps, torch.tensor([0, 1, 1]), torch.tensor([1, 0, 2]))
    for j, (i, c) in enumerate(pairs):
        ref = reference_rap([w1, w2, w3], [b1, b2, b3], (True, True, False),
                            x[i].flatten().numpy(), c)
        np.testing.assert_allclose(rel[j].flatten().numpy(), ref, rtol=1e-9, atol=1e-12)


def test_maxpool_winner_takes_all():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 2)).double().eval()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    _, layers, _ = layer_relevance(model, x, [(0, 1)])
    above, below = layers["3"][0].view(4, 4, 4), layers["2"][0]  # pool output / input
    act = model[1](model[0](x))[0].detach()
    windows = below.unfold(1, 2, 2).unfold(2, 2, 2).reshape(4, 4, 4, 4)
    argmax = act.unfold(1, 2, 2).unfold(2, 2, 2).reshape(4, 4, 4, 4).argmax(-1)
    winners = windows.gather(-1, argmax[..., None])[..., 0]
    torch.testing.assert_close(winners, above, rtol=0, atol=1e-15)
    assert (windows.abs().sum(-1) - winners.abs()).abs().max() < 1e-15  # nothing elsewhere


def bn_vgg(head="max", gamma_low=-0.5):
    model = create_model("vgg", num_classes=5, width=4, input_size=32, head=head)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(gamma_low, 1.5)   # some negative scales flip contributions
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


def test_batchnorm_folded_equals_hand_folded_model():
    torch.manual_seed(0)
    model = bn_vgg().double()
    folded = nn.Sequential()
    layers = list(model.features) + list(model.classifier)
    for i, m in enumerate(layers):
        if isinstance(m, nn.BatchNorm2d):
            conv = folded[-1]
            scale = m.weight / torch.sqrt(m.running_var + m.eps)
            new = nn.Conv2d(conv.in_channels, conv.out_channels, 3, padding=1).double()
            with torch.no_grad():
                new.weight.copy_(conv.weight * scale[:, None, None, None])
                new.bias.copy_(m.bias - m.running_mean * scale)
            folded[-1] = new
        else:
            folded.append(m)
    folded.eval()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    idx, cls = torch.tensor([0, 1, 1]), torch.tensor([4, 0, 2])
    a, logits = rap(model, x, idx, cls)
    b, logits_b = rap(folded, x, idx, cls)
    torch.testing.assert_close(logits, logits_b)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("head", ["max", "flatten"])
def test_conservation_on_vgg(head):
    """Every layer's relevance, and the map, sum to the pair's logit (signed, bias included)."""
    torch.manual_seed(0)
    model = bn_vgg(head)
    x = torch.rand(3, 3, 32, 32)
    pairs = [(0, 0), (0, 3), (1, 1), (2, 4)]
    rel, layers, out = layer_relevance(model, x, pairs)
    logits = out[[i for i, _ in pairs], [c for _, c in pairs]]
    for name, r in layers.items():
        torch.testing.assert_close(r.flatten(1).sum(1), logits, rtol=1e-4, atol=1e-6,
                                   msg=f"layer {name}")
    maps, logits2 = rap(model, x, torch.tensor([i for i, _ in pairs]),
                        torch.tensor([c for _, c in pairs]))
    torch.testing.assert_close(logits2, model(x).detach())
    torch.testing.assert_close(maps.sum(dim=(1, 2)), logits, rtol=1e-4, atol=1e-6)
    assert (maps > 0).any() and (maps < 0).any()  # bi-polar


def test_batched_equals_single_and_model_untouched():
    torch.manual_seed(0)
    model = bn_vgg()
    model.requires_grad_(True)
    x = torch.rand(3, 3, 32, 32)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    idx, cls = torch.tensor([0, 0, 1, 2]), torch.tensor([1, 3, 0, 4])
    maps, _ = rap(model, x, idx, cls)
    for j in range(len(idx)):
        single, _ = rap(model, x[idx[j]:idx[j] + 1], torch.tensor([0]), cls[j:j + 1])
        # one image vs a batch of three: other conv kernels / reduction orders (float32), at the
        # scale of the batch's largest map
        assert_close_reordered(maps[j], single[0], scale=maps.abs().max())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    with torch.no_grad():   # also inside no_grad
        again, _ = rap(model, x, idx, cls)
    torch.testing.assert_close(again, maps, rtol=0, atol=0)


def test_pruning_masks_are_used():
    torch.manual_seed(0)
    model, baked = bn_vgg(), bn_vgg()
    baked.load_state_dict(model.state_dict())
    for m, b in zip(model.modules(), baked.modules()):
        if isinstance(m, nn.Conv2d):
            prune.l1_unstructured(m, "weight", amount=0.6)
            prune.l1_unstructured(b, "weight", amount=0.6)
            prune.remove(b, "weight")
    x = torch.rand(2, 3, 32, 32)
    idx, cls = torch.tensor([0, 1]), torch.tensor([2, 3])
    # masked weights (weight_orig * mask in a hook) vs the same products stored: float32 rounding
    assert_close_reordered(rap(model, x, idx, cls)[0], rap(baked, x, idx, cls)[0])


class TorchvisionStyle(nn.Module):
    """In-place ReLUs and a functional flatten between features and classifier."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1),
                                      nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(24, 8), nn.ReLU(inplace=True),
                                        nn.Dropout(), nn.Linear(8, 3))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def test_torchvision_style_chain_conserves():
    torch.manual_seed(0)
    model = TorchvisionStyle().eval()
    x = torch.rand(2, 3, 16, 16)
    maps, logits = rap(model, x, torch.tensor([0, 1]), torch.tensor([2, 0]))
    torch.testing.assert_close(maps.sum(dim=(1, 2)), logits[[0, 1], [2, 0]], rtol=1e-4,
                               atol=1e-6)


class InplaceResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))

    def forward(self, x):
        out = self.conv(x)
        out += x                       # the storage is the conv's output: caught by its version
        return self.head(self.relu(out))


@pytest.mark.parametrize("make,match", [
    (lambda: __import__("torchvision").models.resnet18(num_classes=3), "layer1.0.relu"),
    (lambda: __import__("torchvision").models.mobilenet_v3_small(num_classes=3),
     "Sequential-style"),
    (InplaceResidual, "input of layer 'relu'"),
    (lambda: nn.Sequential(nn.Conv2d(3, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(72, 2)),
     "unsupported layer '1' \\(Tanh\\)"),
    (lambda: nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1)),
     "must end in a Linear"),
    (lambda: nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.BatchNorm2d(2), nn.Flatten(),
                           nn.Linear(72, 2)), "must directly follow"),
])
def test_unsupported_models_raise(make, match):
    model = make().eval()
    with pytest.raises(ValueError, match=match):
        rap(model, torch.rand(1, 3, 8, 8) if not hasattr(model, "fc") else torch.rand(1, 3, 32, 32),
            torch.tensor([0]), torch.tensor([1]))


def test_batchnorm_in_train_mode_raises():
    model = bn_vgg().train()
    with pytest.raises(ValueError, match="eval mode"):
        rap(model, torch.rand(2, 3, 32, 32), torch.tensor([0]), torch.tensor([1]))


def test_registered_and_empty_pairs():
    assert EXPLAINERS["rap"] is rap and EXPLAINERS.meta("rap")["differentiable"] is False
    none = torch.zeros(0, dtype=torch.long)
    maps, logits = rap(bn_vgg(), torch.rand(2, 3, 32, 32), none, none)
    assert maps.shape == (0, 32, 32) and logits.shape == (2, 5)


class FakeQuant(nn.Module):
    """A QAT activation fake-quant frozen into a plain module (for the mirror below)."""

    def __init__(self, fq):
        super().__init__()
        self.scale, self.zero_point = float(fq.scale), int(fq.zero_point)
        self.bounds = (fq.quant_min, fq.quant_max)

    def forward(self, x):
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, *self.bounds)


def float_mirror(qat, int8):
    """A plain Sequential computing what the fake-quant VGG computes, built from torch's own
    converted int8 model: dequantized int8 weights and biases, ReLUs, activation fake-quants."""
    layers = [FakeQuant(qat.quant.activation_post_process)]
    for fm, im in zip([*qat.features, *qat.classifier], [*int8.features, *int8.classifier]):
        if isinstance(fm, (nn.Conv2d, nn.Linear)):
            w = im.weight().dequantize()
            lin = (nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1) if w.dim() == 4
                   else nn.Linear(w.shape[1], w.shape[0]))
            lin.weight.data, lin.bias.data = w, im.bias().detach()
            layers += [lin, nn.ReLU()] if w.dim() == 4 else [lin]
            layers.append(FakeQuant(fm.activation_post_process))
        elif isinstance(fm, nn.MaxPool2d):
            layers.append(nn.MaxPool2d(2))
        elif isinstance(fm, nn.Flatten):
            layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten()]  # after the global max pool
    return nn.Sequential(*layers).eval()


def test_fake_quant_model_equals_its_float_mirror():
    """RAP on a QAT model reads the fused blocks' fake-quantized folded weights: it matches RAP
    on a float chain built from torch's converted int8 weights (shares equal; the mirror's logit
    is taken before the output fake-quant), and the map sums to the fake-quant model's logit."""
    from attrpreserve.attribution.chain import register_layer_kind
    from attrpreserve.compress.quantize import convert_int8, prepare_qat
    register_layer_kind("pass", FakeQuant)
    torch.manual_seed(0)
    float_model = create_model("vgg", num_classes=4, width=4, input_size=32, dropout=0.0).eval()
    x = torch.rand(3, 3, 32, 32)
    qat = prepare_qat(float_model, calibration=x).eval()
    mirror = float_mirror(qat, convert_int8(qat))
    # Two computations: the fused blocks scale the conv output by the BatchNorm factors, the
    # mirror adds folded biases, so float32 rounding differs and a value on a rounding boundary
    # of a fake quant may land one step apart (measured: equal).  Allowed: one output step where
    # the output rounding flips, one more for a flip upstream.
    step = float(qat.classifier[-1].activation_post_process.scale)
    torch.testing.assert_close(mirror(x), qat(x), rtol=0, atol=2 * step)
    idx, cls = torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 2, 3])
    ours, logits = rap(qat, x, idx, cls)
    ref, _ = rap(mirror, x, idx, cls)
    torch.testing.assert_close(ours.flatten(1).sum(1), logits[idx, cls], rtol=1e-4, atol=1e-7)
    shares = ours.flatten(1) / ours.flatten(1).sum(1, keepdim=True)
    ref_shares = ref.flatten(1) / ref.flatten(1).sum(1, keepdim=True)
    # the shares sum to 1: within 1e-5 of the total (measured 6e-9 on every kernel path tried)
    torch.testing.assert_close(shares, ref_shares, rtol=0, atol=1e-5)
