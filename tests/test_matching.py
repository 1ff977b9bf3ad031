"""WCAM / AT / Grad-CAM: hand computations, finite differences, the drop contract, captum."""

import pytest
import torch
from torch import nn

from conftest import assert_close_reordered

from attrpreserve.attribution import gradcam, pair_gradcam
from attrpreserve.recipes import DistillStep, multilabel_kd_loss
from attrpreserve.matching import (WCAM, AttentionTransfer, AttributionMatcher, drop_mask,
                                   normalized_distance)
from attrpreserve.models import LayerTap, create_model


class Tiny(nn.Module):
    """conv -> relu (tapped as 'act') -> flatten -> linear -> tanh -> linear."""

    def __init__(self, channels=3, side=4, classes=3, hidden=5):
        super().__init__()
        self.conv = nn.Conv2d(2, channels, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Sequential(nn.Flatten(1), nn.Linear(channels * side * side, hidden),
                                  nn.Tanh(), nn.Linear(hidden, classes))

    def forward(self, x):
        return self.head(self.act(self.conv(x)))


def linear_tiny(classes=3):
    m = Tiny(classes=classes)
    m.head = nn.Sequential(nn.Flatten(1), nn.Linear(3 * 16, classes))
    return m


@pytest.mark.numerics
def test_wcam_map_equals_hand_computation():
    # Linear head: dz_c/dA_k[h,w] = W[c, k, h, w], so alpha_k = sum_hw W[c, k].
    model, x = linear_tiny(), torch.randn(4, 2, 4, 4)
    classes = torch.tensor([0, 2, 1, 2])
    with LayerTap(model, "act", detach=True) as tap:
        out = model(x)
    maps = pair_gradcam(tap, out, classes)
    a = model.act(model.conv(x)).detach()
    w = model.head[1].weight.detach().view(3, 3, 4, 4)
    alpha = w[classes].sum(dim=(2, 3))  # B x C
    hand = torch.relu((alpha[:, :, None, None] * a).sum(1))
    assert_close_reordered(maps, hand)  # the same sums in another order (float32)


@pytest.mark.numerics
def test_pair_expansion_equals_one_pair_at_a_time():
    model, x = Tiny().eval(), torch.randn(3, 2, 4, 4)
    img, cls = torch.tensor([0, 0, 1, 2, 2]), torch.tensor([0, 2, 1, 0, 1])
    maps, logits = gradcam(model, x, img, cls, layer="act")
    assert_close_reordered(logits, model(x))
    for j in range(len(img)):
        single, _ = gradcam(model, x[img[j]][None], torch.tensor([0]), cls[j][None], "act")
        # another batch: other float32 kernels; the batch's largest map sets the scale
        assert_close_reordered(maps[j], single[0], scale=maps.abs().max())


@pytest.mark.numerics
def test_gradcam_matches_captum():
    captum = pytest.importorskip("captum.attr")
    model, x = Tiny().eval(), torch.randn(4, 2, 4, 4)
    classes = torch.tensor([1, 0, 2, 1])
    maps, _ = gradcam(model, x, torch.arange(4), classes, layer="act")
    ref = captum.LayerGradCam(model, model.act).attribute(x, target=classes, relu_attributions=True)[:, 0]
    # captum averages the gradient over space; WCAM/our Grad-CAM sums it (scale H*W = 16).
    assert_close_reordered(maps, ref * 16)


def _wcam_loss(student, teacher, x, student_layer="act"):
    matcher = AttributionMatcher(teacher, student, WCAM(drop=0.0), "act", student_layer)
    return matcher(x)[2]


def test_wcam_gradient_matches_finite_differences():
    torch.manual_seed(1)
    teacher = Tiny(channels=4).double().eval()
    student = Tiny(channels=3).double()
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    names = [n for n, _ in student.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in student.parameters())

    assert torch.autograd.gradcheck(lambda *ps: _wcam_loss(_Proxy(student, ps, names), teacher, x,
                                                                      "student.act"),
                                    params, eps=1e-6, atol=1e-5)
    # The head's weights reach the loss only through the channel weights alpha: their gradient
    # exists only if the second-order path is wired.
    loss = _wcam_loss(student, teacher, x)
    g = torch.autograd.grad(loss, student.head[3].weight)[0]
    assert g.abs().sum() > 0


class _Proxy(nn.Module):
    """Student whose parameters are the given tensors (for gradcheck), same layer names."""

    def __init__(self, student, params, names):
        super().__init__()
        self.student, self.params, self.names = student, params, names

    def forward(self, x):
        return torch.func.functional_call(self.student, dict(zip(self.names, self.params)), (x,))


def test_wcam_finite_for_all_zero_map():
    teacher, student = Tiny().eval(), Tiny()
    with torch.no_grad():
        student.conv.weight.zero_()
        student.conv.bias.fill_(-1.0)  # ReLU output is all zero -> the student's map is zero
    x = torch.randn(2, 2, 4, 4)
    loss = _wcam_loss(student, teacher, x)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)


def test_drop_mask_zeroes_exact_count():
    g = torch.Generator().manual_seed(0)
    for c, p in [(512, 0.3), (10, 0.25), (7, 0.5), (16, 0.0)]:
        m = drop_mask(c, p, g)
        assert int((m == 0).sum()) == round(p * c) and set(m.tolist()) <= {0.0, 1.0}


@pytest.mark.numerics
def test_drop_touches_teacher_only():
    teacher, student, x = Tiny(channels=8).eval(), Tiny(channels=3).eval(), torch.randn(4, 2, 4, 4)
    wcam = WCAM(drop=0.25, generator=torch.Generator().manual_seed(0))
    loss = AttributionMatcher(teacher, student, wcam, "act", "act")(x)[2]
    # Hand computation: the same 2 of 8 teacher channels zeroed, the student's map untouched.
    keep = drop_mask(8, 0.25, torch.Generator().manual_seed(0))
    assert int((keep == 0).sum()) == 2
    with LayerTap(teacher, "act", detach=True) as tt:
        out = teacher(x)
    cls = out.argmax(1)
    (grads,) = torch.autograd.grad(out[torch.arange(4), cls].sum(), tt.pair_activation)
    a = tt.pair_activation.detach()
    alpha = grads.sum((2, 3), keepdim=True)
    t_dropped = torch.relu((alpha * a * keep[None, :, None, None]).sum(1))
    t_full = torch.relu((alpha * a).sum(1))
    s_maps, _ = gradcam(student, x, torch.arange(4), cls, "act")
    assert_close_reordered(loss, normalized_distance(t_dropped, s_maps))
    assert not torch.allclose(t_dropped, t_full)


def test_teacher_forced_to_eval_and_gets_no_gradient():
    teacher, student = Tiny().train(), Tiny()
    teacher.head.insert(1, nn.Dropout(0.5))
    x = torch.randn(4, 2, 4, 4)
    step = DistillStep(teacher, WCAM(drop=0.3), lam=10.0, teacher_layer="act", student_layer="act")
    loss, terms = step(student, x, torch.zeros(4, 3))
    loss.backward()
    assert not teacher.training
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())


@pytest.mark.parametrize("target", ["top1", "labels"])
def test_wcam_zero_when_student_equals_teacher(target):
    teacher = Tiny().eval()
    x, y = torch.randn(4, 2, 4, 4), torch.tensor([[1., 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 1]])
    matcher = AttributionMatcher(teacher, teacher, WCAM(drop=0.0, target=target), "act", "act")
    wcam_student = matcher(x, y)[2]
    assert float(wcam_student.detach()) < 1e-10
    assert float(AttributionMatcher(teacher, teacher, AttentionTransfer(), "act", "act")(x)[2].detach()) < 1e-10


@pytest.mark.numerics
def test_kd_loss_matches_hand_binary_kl():
    s, t, y = torch.randn(5, 3), torch.randn(5, 3), (torch.rand(5, 3) > 0.5).float()
    T, a = 4.0, 0.9
    pt, ps = torch.sigmoid(t / T), torch.sigmoid(s / T)
    kl = (pt * torch.log(pt / ps) + (1 - pt) * torch.log((1 - pt) / (1 - ps))).mean()
    bce = torch.nn.functional.binary_cross_entropy(torch.sigmoid(s), y)
    assert_close_reordered(multilabel_kd_loss(s, t, y, T, a),
                           a * T * T * kl + (1 - a) * bce)  # the same terms in another order


def test_vgg_default_layer_and_student_width():
    t = create_model("vgg", num_classes=8, width=16)
    s = create_model("vgg", num_classes=8, width=16, width_divisor=4)
    x = torch.randn(2, 3, 64, 64)
    with LayerTap(t, detach=True) as tt, torch.enable_grad():
        t(x)
    assert tt.activation.shape == (2, 128, 8, 8)
    with LayerTap(s) as st:
        s(x)
    assert st.activation.shape == (2, 32, 8, 8)


def test_vgg16_paper_layout_and_divisors():
    full = create_model("vgg16", num_classes=20)
    small = create_model("vgg16", num_classes=20, width_divisor=8)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert full.classifier[-1].in_features == 512 * 7 * 7  # the paper's pool5 head at 227 px
    assert 0.01 < n(small) / n(full) < 0.03  # the paper's x8 student: ~1.9% of the parameters
    out = small.eval()(torch.rand(1, 3, 227, 227))
    assert out.shape == (1, 20)
    assert small.last_relu_name() == "features.42" and small.last_pool_name() == "features.43"


class LRPNet(nn.Module):
    """conv -> relu ('act') -> conv -> BatchNorm -> relu -> max-pool -> flatten -> linear."""

    def __init__(self, channels=3):
        super().__init__()
        self.conv, self.act = nn.Conv2d(2, channels, 3, padding=1), nn.ReLU()
        self.tail = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.BatchNorm2d(4),
                                  nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 3))
        bn = self.tail[1]
        with torch.no_grad():  # non-trivial running statistics, as after training
            bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.3, 0.3)

    def forward(self, x):
        return self.tail(self.act(self.conv(x)))


@pytest.mark.numerics
def test_lrp_layer_relevance_equals_zennit():
    """The hand-written (differentiable) AlphaBeta(1, 0) relevance at a layer equals the gradient
    zennit's own alpha1-beta0 composite sends through that layer (BatchNorm merged)."""
    from attrpreserve.attribution.lrp import a1b0_layer_relevance, make_composite
    from attrpreserve.attribution.chain import ChainRecorder
    torch.manual_seed(0)
    model = LRPNet().double().eval()
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    classes = torch.tensor([2, 0, 1])
    with ChainRecorder(model) as rec, torch.no_grad():
        model(x)
    ours = a1b0_layer_relevance(rec.calls, model.act, torch.arange(3), classes)
    seen = {}

    def keep_gradient(module, inputs, out):
        out.register_hook(lambda g: seen.setdefault("relevance", g))

    handle = model.act.register_forward_hook(keep_gradient)
    try:
        with make_composite("alpha1_beta0", model).context(model) as m:
            xr = x.clone().requires_grad_(True)
            out = m(xr)
            torch.autograd.grad(out, xr, torch.eye(3, dtype=out.dtype)[classes])
    finally:
        handle.remove()
    # zennit's merged BatchNorm is left computing x / sqrt(1 + eps), not exactly the identity:
    # the layers after it see inputs 5e-6 smaller (without the BatchNorm both agree to 1e-16)
    torch.testing.assert_close(ours, seen["relevance"].sum(1), rtol=2e-5, atol=1e-9)


def test_lrp_matching_gradient_matches_finite_differences():
    """LRP matching is differentiable w.r.t. every student parameter (gradcheck), including the
    layers after the matched one, which reach the loss only through the relevance rules."""
    from attrpreserve.matching import LRPMatching
    torch.manual_seed(1)
    teacher, student = LRPNet(4).double().eval(), LRPNet(3).double().eval()
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    names = [n for n, _ in student.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in student.parameters())

    def loss(*ps):
        matcher = AttributionMatcher(teacher, _Proxy(student, ps, names), LRPMatching(),
                                     "act", "student.act")
        return matcher(x)[2]

    assert torch.autograd.gradcheck(loss, params, eps=1e-6, atol=1e-5)
    g = torch.autograd.grad(loss(*params), params[names.index("tail.5.weight")])[0]
    assert g.abs().sum() > 0
    same = AttributionMatcher(teacher, teacher, LRPMatching(), "act", "act")(x)[2]
    assert float(same.detach()) < 1e-12


@pytest.mark.numerics
def test_normalized_distance_is_the_cosine_loss_scaled_by_pixels():
    # ||t/|t| - s/|s|||^2 = 2 - 2 cos: the L2-of-normalised-maps and cosine variants are one loss
    t, s = torch.rand(5, 3, 4, dtype=torch.float64), torch.rand(5, 3, 4, dtype=torch.float64)
    cos = torch.nn.functional.cosine_similarity(t.flatten(1), s.flatten(1), dim=1)
    torch.testing.assert_close(normalized_distance(t, s), (2 - 2 * cos).mean() / 12)


@pytest.mark.numerics
def test_several_layers_average_the_single_layer_losses_and_gradients():
    torch.manual_seed(0)
    teacher, student, x = Tiny().double().eval(), Tiny().double(), torch.randn(4, 2, 4, 4).double()

    def loss_and_grads(layer):
        student.zero_grad()
        loss = AttributionMatcher(teacher, student, WCAM(drop=0.0), layer, layer)(x)[2]
        loss.backward()
        # the last bias never reaches a Grad-CAM map: no gradient
        return loss.detach(), [torch.zeros_like(p) if p.grad is None else p.grad.clone()
                               for p in student.parameters()]

    both, g_both = loss_and_grads("conv,act")
    conv, g_conv = loss_and_grads("conv")
    act, g_act = loss_and_grads("act")
    assert float(conv) > 0 and float(act) > 0
    torch.testing.assert_close(both, (conv + act) / 2)
    for gb, gc, ga in zip(g_both, g_conv, g_act):
        torch.testing.assert_close(gb, (gc + ga) / 2)
    assert all(p.grad is None for p in teacher.parameters())


class Strided(Tiny):
    """Tiny with a stride-2 conv: 8 x 8 images give 4 x 4 maps at 'act'."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)


@pytest.mark.numerics
def test_input_resolution_compares_maps_upsampled_to_the_images():
    torch.manual_seed(1)
    teacher, student = Strided().double().eval(), Strided().double().eval()
    x = torch.randn(3, 2, 8, 8).double()
    cls = teacher(x).argmax(1)
    loss = AttributionMatcher(teacher, student, WCAM(drop=0.0, resolution="input"),
                              "act", "act")(x)[2].detach()
    t_maps, _ = gradcam(teacher, x, torch.arange(3), cls, "act")
    s_maps, _ = gradcam(student, x, torch.arange(3), cls, "act")
    assert t_maps.shape[-2:] == (4, 4)

    def up(m):
        return torch.nn.functional.interpolate(m[:, None], size=(8, 8), mode="bilinear")[:, 0]

    torch.testing.assert_close(loss, normalized_distance(up(t_maps), up(s_maps)))
    assert abs(float(loss) - float(normalized_distance(t_maps, s_maps))) > 1e-4


def test_several_layers_refuse_what_cannot_share_one_pass():
    teacher, student = Tiny(), Tiny()
    with pytest.raises(ValueError, match="top1"):
        AttributionMatcher(teacher, student, WCAM(target="labels"), "conv,act")
    with pytest.raises(ValueError, match="student layers"):
        AttributionMatcher(teacher, student, WCAM(), "conv,act", "act")
    with pytest.raises(ValueError, match="resolution"):
        WCAM(resolution="pixels")


def test_a_matchers_settings_are_declared_once_in_its_options():
    """Defaults of the run config come from the matchers' Options; a value a matcher refuses
    fails when the run is configured; a new matcher's setting becomes a compress flag."""
    from dataclasses import dataclass

    from attrpreserve.cli import build_parser
    from attrpreserve.matching import MATCHERS, MatchingLoss, WCAMOptions, create_matcher
    from attrpreserve.options import option
    from attrpreserve.pipeline import CompressConfig

    cfg = CompressConfig()
    assert (cfg.drop, cfg.target, cfg.resolution) == (
        WCAMOptions.drop, WCAMOptions.target, WCAMOptions.resolution)
    with pytest.raises(ValueError, match="top1' only"):
        CompressConfig(matching="lrp", target="labels")
    with pytest.raises(ValueError, match="drop must be in"):
        CompressConfig(matching="wcam", drop=1.5)

    @dataclass(frozen=True)
    class SharpOptions:
        sharpness: float = option(2.0, "sharp: the maps' exponent")

    class Sharp(MatchingLoss):
        Options = SharpOptions

        def __init__(self, sharpness: float = 2.0):
            super().__init__()
            self.sharpness = sharpness

    MATCHERS.register("sharp", Sharp)
    try:
        args = build_parser().parse_args(["compress", "--teacher", "t", "--out", "o",
                                          "--sharpness", "3"])
        assert args.sharpness == 3.0 and args.drop == WCAMOptions.drop
        loss = create_matcher("sharp", sharpness=args.sharpness, drop=args.drop)  # drop: not its
        assert isinstance(loss, Sharp) and loss.sharpness == 3.0
    finally:
        MATCHERS.unregister("sharp")


def test_the_rank_form_is_a_differentiable_spearman():
    """``form='rank'``: soft ranks at a small temperature are the exact ranks (their Pearson
    correlation is scipy's Spearman), the default temperature gives ``(2 - 2 rho) / (H W)``
    up to near-ties, an order-keeping transform costs little, and the student gets a
    gradient."""
    from scipy.stats import spearmanr

    from attrpreserve.matching.losses import rank_distance, soft_ranks

    torch.manual_seed(0)
    teacher = torch.rand(4, 5, 5, dtype=torch.float64)
    student = (teacher + 0.5 * torch.rand(4, 5, 5, dtype=torch.float64)).requires_grad_(True)
    rho = torch.tensor([spearmanr(t.flatten(), s.detach().flatten())[0]
                        for t, s in zip(teacher, student)])
    exact = soft_ranks(student.detach(), temperature=1e-4)
    assert torch.allclose(exact.sort(1).values, torch.arange(25.0, dtype=torch.float64) + 0.5)
    sharp = torch.stack([soft_ranks(m, 1e-4) for m in (teacher, student.detach())])
    centred = sharp - sharp.mean(2, keepdim=True)
    r = (centred[0] * centred[1]).sum(1) / (centred[0].norm(dim=1) * centred[1].norm(dim=1))
    assert torch.allclose(r, rho, atol=1e-9)
    # the default temperature blurs near-ties only: within 0.02 of the exact Spearman here
    assert torch.allclose(rank_distance(teacher, student) * 25, (2 - 2 * rho).mean(), atol=0.02)
    # a monotone transform keeps the order: the rank form charges it a tenth of a reordering,
    # where the cosine form charges it more than the reordering
    same_order, reordered = teacher.exp() ** 3, student.detach()
    assert rank_distance(teacher, same_order) < rank_distance(teacher, reordered) / 10
    assert normalized_distance(teacher, same_order) > normalized_distance(teacher, reordered)
    (grad,) = torch.autograd.grad(rank_distance(teacher, student), student)
    assert grad.abs().sum() > 0
    with pytest.raises(ValueError, match="resolution='layer' only"):
        WCAM(form="rank", resolution="input")


@pytest.mark.numerics
@pytest.mark.parametrize("kind", ["gradient", "input_x_gradient"])
def test_the_input_map_term_is_the_explainers_distance_and_its_gradient_is_exact(kind):
    """``WCAM(input_map=...)`` adds the normalised distance between the teacher's and the
    student's input-level map, each as the explainer of that name computes it, scaled by
    pixels / matched-layer cells; its gradient (through the student's input gradient,
    create_graph) agrees with a float64 central difference."""
    from attrpreserve.attribution import EXPLAINERS

    torch.manual_seed(2)
    teacher, student = Tiny(channels=4).double().eval(), Tiny(channels=3).double().eval()
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    plain = AttributionMatcher(teacher, student, WCAM(drop=0.0), "act", "act")
    matcher = AttributionMatcher(teacher, student, WCAM(drop=0.0, input_map=kind), "act",
                                 "act")
    term = matcher(x)[2] - plain(x)[2]
    rows, classes = torch.arange(3), teacher(x).argmax(1)
    explainer = EXPLAINERS[kind]
    ref = normalized_distance(explainer(teacher, x, rows, classes, layer="act")[0],
                              explainer(student, x, rows, classes, layer="act")[0])
    # the input is 4 x 4 like the matched layer here: pixels / cells = 1
    assert ref > 0 and torch.allclose(term, ref, rtol=1e-9, atol=1e-12)
    weight = student.conv.weight
    (grad,) = torch.autograd.grad(matcher(x)[2], weight)
    eps, index = 1e-6, (1, 0, 1, 1)
    values = []
    for step in (eps, -2 * eps, eps):  # the matcher differentiates inside: edit under no_grad
        with torch.no_grad():
            weight[index] += step
        values.append(matcher(x)[2].detach())
    up, down = values[:2]
    # float64 central difference: truncation ~eps^2, rounding ~1e-16 / eps of the loss
    assert grad[index] != 0
    assert torch.isclose(grad[index], (up - down) / (2 * eps), rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="form='cosine'"):
        WCAM(input_map=kind, form="rank")
