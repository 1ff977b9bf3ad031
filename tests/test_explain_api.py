"""attrpreserve.explain: target forms, resolution, errors, every explainer on several model
families (torchvision ResNet-18 / MobileNetV3, uneven and mask-pruned VGGs), batched == single."""

import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from conftest import assert_close_reordered

import attrpreserve
from attrpreserve.attribution import EXPLAINERS, gradcam, lrp, upsample
from attrpreserve.attribution.api import explain, pairs_from_targets
from attrpreserve.models import create_model, default_layer

# Cheap settings so every explainer runs fast on 32 px inputs (RISE on logits: a random
# MobileNetV3 outputs ~1e-11, whose sigmoid is a constant 0.5 in float32).
FAST = {"ig": {"steps": 4}, "rise": {"n_masks": 16, "grid": 4, "score": "logit"},
        "occlusion": {"window": 8, "stride": 8}}


def small_vgg(cfg=None):
    model = create_model("vgg", num_classes=5, width=4, input_size=32, cfg=cfg)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


def test_lazy_top_level_export():
    assert attrpreserve.explain is explain
    code = "import sys, attrpreserve; assert 'torch' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("targets,index,classes", [
    (2, [0, 1, 2], [2, 2, 2]),
    ([1, 0, 4], [0, 1, 2], [1, 0, 4]),
    (torch.tensor([1, 0, 4]), [0, 1, 2], [1, 0, 4]),
    ([[0, 3], [], [2]], [0, 0, 2], [0, 3, 2]),
    ([torch.tensor([1]), torch.tensor(2), [0, 1]], [0, 1, 2, 2], [1, 2, 0, 1]),
    (__import__("numpy").array([3, 1, 0]), [0, 1, 2], [3, 1, 0]),
    (torch.tensor([[True, False, True], [False] * 3, [False, True, False]]),
     [0, 0, 2], [0, 2, 1]),
    (torch.tensor([[1., 0, 1], [0, 0, 0], [0, 1, 0]]), [0, 0, 2], [0, 2, 1]),
])
def test_target_forms(targets, index, classes):
    idx, cls = pairs_from_targets(targets, 3)
    assert idx.dtype == cls.dtype == torch.long
    assert idx.tolist() == index and cls.tolist() == classes


@pytest.mark.parametrize("targets,match", [
    (torch.tensor([[0, 1], [1, 0], [2, 2]]), "multi-hot"),
    (torch.tensor([[0.5, 1], [1, 0], [0, 0]]), "multi-hot"),
    ([1, 2], "each of the 3 images"),
    ([0, -1, 2], "non-negative"),
    ([0, 1.5, 2], "non-negative"),
    (torch.tensor([0.0, 1.0, 2.0]), "one integer class"),
    (torch.ones(2, 3, dtype=torch.bool), "one row per image"),
])
def test_bad_targets(targets, match):
    with pytest.raises(ValueError, match=match):
        pairs_from_targets(targets, 3)


@pytest.mark.numerics
def test_matches_direct_calls_and_resolutions():
    torch.manual_seed(0)
    model = small_vgg().eval()
    images = torch.rand(2, 3, 32, 32)
    idx, cls = torch.tensor([0, 0, 1]), torch.tensor([1, 3, 0])
    layer_maps = explain(model, images, [[1, 3], [0]], method="gradcam", resolution="layer")
    ref, _ = gradcam(model, images, idx, cls, default_layer(model))
    torch.testing.assert_close(layer_maps, ref, rtol=0, atol=0)
    assert layer_maps.shape[-1] < 32
    full = explain(model, images, [[1, 3], [0]], method="gradcam")
    torch.testing.assert_close(full, upsample(ref, (32, 32)), rtol=0, atol=0)
    other = explain(model, images, [[1, 3], [0]], method="gradcam", layer="features.6")
    assert not torch.equal(other, full)   # the layer is used
    maps = explain(model, images, [[1, 3], [0]], method="lrp", composite="alpha1_beta0",
                   layer="not-a-layer")      # ignored by input-level methods
    torch.testing.assert_close(maps, lrp(model, images, idx, cls, composite="alpha1_beta0")[0])
    one = explain(model, images[1], 0, method="lrp", composite="alpha1_beta0")
    # one image vs a batch: other float32 kernels; the batch's largest map sets the scale
    assert_close_reordered(one, maps[2:], scale=maps.abs().max())


def test_errors():
    model = small_vgg()
    images = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="known: .*gradcam.*rap.*rise"):
        explain(model, images, 0, method="shap")
    with pytest.raises(ValueError, match="CAM-type"):
        explain(model, images, 0, method="lrp", resolution="layer")
    with pytest.raises(ValueError, match="resolution"):
        explain(model, images, 0, method="gradcam", resolution="pixels")
    with pytest.raises(ValueError, match="B x C x H x W"):
        explain(model, images[0, 0], 0)


def test_modes_restored():
    model = small_vgg().train()
    model.features[1].eval()  # a frozen BatchNorm inside a training model
    explain(model, torch.rand(2, 3, 32, 32), 1, method="rap")
    assert model.training and not model.features[1].training and model.features[4].training
    assert all(p.grad is None for p in model.parameters())


def uneven_vgg():
    """A structurally-pruned-like VGG: uneven channel counts."""
    return small_vgg(cfg=[5, "M", 11, "M", 7, 13, "M", 9, 6, "M"])


def masked_vgg():
    """torch.nn.utils.prune masks on every conv (the reparametrisation left in place)."""
    model = small_vgg()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            prune.l1_unstructured(m, "weight", amount=0.5)
    return model


MODELS = {
    "resnet18": lambda: create_model("resnet18", num_classes=5, input_size=64),
    "mobilenet_v3_small": lambda: create_model("mobilenet_v3_small", num_classes=5, input_size=64),
    "uneven_vgg": uneven_vgg,
    "masked_vgg": masked_vgg,
}
SEQUENTIAL = {"uneven_vgg", "masked_vgg"}


@pytest.mark.parametrize("family", sorted(MODELS))
def test_every_explainer_runs(family):
    torch.manual_seed(0)
    model = MODELS[family]()
    images = torch.rand(2, 3, 32, 32)
    before = model.eval()(images).detach()
    for name in sorted(EXPLAINERS):
        if name == "rap" and family not in SEQUENTIAL:
            with pytest.raises(ValueError, match="Sequential-style"):
                explain(model, images, [1, 4], method=name)
            continue
        if EXPLAINERS.meta(name).get("attention"):  # rollout: ViTs only (tests/test_timm.py)
            with pytest.raises(ValueError, match="explains Vision Transformers"):
                explain(model, images, [1, 4], method=name)
            continue
        maps = explain(model, images, [[1, 4], [0]], method=name, **FAST.get(name, {}))
        assert maps.shape == (3, 32, 32), name
        assert torch.isfinite(maps).all(), name
        # (Grad-CAM's ReLU may legitimately zero a random net's 1 x 1 last-stage map)
        assert name == "gradcam" or maps.abs().sum() > 0, name
    torch.testing.assert_close(model(images).detach(), before, rtol=0, atol=0)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.numerics
def test_pruning_masks_restored_and_respected():
    """zennit's LRP sees the masked weights; the reparametrisation is intact afterwards."""
    torch.manual_seed(0)
    model, baked = masked_vgg(), small_vgg()
    baked.load_state_dict({k.replace("weight_orig", "weight"): v
                           for k, v in model.state_dict().items() if not k.endswith("_mask")})
    for m, b in zip(model.modules(), baked.modules()):
        if isinstance(m, nn.Conv2d):
            b.weight.data = (m.weight_orig * m.weight_mask).detach().clone()
    keys = list(model.state_dict())
    origs = [m.weight_orig for m in model.modules() if isinstance(m, nn.Conv2d)]
    images = torch.rand(2, 3, 32, 32)
    for name in ("lrp", "lrp_a1b0", "ebp", "rap", "gradcam"):
        a = explain(model, images, [[1, 4], [0]], method=name)
        b = explain(baked, images, [[1, 4], [0]], method=name)
        # the hook's weight_orig * mask vs the same products stored: float32 rounding
        assert_close_reordered(a, b, msg=name)
    assert list(model.state_dict()) == keys
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.weight_orig is o for m, o in zip(convs, origs))
    assert all(len(m._forward_pre_hooks) == 1 and "weight" not in m._parameters for m in convs)
    assert_close_reordered(model.eval()(images), baked.eval()(images))


# explainers of any model (rollout reads a ViT's attention: tests/test_timm.py)
ANY_MODEL = sorted(n for n in EXPLAINERS if not EXPLAINERS.meta(n).get("attention"))


@pytest.mark.numerics
@pytest.mark.parametrize("name", ANY_MODEL)
def test_batched_equals_one_pair_at_a_time(name):
    torch.manual_seed(0)
    model = small_vgg().eval()
    images = torch.rand(3, 3, 32, 32)
    targets = [[0, 2], [1], [4, 3]]
    options = FAST.get(name, {})
    maps = explain(model, images, targets, method=name, **options)
    # One image vs a batch of three: other float32 kernels / reduction orders.  The rounding
    # scales with the terms summed, of one size for the whole batch (a pair's map can be a small
    # difference of them): the batch's largest map, or for occlusion and RISE, whose maps are
    # differences of the model's scores (logits here), the largest logit.
    scale = (model(images) if name in ("occlusion", "rise") else maps).abs().max()
    j = 0
    for i, classes in enumerate(targets):
        for c in classes:
            single = explain(model, images[i:i + 1], [c], method=name, **options)
            assert_close_reordered(maps[j], single[0], scale=scale, msg=f"{name} pair {j}")
            j += 1


@pytest.mark.numerics
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_gpu_matches_cpu():
    torch.manual_seed(0)
    model = small_vgg().eval()
    images = torch.rand(2, 3, 32, 32)
    for name in ANY_MODEL:
        cpu = explain(model, images, [[1, 4], [0]], method=name, **FAST.get(name, {}))
        gpu = explain(model.cuda(), images, [[1, 4], [0]], method=name, **FAST.get(name, {}))
        model.cpu()
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-4, msg=name)


def test_layer_resolution_registry():
    assert EXPLAINERS.names(resolution="layer") == ["gradcam"]


# torchvision classifiers as users have them (no matched_layer): the default is Grad-CAM at
# the last block's output, never a conv inside a residual block
TORCHVISION_DEFAULTS = {"resnet18": "layer4", "vgg11": "features.19",
                        "mobilenet_v3_small": "features.12", "efficientnet_b0": "features.8"}


@pytest.mark.parametrize("arch", sorted(TORCHVISION_DEFAULTS))
def test_default_is_gradcam_at_the_last_block_of_torchvision_models(arch):
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=10)
    images = torch.rand(2, 3, 64, 64)
    assert default_layer(model) == TORCHVISION_DEFAULTS[arch]
    maps = explain(model, images, [3, 7])
    layer = TORCHVISION_DEFAULTS[arch]
    torch.testing.assert_close(maps, explain(model, images, [3, 7], method="gradcam",
                                             layer=layer), rtol=0, atol=0)
    assert maps.shape == (2, 64, 64) and torch.isfinite(maps).all()


class Block(nn.Module):
    """A residual block: a map tapped at its conv misses the skip path."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return torch.relu(x + self.conv(x))


class Custom(nn.Module):
    """An architecture without a rule: a stem, two residual blocks, a BatchNorm, a head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4), nn.BatchNorm2d(8))
        self.blocks = nn.ModuleList([Block(8), Block(8)])
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean((2, 3)))


def test_unknown_architecture_defaults_to_its_last_block_output():
    torch.manual_seed(0)
    model = Custom().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert default_layer(model) == "blocks.1"  # not blocks.1.conv, the last conv
    assert model.training and all(torch.equal(v, before[k])
                                  for k, v in model.state_dict().items())
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(explain(model, images, [1, 2]),
                               explain(model, images, [1, 2], layer="blocks.1"))


class OnlyResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Linear(3, 5)

    def forward(self, x):
        return self.head((x + self.conv(x)).mean((2, 3)))


class FixedSize(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 32 * 32, 5)

    def forward(self, x):
        return self.head(self.conv(x).flatten(1))


@pytest.mark.parametrize("model", [OnlyResidual(), FixedSize()], ids=lambda m: type(m).__name__)
def test_no_default_layer_asks_for_one(model):
    with pytest.raises(ValueError, match=r"layer="):
        explain(model, torch.rand(1, 3, 32, 32), 0)
