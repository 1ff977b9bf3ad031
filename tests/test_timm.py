"""timm models end to end (random weights): ``timm:NAME[=PATH]`` wherever a model reference
goes, a Vision Transformer's patch tokens read as maps at its matched layer, and the recipes
that apply to a timm CNN and a ViT."""

import copy
import json

import numpy as np
import pytest
import torch

from conftest import random_photo_folders

from attrpreserve import explain
from attrpreserve.attribution import EXPLAINERS
from attrpreserve.cli import main
from attrpreserve.matching import WCAM, AttributionMatcher, normalized_distance
from attrpreserve.loading import load_checkpoint, load_model
from attrpreserve.models import create_model, default_layer, family_of, is_single_label
from attrpreserve.models.family import exact_attention

timm = pytest.importorskip("timm")

# timm's own test models: ViT 64 wide, 6 blocks of 2 heads, 16 px patches, native 160 px
# (371 k parameters); ResNet with a 96-channel layer4 (470 k)
VIT, CNN = "test_vit", "test_resnet"
SIZE = 64  # a 4 x 4 grid of 16 px patches
FOLDERS = ("Egyptian_cat", "espresso", "n01440764")  # three ImageNet classes


def test_vit_gradcam_on_patch_tokens_matches_a_per_pair_loop():
    """Grad-CAM at a ViT block (batch x 17 tokens x 64): the 16 patch tokens as a 4 x 4 map,
    the class token dropped; the pair-batched explainer against one plain backward per pair."""
    torch.manual_seed(0)
    model = create_model("timm", arch=VIT, num_classes=4, input_size=SIZE).eval()
    assert family_of(model).name == "timm" and is_single_label(model)
    layer = default_layer(model)
    assert layer == "blocks.4"  # the last block's patch tokens never reach the class token
    images = torch.rand(2, 3, SIZE, SIZE)
    maps = explain(model, images, [[1, 3], [2]], resolution="layer")
    assert maps.shape == (3, 4, 4)
    block, seen = model.get_submodule(layer), {}
    handle = block.register_forward_hook(lambda _m, _i, out: seen.update(tokens=out))
    try:
        for j, (i, c) in enumerate(((0, 1), (0, 3), (1, 2))):
            logits = model(images[i:i + 1])
            grad = torch.autograd.grad(logits[0, c], seen["tokens"])[0][0, 1:]  # 16 x 64
            patches = seen["tokens"][0, 1:].detach()
            # the project's Grad-CAM weights sum the gradient over space (the paper's code)
            cam = torch.relu((patches * grad.sum(0)).sum(1)).reshape(4, 4)
            # float32 sums over 64 channels of magnitudes <= max|cam|: a few ulps of it
            assert torch.allclose(maps[j], cam, rtol=1e-4, atol=1e-5 * float(cam.abs().max()))
    finally:
        handle.remove()
    assert float(maps.abs().sum()) > 0


def test_timm_references_load_with_their_configuration(tmp_path):
    torch.manual_seed(0)
    model = create_model("timm", arch=CNN, num_classes=1000, input_size=SIZE)
    path = tmp_path / "cnn.safetensors"
    from safetensors.torch import save_file

    save_file(model.state_dict(), str(path))
    loaded, meta = load_model(f"timm:{CNN}={path}")
    x = torch.rand(2, 3, SIZE, SIZE)
    assert torch.allclose(loaded(x), model.eval()(x), atol=1e-5)
    assert meta["data"]["size"] == 160  # timm's configuration's input size
    assert default_layer(loaded) == "layer4" and len(meta["classes"]) == 1000
    random_vit, _ = load_model(f"timm:{VIT}")  # no PATH: timm's architecture, random init
    assert random_vit.patch_embed.img_size == (160, 160)
    with pytest.raises(ValueError, match="unknown timm model 'resnet_nope'"):
        load_model("timm:resnet_nope")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return random_photo_folders(tmp_path_factory.mktemp("labeled"), FOLDERS, per_class=4,
                                shape=(72, 80, 3))


@pytest.fixture(scope="module")
def resnet_ref(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("timm", arch=CNN, num_classes=1000, input_size=SIZE)
    path = tmp_path_factory.mktemp("weights") / "cnn.pth"
    torch.save(model.state_dict(), path)
    return f"timm:{CNN}={path}"


def _data(folder):
    return ["--data", f"images:{folder},holdout=0.25", "--size", str(SIZE), "--no-progress"]


@pytest.mark.parametrize("method,extra", [
    ("structured", []), ("unstructured", []),
    ("unstructured", ["--input-map", "input_x_gradient"]),  # a BatchNorm CNN, input term on
    ("kd", ["--student", f"timm:{VIT}"]),
])
def test_recipes_on_a_timm_teacher_from_the_cli(folder, resnet_ref, tmp_path, method, extra):
    out = tmp_path / method
    teacher = f"{resnet_ref},classes={folder}"  # the folder's three classes
    assert main(["compress", "--teacher", teacher, "--method", method, *extra,
                 "--matching", "wcam", *_data(folder), "--epochs", "1", "--batch-size", "4",
                 "--lr", "0.001", "--out", str(out)]) == 0
    model, meta = load_checkpoint(out)
    assert family_of(model).name == "timm" and len(meta["classes"]) == 3
    assert meta["config"]["input_map"] == (extra[1] if "--input-map" in extra else "none")
    if method == "kd":  # the ViT student, matched on its patch-token map
        assert model.spec["kwargs"]["arch"] == VIT and default_layer(model) == "blocks.4"
    assert main(["evaluate", "--teacher", teacher, "--model", str(out), *_data(folder),
                 "--split", "val", "--explainers", "gradcam",
                 "--out", str(tmp_path / f"{method}.json")]) == 0
    res = json.loads((tmp_path / f"{method}.json").read_text())
    assert len(res["runs"]) == 2


def test_audit_explain_and_refusals_with_timm_models(folder, resnet_ref, tmp_path, capsys):
    vit = f"timm:{VIT}"
    assert main(["audit", "--reference", resnet_ref, "--candidate", vit, *_data(folder),
                 "--split", "val", "--explainers", "gradcam", "--n-boot", "20",
                 "--out", str(tmp_path / "audit")]) == 0
    assert (tmp_path / "audit" / "audit.json").is_file()
    assert main(["explain", "--model", vit, "--image", str(next(folder.rglob("*.png"))),
                 "--out", str(tmp_path / "maps")]) == 0
    assert len(list((tmp_path / "maps").glob("*.png"))) == 1  # the softmax model's top-1
    capsys.readouterr()
    assert main(["compress", "--teacher", resnet_ref, "--method", "quantization",
                 *_data(folder), "--epochs", "1", "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err.strip()
    assert "timm models covers Vision Transformers" in err and len(err.splitlines()) == 1
    assert main(["compress", "--teacher", resnet_ref, "--method", "kd",
                 "--student", f"timm:{VIT}=x.pth", *_data(folder), "--epochs", "1",
                 "--out", str(tmp_path / "s")]) == 2
    assert "starts from random weights" in capsys.readouterr().err


def _manual_attention(model, image):
    """Each block's attention probabilities recomputed from its qkv weights (1 x H x T x T),
    independent of the hooks the explainers use."""
    inputs = []
    handles = [b.attn.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
               for b in model.blocks]
    try:
        logits = model(image[None])
    finally:
        for h in handles:
            h.remove()
    maps = []
    for block, x in zip(model.blocks, inputs):
        attn = block.attn
        n, t, c = x.shape
        qkv = attn.qkv(x).reshape(n, t, 3, attn.num_heads, c // attn.num_heads)
        q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
        maps.append(torch.softmax(q @ k.transpose(-2, -1) / (c // attn.num_heads) ** 0.5, -1))
    return maps, logits


def test_attention_rollout_against_a_hand_computation():
    torch.manual_seed(0)
    model = create_model("timm", arch=VIT, num_classes=4, input_size=SIZE).eval()
    images = torch.rand(2, 3, SIZE, SIZE)
    maps = explain(model, images, [[0, 3], [1]], method="rollout", resolution="input")
    assert maps.shape == (3, SIZE, SIZE)
    with torch.no_grad():
        for j, i in enumerate((0, 0, 1)):
            joint = torch.eye(17)
            for a in _manual_attention(model, images[i])[0]:
                a = a[0].mean(0) + torch.eye(17)
                joint = (a / a.sum(1, keepdim=True)) @ joint
            ref = joint[0, 1:].reshape(1, 1, 4, 4)
            ref = torch.nn.functional.interpolate(ref, size=(SIZE, SIZE), mode="bilinear")[0, 0]
            # products of 6 row-stochastic 17 x 17 matrices in float32: a few ulps of the max
            assert torch.allclose(maps[j], ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
    with pytest.raises(ValueError, match="explains Vision Transformers"):
        explain(create_model("vgg", num_classes=2, width=2), images, 0, method="rollout")


def test_gradient_weighted_rollout_batched_equals_one_pair_at_a_time():
    torch.manual_seed(0)
    model = create_model("timm", arch=VIT, num_classes=4, input_size=SIZE).eval()
    images = torch.rand(2, 3, SIZE, SIZE)
    both = explain(model, images, [[0, 3], [1]], method="grad_rollout", resolution="input")
    for j, (i, c) in enumerate(((0, 0), (0, 3), (1, 1))):
        alone = explain(model, images[i:i + 1], c, method="grad_rollout")[0]
        assert torch.allclose(both[j], alone, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(both[0], both[1])  # class-dependent, unlike plain rollout
    # Chefer's update by hand for one pair: R <- R + mean_h (dz/dA * A)^+ R from R = I
    attention = [b.attn.attn_drop for b in model.blocks]
    seen = []
    handles = [m.register_forward_hook(lambda _m, _i, out: seen.append(out)) for m in attention]
    try:
        with exact_attention(model):  # the softmax output passes through attn_drop unfused
            logits = model(images[:1].clone().requires_grad_(True))
        grads = torch.autograd.grad(logits[0, 3], seen)
    finally:
        for h in handles:
            h.remove()
    relevance = torch.eye(17)
    for a, g in zip(seen, grads):
        relevance = relevance + (g[0] * a[0].detach()).clamp(min=0).mean(0) @ relevance
    ref = torch.nn.functional.interpolate(relevance[0, 1:].reshape(1, 1, 4, 4),
                                          size=(SIZE, SIZE), mode="bilinear")[0, 0]
    assert torch.allclose(both[1], ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


@pytest.fixture(scope="module")
def vit_ref(tmp_path_factory):
    torch.manual_seed(0)
    vit = create_model("timm", arch=VIT, num_classes=1000)  # weights made at its native 160 px
    path = tmp_path_factory.mktemp("weights") / "deit.pth"
    torch.save(vit.state_dict(), path)
    return f"timm:{VIT}={path}"


def _compress_vit(folder, vit_ref, out, *method) -> tuple[str, torch.nn.Module, dict]:
    """``(teacher ref, model, sidecar)`` of the ViT teacher restricted to the folder's classes,
    compressed from the CLI with WCAM for one epoch."""
    teacher = f"{vit_ref},classes={folder}"
    assert main(["compress", "--teacher", teacher, "--method", *method, "--matching", "wcam",
                 *_data(folder), "--epochs", "1", "--batch-size", "4", "--lr", "0.0001",
                 "--out", str(out)]) == 0
    return (teacher, *load_checkpoint(out))


def test_vit_magnitude_pruning_covers_its_linear_layers_from_the_cli(folder, vit_ref, tmp_path):
    out = tmp_path / "sparse"
    teacher, model, meta = _compress_vit(folder, vit_ref, out, "unstructured", "--rounds", "1",
                                         "--per-round", "0.5")
    linears = [m for m in model.blocks.modules() if isinstance(m, torch.nn.Linear)]
    zeros = sum(int((m.weight == 0).sum()) for m in linears)
    total = sum(m.weight.numel() for m in linears)
    assert 0.45 < zeros / total < 0.55  # the block Linear layers carry most of the weights
    assert float((model.head.weight == 0).float().mean()) < 0.01  # never the classifier
    assert abs(meta["compression"]["sparsity"] - 0.5) < 0.01
    assert main(["evaluate", "--teacher", teacher, "--model", str(out), *_data(folder),
                 "--split", "val", "--explainers", "gradcam,rollout,grad_rollout",
                 "--out", str(tmp_path / "e.json")]) == 0
    res = json.loads((tmp_path / "e.json").read_text())
    scores = res["runs"][1]["attribution"]
    assert {"gradcam", "rollout", "grad_rollout"} <= set(scores)
    assert all(-1 <= scores[e]["agreement"]["spearman"] <= 1 for e in scores)


def test_vit_head_pruning_from_the_cli(folder, vit_ref, tmp_path, capsys):
    teacher, model, meta = _compress_vit(folder, vit_ref, tmp_path / "heads", "structured",
                                         "--rate", "0.5")
    assert all(b.attn.num_heads == 1 and b.mlp.fc1.out_features == 96 for b in model.blocks)
    units = meta["history"]["rounds"][0]["units"]  # counted right after the surgery
    assert units["blocks.0.attn"] == 1 and units["blocks.5.mlp"] == 96
    capsys.readouterr()
    assert main(["compress", "--teacher", teacher, "--method", "structured",
                 "--prune-layers", "paper", *_data(folder), "--epochs", "1",
                 "--out", str(tmp_path / "paper")]) == 2
    assert "heads and MLP channels of every block" in capsys.readouterr().err


def test_vit_head_and_mlp_pruning_is_exact_and_rebuilds(tmp_path):
    """Heads of zero weight removed: the function is unchanged; heads counted right after the
    surgery; the checkpoint replays the widths."""
    from attrpreserve.compress import pruning_units, remove_units
    from attrpreserve.models import save_checkpoint

    torch.manual_seed(0)
    model = create_model("timm", arch=VIT, num_classes=4, input_size=SIZE).eval()
    attn, mlp = model.blocks[3].attn, model.blocks[3].mlp
    d = attn.head_dim
    with torch.no_grad():  # head 1 of block 3 and 50 of its MLP channels contribute nothing
        attn.proj.weight[:, d:2 * d] = 0
        attn.qkv.weight.view(3, 2, d, -1)[:, 1] = 0
        attn.qkv.bias.view(3, 2, d)[:, 1] = 0
        mlp.fc1.weight[:50] = 0
        mlp.fc1.bias[:50] = 0
        mlp.fc2.weight[:, :50] = 0
    x = torch.rand(2, 3, SIZE, SIZE)
    before = model(x)
    units = pruning_units(model)
    assert units["blocks.3.attn"] == 2 and units["blocks.3.mlp"] == 192
    remove_units(model, {"blocks.3.attn": 1, "blocks.3.mlp": 142})
    assert pruning_units(model)["blocks.3.attn"] == 1 and attn.num_heads == 1
    assert attn.qkv.weight.shape == (3 * d, 64) and mlp.fc1.out_features == 142
    # GELU(0) = 0 and the dropped head's value rows were zero: float32 reordering only
    assert torch.allclose(model(x), before, atol=1e-5)
    save_checkpoint(tmp_path / "p", model)
    loaded, _ = load_checkpoint(tmp_path / "p")
    assert loaded.blocks[3].attn.num_heads == 1 and torch.allclose(loaded(x), model(x), atol=1e-6)
    maps = explain(loaded, x, 0, method="grad_rollout")  # a one-head block's maps still read
    assert maps.shape == (2, SIZE, SIZE)


def test_train_a_timm_architecture_on_the_scenes(tmp_path):
    assert main(["train", "--model", f"timm:{VIT}", "--data", "scenes", "--size", "32",
                 "--epochs", "1", "--n-train", "32", "--n-val", "16", "--batch-size", "16",
                 "--no-progress", "--out", str(tmp_path / "t")]) == 0
    model, meta = load_checkpoint(tmp_path / "t")
    assert model.spec == {"name": "timm", "kwargs": {"arch": VIT, "num_classes": len(
        meta["classes"]), "input_size": 32, "single_label": False}}
    assert default_layer(model) == "blocks.4" and model.patch_embed.grid_size == (2, 2)
    assert not is_single_label(model)  # trained with one sigmoid per class
    assert main(["train", "--model", "resnet18", "--width", "8", "--data", "scenes",
                 "--out", str(tmp_path / "r")]) == 2  # an option the builder has no use for


def test_onnx_export_of_timm_models(folder, resnet_ref, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    data = ["--data", f"images:{folder},holdout=0.25", "--size", str(SIZE)]
    assert main(["export", "--model", f"{resnet_ref},classes={folder}", *data,
                 "--n", "2", "--out", str(tmp_path / "r.onnx")]) == 0
    meta = json.loads((tmp_path / "r.onnx.json").read_text())
    assert meta["onnx"]["check"]["top1_agreement"] == 1.0
    capsys.readouterr()  # a ViT at 64 px resamples its position embedding: one line, exit 2
    assert main(["export", "--model", f"timm:{VIT},classes={folder}", *data,
                 "--n", "2", "--out", str(tmp_path / "v.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "ONNX export failed" in err and "native size" in err and len(err.splitlines()) == 1


def test_distil_a_vit_into_a_cnn_with_matching(folder, vit_ref, tmp_path):
    """ViT teacher (4 x 4 token map) -> ResNet-18 student (2 x 2 map at 64 px): WCAM compares
    the student's map resized to the teacher's grid."""
    teacher = f"{vit_ref},classes={folder}"
    assert main(["compress", "--teacher", teacher, "--method", "kd", "--student", "resnet18",
                 "--matching", "wcam", "--lambda", "10", *_data(folder), "--epochs", "1",
                 "--batch-size", "4", "--lr", "0.001", "--out", str(tmp_path / "cnn")]) == 0
    model, meta = load_checkpoint(tmp_path / "cnn")
    assert type(model).__name__ == "ResNet" and meta["compression"]["student"] == "resnet18"
    epoch = meta["history"]["epochs"][0]
    assert np.isfinite(epoch["loss"]) and epoch["match"] > 0  # the matching term was trained


def test_vit_qat_of_its_linear_layers_from_the_cli(folder, vit_ref, tmp_path):
    """8-bit QAT of a ViT's block Linear layers (each between its own quantize / dequantize),
    with WCAM; the int8 model runs on CPU kernels and is compared with the fake quant."""
    from attrpreserve.compress import convert_int8, is_qat, prediction_agreement

    out = tmp_path / "q"
    teacher, model, meta = _compress_vit(folder, vit_ref, out, "quantization", "--bits", "8")
    assert is_qat(model) and (out / "model.int8.safetensors").is_file()
    assert 0 <= meta["compression"]["int8_top1_agreement"] <= 1
    qkv = model.blocks[0].attn.qkv  # a QuantWrapper: quantize, fake-quant Linear, dequantize
    assert type(qkv.module).__name__ == "Linear" and qkv.module.weight_fake_quant is not None
    x = torch.rand(6, 3, SIZE, SIZE)
    int8 = convert_int8(model)
    assert type(int8.blocks[0].attn.qkv.module).__module__.startswith("torch.ao.nn.quantized")
    agreement = prediction_agreement(model, int8, x)
    # int8 requantizes each of 24 Linear outputs: rounding steps, not the float model's drift
    float_model, _ = load_model(teacher)
    with torch.no_grad():
        drift = float((float_model(x) - model(x)).abs().max())
    assert agreement["max_abs_logit_diff"] < max(drift, 1e-3) * 4
    assert default_layer(model) == "blocks.4"
    assert explain(model, x[:2], 0).shape == (2, SIZE, SIZE)
    # exported as int8 QDQ at its native size, checked in onnxruntime against both PyTorch
    # forms (its logits are float: no output grid to count steps on)
    pytest.importorskip("onnxruntime")
    assert main(["export", "--model", str(out), "--size", "160", "--n", "2",
                 "--out", str(tmp_path / "q.onnx")]) == 0
    record = json.loads((tmp_path / "q.onnx.json").read_text())["onnx"]
    assert record["form"] == "int8 QDQ" and record["check_int8"]["output_step"] is None
    assert record["check_int8"]["max_abs_logit_diff"] < max(drift, 1e-3) * 4


def test_explainers_a_family_refuses_fail_in_one_line(folder, tmp_path, capsys):
    torch.manual_seed(0)
    vit = create_model("timm", arch=VIT, num_classes=4, input_size=SIZE)
    with pytest.raises(ValueError, match="'lrp' does not apply to VisionTransformer"):
        explain(vit, torch.rand(1, 3, SIZE, SIZE), 0, method="lrp")
    with pytest.raises(ValueError, match="'rollout' explains Vision Transformers"):
        explain(create_model("timm", arch=CNN, num_classes=4), torch.rand(1, 3, SIZE, SIZE), 0,
                method="rollout")
    capsys.readouterr()
    assert main(["evaluate", "--model", f"timm:{VIT},classes={folder}", *_data(folder),
                 "--split", "val", "--explainers", "gradcam,rap",
                 "--out", str(tmp_path / "e.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "'rap' does not apply" in err and len(err.splitlines()) == 1
    assert main(["compress", "--teacher", f"timm:{CNN},classes={folder}", "--method",
                 "unstructured", "--matching", "wcam", "--rollout", "gradient", *_data(folder),
                 "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs a Vision Transformer teacher" in err and len(err.splitlines()) == 1


def test_architecture_options_shape_the_model_and_travel_with_its_checkpoint(tmp_path):
    """``options`` (the ViT demo's teacher: test_vit at patch 8) change the architecture, are
    kept in the spec (a checkpoint rebuilds the same shapes), and anything but a shape is
    refused by name."""
    from attrpreserve.models.checkpoint import save_checkpoint

    options = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4}
    model = create_model("timm", arch=VIT, num_classes=3, input_size=SIZE, single_label=False,
                         options=options)
    assert model.patch_embed.grid_size == (8, 8) and len(model.blocks) == 2
    assert model.blocks[0].attn.num_heads == 4 and default_layer(model) == "blocks.0"
    save_checkpoint(tmp_path / "m", model, {"classes": ["a", "b", "c"]})
    loaded, _ = load_checkpoint(tmp_path / "m")
    assert loaded.spec["kwargs"]["options"] == options
    x = torch.rand(2, 3, SIZE, SIZE)
    assert torch.allclose(loaded(x), model.eval()(x), atol=1e-6)
    hybrid = create_model("timm", arch=VIT, num_classes=3, input_size=SIZE,
                          options={**options, "conv_stem": True})
    assert isinstance(hybrid.patch_embed.proj, torch.nn.Sequential)  # conv stem to stride 8
    assert hybrid(x).shape == (2, 3) and default_layer(hybrid) == "blocks.0"
    for bad, word in (({"pretrained": True}, "unknown architecture option 'pretrained'"),
                      ({"patch_size": 6, "conv_stem": True}, "power-of-two patch size"),
                      ({"depth": 2.5}, "wrong type"), ({"qkv_bias": 1}, "wrong type")):
        with pytest.raises(ValueError, match=word):
            create_model("timm", arch=VIT, num_classes=3, options=bad)


def test_the_vit_demo_prunes_heads_and_reports_every_explainer(tmp_path):
    """The ViT quick demo's shape, tiny: a hybrid ViT teacher, the control, head + MLP pruning
    naive / AT / WCAM, and for each explainer (token Grad-CAM, rollout, gradient rollout, and
    IG as bench/demo_seeds.py adds it) the gap recovered, in results.json and the table."""
    from dataclasses import replace

    from attrpreserve import pipeline

    cfg = replace(pipeline.VIT, teacher="train", teacher_epochs=1, teacher_warmup=0.0,
                  n_train=32, n_val=16, n_test=16,
                  model_options={"patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 4,
                                 "conv_stem": True})
    cfg = replace(cfg, explainers=(*cfg.explainers, "ig"))  # the bench's fourth explainer
    res = pipeline.demo(tmp_path, seed=0, progress=False, cfg=cfg)
    runs = {r["name"]: r for r in res["runs"]}
    assert list(runs) == ["teacher", "control", "structured", "structured+at",
                          "structured+wcam"]
    teacher, _ = load_checkpoint(tmp_path / "teacher")
    pruned, _ = load_checkpoint(tmp_path / "structured+wcam")
    heads = [b.attn.num_heads for b in pruned.blocks]
    assert sum(heads) < sum(b.attn.num_heads for b in teacher.blocks)
    for name in ("structured+at", "structured+wcam"):
        assert set(runs[name]["attribution"]) == {"gradcam", "rollout", "grad_rollout", "ig"}
        for entry in runs[name]["attribution"].values():
            assert entry["gap_recovered"]["naive"] == "structured"
    table = pipeline.format_table(res)
    for explainer in ("rollout", "grad_rollout", "ig"):
        assert f"  {explainer}: structured+wcam  vs structured" in table


def test_wcam_rollout_term_is_the_explainers_distance_and_its_gradient_is_exact():
    """``WCAM(rollout=...)`` adds the normalised distance between the teacher's and the
    student's rollout, each as the explainer computes it; the gradient-weighted kind is
    differentiated through the student's attention gradients (create_graph), checked against
    a central difference in float64."""
    torch.manual_seed(0)
    teacher = create_model("timm", arch=VIT, num_classes=4, input_size=SIZE).double().eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    images = torch.rand(3, 3, SIZE, SIZE, dtype=torch.float64)
    classes = teacher(images).argmax(1)
    rows = torch.arange(3)
    plain = AttributionMatcher(teacher, student, WCAM(drop=0.0), "blocks.4")
    for kind, method in (("attention", "rollout"), ("gradient", "grad_rollout")):
        matcher = AttributionMatcher(teacher, student, WCAM(drop=0.0, rollout=kind), "blocks.4")
        term = matcher(images)[2] - plain(images)[2]
        explainer = EXPLAINERS[method]
        ref = normalized_distance(explainer(teacher, images, rows, classes)[0],
                                  explainer(student, images, rows, classes)[0])
        assert ref > 0 and torch.allclose(term, ref, rtol=1e-9, atol=1e-12)
    weight = student.blocks[0].attn.qkv.weight
    (grad,) = torch.autograd.grad(matcher(images)[2], weight)
    eps, (i, j) = 1e-6, (70, 5)  # a key weight of the first block
    values = []
    for step in (eps, -2 * eps, eps):  # the matcher differentiates inside: edit under no_grad
        with torch.no_grad():
            weight[i, j] += step
        values.append(matcher(images)[2].detach())
    up, down = values[:2]
    # float64 central difference: truncation ~eps^2, rounding ~1e-16 / eps of the loss
    assert grad[i, j] != 0
    assert torch.isclose(grad[i, j], (up - down) / (2 * eps), rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="target='top1'"):
        WCAM(target="labels", rollout="gradient")
