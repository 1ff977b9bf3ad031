"""Structured filter pruning: exact channel counts and cost, the L1 criterion, channel-major head
columns, VGG (both heads) and ResNet-18 surgery, WCAM between teacher and pruned student,
checkpoint rebuild without the original model, and the fine-tuning schedule."""

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from conftest import assert_close_reordered

from attrpreserve.compress import IMPORTANCES, paper_layers, paper_rates, prune_channels
from attrpreserve.compress.structured import channel_shapes, conv_channels, n_pruned
from attrpreserve.data import build_dataset
from attrpreserve.engine import TrainConfig
from attrpreserve.evaluate.cost import count_macs, count_params
from attrpreserve.matching import create_matcher
from attrpreserve.loading import load_checkpoint
from attrpreserve.models import create_model, save_checkpoint
from attrpreserve.models.layers import default_layer, get_layer
from attrpreserve.recipes import FineTuning, LabelStep, Loaders, structured_prune


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread is as fast and avoids OpenMP spin-waits on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


MODELS = {
    "vgg16-flatten": ("vgg16", dict(num_classes=5, width_divisor=8, input_size=64)),
    "vgg-max": ("vgg", dict(num_classes=5, width=4, input_size=64)),
    "resnet18": ("resnet18", dict(num_classes=5, input_size=64)),
    "mobilenet_v3_small": ("mobilenet_v3_small", dict(num_classes=5, input_size=64)),
}


def _build(key, **overrides):
    name, kwargs = MODELS[key]
    return create_model(name, **{**kwargs, **overrides}).eval()


def _randomize_bn(model, seed=0):
    """Non-trivial BatchNorm statistics and affine parameters (fresh ones are 0/1)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def test_rounding_of_removed_filters():
    assert n_pruned(8, 0.5) == 4
    assert n_pruned(64, 0.7) == 45  # 44.8 -> 45 removed, 19 kept
    assert n_pruned(8, 0.7) == 6  # 5.6 -> 6
    assert n_pruned(3, 0.5) == 2  # half up
    assert n_pruned(2, 0.99) == 1  # at least one filter is kept
    assert n_pruned(64, 0.0) == 0
    assert n_pruned(64, 0.7, round_to=8) == 40  # 19 kept -> rounded up to 24


def test_half_rate_halves_every_conv_and_costs_match_a_thin_vgg():
    model = create_model("vgg", num_classes=5, width=8, input_size=32).eval()
    before = conv_channels(model)
    params, macs = count_params(model), count_macs(model)
    prune_channels(model, 0.5)
    after = conv_channels(model)
    assert after == {n: c - n_pruned(c, 0.5) for n, c in before.items()}
    assert all(2 * after[n] == c for n, c in before.items())  # widths 8..64: exact halves
    assert model.classifier[-1].in_features == list(after.values())[-1]
    assert model.cfg == [8 // 2, "M", 16 // 2, "M", 16, 16, "M", 32, 32, "M"]
    # The pruned model costs exactly what a VGG built at the halved widths costs.
    thin = create_model("vgg", num_classes=5, width=8, input_size=32, cfg=model.cfg)
    assert count_params(model) == count_params(thin) < params
    assert count_macs(model) == count_macs(thin) < macs / 3  # ~1/4 (first conv: 1/2)


def test_paper_preset_prunes_first_and_last_six_convs_of_vgg16():
    model = _build("vgg16-flatten")
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    expected = ["features.0", "features.24", "features.27", "features.30",
                "features.34", "features.37", "features.40"]  # conv1_1, conv4_1 .. conv5_3
    assert paper_layers(model) == expected == [convs[0]] + convs[-6:]
    before = conv_channels(model)
    prune_channels(model, paper_rates(model, 0.7))
    after = conv_channels(model)
    for name, c in before.items():
        assert after[name] == (c - n_pruned(c, 0.7) if name in expected else c), name
    assert after["features.0"] == 2 and after["features.40"] == 19  # 8 and 64 filters at p=0.7
    assert model.classifier[-1].in_features == 19 * 2 * 2  # 64 px -> 2 x 2 after five pools
    assert model.classifier[-1].out_features == 5


def test_l1_keeps_the_largest_filters_and_their_inputs():
    model = create_model("vgg", num_classes=5, width=4, input_size=32).eval()
    conv, nxt = model.features[8], model.features[11]  # 16 -> 16 channels
    w, w_next = conv.weight.detach().clone(), nxt.weight.detach().clone()
    keep = w.abs().sum((1, 2, 3)).argsort(descending=True)[:8].sort().values
    prune_channels(model, {"features.8": 0.5})
    assert torch.equal(conv.weight.detach(), w[keep])
    assert torch.equal(nxt.weight.detach(), w_next[:, keep])
    assert conv_channels(model)["features.11"] == 16  # only the named layer loses filters


@pytest.mark.parametrize("importance", sorted(IMPORTANCES))
def test_every_registered_importance_prunes(importance):
    model = create_model("vgg", num_classes=5, width=4, input_size=32).eval()
    prune_channels(model, 0.25, importance=importance)
    assert conv_channels(model) == {n: c - n_pruned(c, 0.25) for n, c in
                                    conv_channels(create_model("vgg", num_classes=5,
                                                               width=4)).items()}
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)


@pytest.mark.numerics
@pytest.mark.parametrize("head", ["flatten", "max"])
def test_removing_dead_channels_leaves_logits_identical(head):
    """Channels whose output is exactly zero can be removed without changing the logits only
    if the head keeps the right columns: channel-major (``repeat_interleave``) blocks."""
    model = create_model("vgg16", num_classes=5, width_divisor=8, input_size=64, head=head)
    _randomize_bn(model)
    model.eval()
    conv, bn = model.features[40], model.features[41]  # conv5_3, 64 filters
    dead = torch.tensor([1, 5, 6, 20, 63])
    with torch.no_grad():
        conv.weight[dead] = 0
        bn.weight[dead], bn.bias[dead], bn.running_mean[dead] = 0.0, 0.0, 0.0
    linear = model.classifier[-1]
    w_head = linear.weight.detach().clone()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    prune_channels(model, {"features.40": len(dead) / 64})  # "l1" picks the all-zero filters
    keep = torch.ones(64, dtype=torch.bool)
    keep[dead] = False
    assert conv.out_channels == 59
    with torch.no_grad():
        after = model(x)
        feats = model.classifier[:2](model.features(x))
    # a 59-filter conv vs 64 filters (5 zero): other kernels, float32 rounding in another order
    assert_close_reordered(after, before)
    if head == "flatten":
        hw = 2 * 2
        assert torch.equal(linear.weight.detach(), w_head[:, keep.repeat_interleave(hw)])
        # The public code's mistake (column c + C*j instead of c*H*W + j) changes the logits.
        wrong = feats @ w_head[:, keep.repeat(hw)].T + linear.bias.detach()
        assert not torch.allclose(wrong, before, atol=1e-3)


@pytest.mark.parametrize("key", sorted(MODELS))
def test_pruned_models_train_and_match_the_unpruned_teacher(key):
    teacher = _build(key)
    student = copy.deepcopy(teacher)
    prune_channels(student, 0.5)
    assert count_params(student) < 0.5 * count_params(teacher)
    layer = default_layer(teacher)
    assert default_layer(student) == layer and get_layer(student, layer) is not None
    x = torch.randn(4, 3, 64, 64)
    labels = (torch.rand(4, 5) < 0.4).float()
    student.train()
    out = student(x)
    assert out.shape == (4, 5)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student.parameters())
    student.zero_grad()
    step = LabelStep(teacher, create_matcher("wcam", drop=0.3), lam=100.0)
    loss, terms = step(student, x, labels)
    assert torch.isfinite(loss) and float(terms["match"]) > 0
    loss.backward()
    conv = next(m for m in student.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("key", ["vgg16-flatten", "resnet18", "mobilenet_v3_small"])
def test_checkpoint_round_trip_without_the_original(key, tmp_path):
    vgg = key.startswith("vgg")
    model = _build(key) if vgg else _build(key, input_size=32)
    spec0 = model.spec
    _randomize_bn(model)
    prune_channels(model, paper_rates(model, 0.7) if vgg else 0.5)
    if vgg:
        prune_channels(model, 0.25)  # a second surgery updates the step, adds none
    assert "rebuild" not in spec0  # the original spec dict is untouched
    step = {"step": "channel_shapes", "channels": conv_channels(model)}
    assert model.spec["rebuild"] == [step]
    x = torch.randn(2, 3, 64, 64) if vgg else torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    save_checkpoint(tmp_path / "ckpt", model)
    channels = conv_channels(model)
    del model
    loaded, meta = load_checkpoint(tmp_path / "ckpt")
    assert meta["model"]["rebuild"] == [step]
    assert conv_channels(loaded) == channels
    if vgg:
        assert [v for v in loaded.cfg if v != "M"] == list(channels.values())
    with torch.no_grad():
        assert torch.equal(loaded(x), before)


@pytest.mark.parametrize("key", ["vgg16-flatten", "resnet18", "mobilenet_v3_small"])
@pytest.mark.parametrize("source", ["channels", "state"])
def test_rebuild_step_from_recorded_widths_or_from_state_shapes(key, source):
    """Either source alone fits a fresh model to the pruned weights: the recorded widths (no
    state needed, so key layouts changed by later steps do not matter) or the state's shapes."""
    pruned = _build(key, input_size=32)
    prune_channels(pruned, 0.5)
    state = pruned.state_dict()
    fresh = _build(key, input_size=32)
    if source == "channels":
        channel_shapes(fresh, {}, channels=pruned.spec["rebuild"][-1]["channels"])
    else:
        channel_shapes(fresh, state)
    fresh.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x), pruned(x))


def test_pruned_then_quantization_aware_model_reloads(tmp_path):
    from attrpreserve.compress import prepare_qat

    model = create_model("vgg", num_classes=5, width=4, input_size=32).eval()
    prune_channels(model, 0.5)
    qat = prepare_qat(model)  # fuses Conv-BN-ReLU: BatchNorm keys move
    x = torch.randn(2, 3, 32, 32)
    qat.train()(x)  # observers set the quantization ranges in train mode
    qat.eval()
    with torch.no_grad():
        before = qat(x)
    save_checkpoint(tmp_path / "ckpt", qat)
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(loaded(x), before)


def test_rate_errors():
    model = create_model("vgg", num_classes=5, width=4)
    with pytest.raises(ValueError, match="not a Conv2d"):
        prune_channels(model, {"features.1": 0.5})
    with pytest.raises(ValueError, match="no layer"):
        prune_channels(model, {"features.99": 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        prune_channels(model, 1.0)
    with pytest.raises(ValueError, match="unknown importance"):
        prune_channels(model, 0.5, importance="nope")
    resnet = _build("resnet18")
    with pytest.raises(ValueError, match="coupled"):
        prune_channels(resnet, {"layer1.0.conv2": 0.5, "layer1.1.conv2": 0.25})


def test_iterative_schedule_finetunes_with_wcam():
    train = DataLoader(build_dataset("scenes", "train", size=32, seed=0, n=32), batch_size=8)
    val = DataLoader(build_dataset("scenes", "val", size=32, seed=1, n=16), batch_size=8)
    teacher = create_model("vgg", num_classes=8, width=4, input_size=32).eval()
    t_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = copy.deepcopy(teacher)
    base = conv_channels(student)
    cfg = TrainConfig(epochs=1, lr=0.01, progress=False)
    step = LabelStep(teacher, create_matcher("wcam", drop=0.3), lam=100.0)
    records = structured_prune(student, Loaders(train, val), FineTuning(step, cfg), 0.5,
                               rounds=2)
    assert [r["round"] for r in records] == [1, 2]
    assert [r["target"] for r in records] == [0.5, 1.0]
    assert records[0]["params"] > records[1]["params"]
    assert records[0]["macs"] > records[1]["macs"]
    assert all(0.0 <= r["best_val_mAP"] <= 1.0 for r in records)
    assert conv_channels(student) == {n: c - n_pruned(c, 0.5) for n, c in base.items()}
    assert records[1]["params"] == count_params(student)
    assert conv_channels(teacher) == base
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, t_state[k]), k
    with pytest.raises(ValueError, match="separate"):
        structured_prune(student, Loaders(train, val), FineTuning(LabelStep(student), cfg), 0.5)
