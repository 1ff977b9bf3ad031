"""A pretrained model scored on a class folder keeps the folder's classes by default (as
``,classes=FOLDER``); ``,classes=all`` keeps all 1000; the output says which it did."""

import json

import pytest
import torch

from conftest import random_photo_folders

from attrpreserve.cli import main
from attrpreserve.models import create_model, save_checkpoint
from attrpreserve.models.pretrained import imagenet_classes
from attrpreserve.pipeline import scope_to_folder

FOLDERS = ("Egyptian_cat", "espresso", "n01440764")  # names and a wnid: 3 ImageNet classes
NAMES = [imagenet_classes()[i] for i in (285, 967, 0)]  # the folders' order, sorted


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    return random_photo_folders(tmp_path_factory.mktemp("labeled"), FOLDERS)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A random ImageNet-shaped MobileNetV3-Small state dict: 'pretrained:...=PATH'."""
    torch.manual_seed(0)
    model = create_model("torchvision_imagenet", arch="mobilenet_v3_small", input_size=64)
    path = tmp_path_factory.mktemp("weights") / "mnv3.pth"
    torch.save(model.state_dict(), path)
    return f"pretrained:mobilenet_v3_small={path}"


def checkpoint(path, classes):
    model = create_model("vgg", num_classes=len(classes), width=4, input_size=32)
    save_checkpoint(path, model, {"classes": classes, "data": {"spec": "scenes"}})
    return str(path)


def test_scope_to_folder(labeled, tmp_path):
    spec, data = "pretrained:efficientnet-lite0", {"spec": f"images:{labeled},holdout=1"}
    refs, note = scope_to_folder([spec], data)
    assert refs == [f"{spec},classes={labeled}"]
    assert f"scored over the 3 classes of {labeled}" in note and "classes=all" in note
    kept = f"{spec},classes=all"
    assert scope_to_folder([kept], data) == ([kept], f"{kept}: scored over all 1000 classes, "
                                                     f"not the 3 of {labeled} (classes=all)")
    # compared with a model of the folder's classes: both restricted
    small = checkpoint(tmp_path / "small", NAMES)
    assert scope_to_folder([spec, small], data)[0] == [f"{spec},classes={labeled}", small]
    # compared with a 1000-way model (compressed unrestricted): all stay 1000-way, said so
    wide = checkpoint(tmp_path / "wide", list(imagenet_classes()))
    refs, note = scope_to_folder([spec, wide], data)
    assert refs == [spec, wide] and "over all 1000 classes" in note and "has 1000" in note
    assert scope_to_folder([spec, kept], data)[0] == [spec, kept]
    # unlabeled photos, other data, no pretrained model: nothing to do
    flat = tmp_path / "flat"
    flat.mkdir()
    assert scope_to_folder([spec], {"spec": f"images:{flat}"}) == ([spec], None)
    assert scope_to_folder([spec], {"spec": "scenes"}) == ([spec], None)
    assert scope_to_folder([small], data) == ([small], None)


def test_evaluate_and_audit_score_over_the_folder(labeled, weights, tmp_path, capsys):
    data = ["--data", f"images:{labeled},holdout=1", "--split", "val", "--size", "64",
            "--no-progress"]
    assert main(["evaluate", "--teacher", weights, "--model", weights, *data,
                 "--out", str(tmp_path / "e.json")]) == 0
    out = capsys.readouterr().out
    assert f"classes: {weights}, {weights}: scored over the 3 classes of {labeled}" in out
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["dataset"]["classes"] == NAMES
    assert all(r["checkpoint"] == f"{weights},classes={labeled}" for r in res["runs"])

    assert main(["audit", "--reference", weights, "--candidate", f"{weights},classes=all",
                 *data, "--n-boot", "0", "--out", str(tmp_path / "a")]) == 0
    assert "scored over all 1000 classes, not the 3" in capsys.readouterr().out
    audit = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert audit["reference"] == weights  # kept 1000-way, like the candidate
