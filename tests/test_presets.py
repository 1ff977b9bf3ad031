"""The paper presets (configs/paper), torchvision VGG16-BN weights, --max-steps, multistep lr,
--amp / device checks and the paper preprocessing's augmentation."""

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import assert_close_reordered

from attrpreserve import cli, engine
from attrpreserve.cli import main
from attrpreserve.data import get_preprocess
from attrpreserve.engine import TrainConfig, fit
from attrpreserve.loading import load_checkpoint
from attrpreserve.models import create_model
from attrpreserve.models.checkpoint import init_from_file
from test_voc import write_voc

PAPER = Path(__file__).resolve().parent.parent / "configs" / "paper"
# Smoke-test overrides: VGG16 at full width and 227 px takes minutes per preset on two CPU
# cores (16 pruning rounds, 60 MB checkpoints), so the teacher is VGG16 / 16 at 32 px.
SMOKE = ["--max-steps", "2", "--no-progress"]
SMALL_TEACHER = ["--size", "32", "--batch-size", "2", "--n-val", "2", "--width-divisor", "16"]


@pytest.mark.numerics
def test_torchvision_vgg16_bn_weights_initialise_the_paper_vgg16(tmp_path):
    """A torchvision vgg16_bn state dict (random weights, torchvision's keys) loads into our
    bias-free VGG16: same features output in eval mode, the 20-class head left as built."""
    import torchvision

    tv = torchvision.models.vgg16_bn()  # random init, nothing downloaded
    # same keys and layout, smaller Linear layers: keeps the file small (the head is dropped)
    tv.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 8), nn.ReLU(), nn.Dropout(),
                                  nn.Linear(8, 8), nn.ReLU(), nn.Dropout(), nn.Linear(8, 1000))
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, nn.Conv2d):
                m.bias.normal_(0, 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "vgg16_bn.pth"
    torch.save(tv.state_dict(), path)

    ours = create_model("vgg16", num_classes=20, input_size=64)
    head = ours.classifier[3].weight.clone()
    init_from_file(ours, path)
    assert torch.equal(ours.features[0].weight, tv.features[0].weight)
    assert torch.equal(ours.features[40].weight, tv.features[40].weight)  # conv5_3
    assert torch.equal(ours.classifier[3].weight, head)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        # two module stacks (ours vs torchvision's) through 13 conv + BatchNorm layers: float32
        # rounding in other orders compounds layer by layer (measured up to 4e-6 of the largest
        # feature across kernel paths), hence 1e-4 of it
        assert_close_reordered(ours.eval().features(x), tv.eval().features(x), rel=1e-4)

    small = create_model("vgg16", num_classes=20, width_divisor=8)
    with pytest.raises(ValueError, match="features.0.weight"):
        init_from_file(small, path)


@pytest.fixture(scope="module")
def paper_teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    voc = write_voc(root)
    out = root / "teacher"
    assert main(["train", "--config", str(PAPER / "teacher.yaml"), "--data", f"voc:{voc}",
                 *SMALL_TEACHER, *SMOKE, "--out", str(out)]) == 0
    return out


def test_teacher_preset_trains_two_steps(paper_teacher):
    meta = load_checkpoint(paper_teacher)[1]
    cfg = meta["config"]
    assert cfg["model"] == "vgg16" and cfg["dropout"] == 0.5
    assert cfg["train"]["max_steps"] == 2 and cfg["train"]["lr"] == 0.1
    assert cfg["train"]["milestones"] == [10, 30, 40] and cfg["train"]["schedule"] == "multistep"
    assert cfg["train"]["epochs"] == 60 and len(meta["history"]["epochs"]) == 1  # cut short
    assert meta["data"]["preprocess"] == "paper" and meta["data"]["size"] == 32


@pytest.mark.parametrize("preset, matching", [
    ("kd", "wcam"), ("kd", "at"), ("kd", "none"), ("structured", "wcam"),
    ("unstructured", "wcam"),
])
def test_compression_presets_run_two_steps(paper_teacher, tmp_path, preset, matching):
    out = tmp_path / preset
    assert main(["compress", "--config", str(PAPER / f"{preset}.yaml"), "--teacher",
                 str(paper_teacher), "--matching", matching, *SMOKE, "--out", str(out)]) == 0
    meta = load_checkpoint(out)[1]
    comp, train = meta["compression"], meta["config"]["train"]
    assert comp["matching"] == matching and train["max_steps"] == 2
    assert train["optimizer"] == "sgd" and train["weight_decay"] == 1e-4
    if matching == "wcam":
        assert comp["lambda"] == 100 and comp["drop"] == 0.3
    if preset == "kd":
        assert comp["width_divisor"] == 8 and train["epochs"] == 350 and train["lr"] == 0.1
    elif preset == "structured":
        assert comp["rate"] == 0.7 and comp["prune_layers"] == "paper" and train["lr"] == 0.001
    else:
        assert comp["rounds"] == 16 and comp["sparsity"] == pytest.approx(0.972, abs=0.002)


def _toy_loader(n=8, batch=2):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, 3, 8, 8, generator=g), (torch.rand(n, 2, generator=g) > 0.5).float()
    return DataLoader(TensorDataset(x, y), batch_size=batch)


def _counting_step(calls):
    def step(model, images, labels):
        calls.append(1)
        return engine.bce_step(model, images, labels)
    return step


def test_max_steps_ends_the_phase_after_n_optimizer_steps():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    calls = []
    history = fit(model, _toy_loader(), _toy_loader(), _counting_step(calls),
                  TrainConfig(epochs=3, lr=0.01, max_steps=5, progress=False))
    assert len(calls) == 5 and [r["epoch"] for r in history.epochs] == [1, 2]
    with pytest.raises(ValueError, match="max_steps"):
        TrainConfig(max_steps=0)


def test_multistep_schedule_multiplies_by_gamma_at_milestones():
    cfg = TrainConfig(epochs=5, schedule="multistep", milestones=[2, 4], gamma=0.1)
    factors = [engine._lr_factor(i, 50, cfg, 10) for i in (0, 19, 20, 39, 40, 49)]
    assert factors == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    with pytest.raises(ValueError, match="milestones"):
        TrainConfig(schedule="multistep", milestones=[4, 2])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_amp_without_cuda_is_a_clear_error(tmp_path, capsys):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    with pytest.raises(ValueError, match="CUDA"):
        fit(model, _toy_loader(), None, cfg=TrainConfig(epochs=1, amp=True, progress=False))
    assert main(["train", "--amp", "--n-train", "4", "--n-val", "2", "--width", "2",
                 "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--amp" in err and "CUDA" in err and "\n" not in err


def test_preprocess_preset_sets_the_size_and_device_defaults_to_auto():
    args = cli.build_parser().parse_args(["train", "--preprocess", "paper", "--out", "x"])
    assert cli._data(args).size == 227 and args.device == "auto"
    args = cli.build_parser().parse_args(["train", "--out", "x"])
    assert cli._data(args).size == 64 and cli._data(args).preprocess == "none"


def test_paper_augmentation_is_reproducible_and_keeps_masks_aligned():
    pre = get_preprocess("paper")
    images = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(4, 3, 32, 32).contiguous()
    masks = (torch.arange(32) // 8).view(1, 1, 32).expand(4, 32, 32).contiguous()
    items = [(images[i], torch.zeros(2), masks[i]) for i in range(4)]
    a = pre.collate(torch.Generator().manual_seed(3))(items)
    b = pre.collate(torch.Generator().manual_seed(3))(items)
    c = pre.collate(torch.Generator().manual_seed(4))(items)
    assert all(torch.equal(u, v) for u, v in zip(a, b)) and not torch.equal(a[0], c[0])
    assert a[0].shape == images.shape and a[2].shape == masks.shape
    assert set(a[2].unique().tolist()) <= {0, 1, 2, 3}  # nearest: no blended mask values
    # image and mask went through the same crop and flip: columns stay ordered together
    for img, mask in zip(a[0], a[2]):
        col, lab = img[0, 0], mask[0].float()
        order = torch.argsort(col)
        assert torch.all(lab[order].diff() >= 0) or torch.all(lab[order].diff() <= 0)
