"""PASCAL VOC 2012 on a tiny fixture written here: splits, labels, masks, errors, end to end."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from attrpreserve.cli import main
from attrpreserve.data import build_dataset
from attrpreserve.data.masks import VOC_CLASSES
from attrpreserve.loading import load_checkpoint

CAT, DOG, PERSON = (VOC_CLASSES.index(c) for c in ("cat", "dog", "person"))

# id: (width, height, [(class, box x0, y0, x1, y1), ...]) ; boxes drawn into image and mask
IMAGES = {
    "2008_000001": (48, 40, [(CAT, 4, 4, 24, 30)]),
    "2008_000002": (40, 48, [(DOG, 10, 10, 36, 40), (PERSON, 0, 0, 8, 8)]),
    "2008_000003": (48, 48, [(PERSON, 20, 6, 40, 44)]),
    "2008_000004": (44, 36, [(CAT, 2, 2, 20, 20), (DOG, 22, 10, 42, 34)]),
    "2008_000005": (48, 40, [(DOG, 8, 8, 40, 32)]),
    "2008_000006": (40, 40, [(PERSON, 4, 4, 36, 36)]),
    "2009_000001": (48, 40, [(CAT, 10, 10, 40, 36)]),
    "2009_000002": (40, 48, [(PERSON, 6, 6, 30, 44)]),
    "2009_000003": (44, 44, [(DOG, 4, 20, 40, 40)]),
    "2009_000004": (48, 36, [(CAT, 24, 2, 46, 30)]),
    "2010_000001": (48, 40, [(DOG, 4, 4, 30, 36), (CAT, 32, 10, 46, 30)]),
    "2010_000002": (40, 40, [(PERSON, 10, 2, 30, 38)]),
    "2010_000003": (48, 44, [(CAT, 6, 6, 42, 38)]),
}
MAIN_TRAIN = [f"2008_00000{i}" for i in range(1, 7)]
MAIN_VAL = [f"2009_00000{i}" for i in range(1, 5)] + [f"2010_00000{i}" for i in range(1, 4)]
SEG_TRAIN = ["2008_000001", "2008_000002"]
SEG_VAL = [f"2010_00000{i}" for i in range(1, 4)]
COLOURS = {CAT: (220, 120, 30), DOG: (40, 90, 200), PERSON: (30, 180, 60)}


def voc_palette() -> list[int]:
    """The VOC colour map (index -> RGB), 256 entries flattened."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= (c & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def _xml(image_id, w, h, objects, extra=""):
    objs = "".join(
        f"<object><name>{VOC_CLASSES[c]}</name><difficult>0</difficult><bndbox><xmin>{x0 + 1}"
        f"</xmin><ymin>{y0 + 1}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for c, x0, y0, x1, y1 in objects)
    return (f"<annotation><folder>VOC2012</folder><filename>{image_id}.jpg</filename><size>"
            f"<width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}{extra}"
            "</annotation>")


def write_voc(root):
    """A VOCdevkit/VOC2012 folder with 13 images: Main train 6 (2 with masks), Main val 7 (of
    which the 3 segmentation-val images, the test split). Returns the VOC2012 folder."""
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Main",
                "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    palette = voc_palette()
    for image_id, (w, h, objects) in IMAGES.items():
        img = rng.integers(90, 140, (h, w, 3)).astype(np.uint8)
        mask = np.zeros((h, w), np.uint8)
        for c, x0, y0, x1, y1 in objects:
            img[y0:y1, x0:x1] = COLOURS[c]
            mask[y0:y1, x0:x1] = c + 1
            mask[y0:y1, x0:x0 + 3] = 255  # void edge, as in VOC
        Image.fromarray(img).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
        (voc / "Annotations" / f"{image_id}.xml").write_text(_xml(image_id, w, h, objects))
        if image_id in SEG_TRAIN + SEG_VAL:
            png = Image.frombytes("P", (w, h), mask.tobytes())
            png.putpalette(palette)
            png.save(voc / "SegmentationClass" / f"{image_id}.png")
    lists = {"Main/train": MAIN_TRAIN, "Main/val": MAIN_VAL, "Main/trainval": MAIN_TRAIN + MAIN_VAL,
             "Segmentation/train": SEG_TRAIN, "Segmentation/val": SEG_VAL}
    for name, ids in lists.items():
        (voc / "ImageSets" / f"{name}.txt").write_text("\n".join(ids) + "\n")
    return voc


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return write_voc(tmp_path_factory.mktemp("voc"))


def _multi_hot(objects):
    y = torch.zeros(len(VOC_CLASSES))
    for c, *_ in objects:
        y[c] = 1
    return y


def test_voc_splits_labels_and_masks(voc):
    train = build_dataset(f"voc:{voc.parent.parent}", "train", size=24)
    assert len(train) == 6 and train.classes == list(VOC_CLASSES)
    assert torch.equal(train.labels, torch.stack([_multi_hot(IMAGES[i][2]) for i in MAIN_TRAIN]))
    has_mask = (train.masks != 255).flatten(1).any(1).tolist()
    assert has_mask == [True, True, False, False, False, False]  # no mask: all 255 (ignore)
    assert train.describe()["without_mask"] == 4 and "skipped" not in train.describe()

    val = build_dataset(f"voc:{voc}", "val", size=24)
    assert len(val) == 4 and val.describe()["skipped"] == {
        "in the test split (ImageSets/Segmentation/val.txt)": 3}
    assert torch.equal(val.labels, torch.stack([_multi_hot(IMAGES[i][2]) for i in MAIN_VAL[:4]]))

    test = build_dataset(f"voc:{voc}", "test", size=24)  # segmentation val, no warning
    assert len(test) == 3 and (test.masks != 255).flatten(1).any(1).all()
    assert torch.equal(test.labels, torch.stack([_multi_hot(IMAGES[i][2]) for i in SEG_VAL]))
    assert 255 in test.masks[0] and set(test.masks.unique().tolist()) <= {
        0, CAT + 1, DOG + 1, PERSON + 1, 255}
    assert test.describe()["absent_classes"][:2] == ["aeroplane", "bicycle"]

    auto = build_dataset(f"masks:{voc.parent}", "val", size=24, n=2)  # VOCdevkit, auto-detected
    assert torch.equal(auto.images, val.images[:2]) and torch.equal(auto.labels, val.labels[:2])


@pytest.mark.parametrize("how, culprit", [
    ("unknown_class", "2008_000003.xml"), ("no_annotation", "2008_000004.xml"),
    ("bad_xml", "2008_000005.xml"), ("no_test_mask", "2010_000002.png"),
    ("path_in_list", "train.txt"),
])
def test_voc_errors_name_the_file(tmp_path, how, culprit):
    voc = write_voc(tmp_path)
    ann = voc / "Annotations"
    if how == "unknown_class":
        (ann / "2008_000003.xml").write_text(_xml("x", 4, 4, []).replace(
            "</annotation>", "<object><name>unicorn</name></object></annotation>"))
    elif how == "no_annotation":
        (ann / "2008_000004.xml").unlink()
    elif how == "bad_xml":
        (ann / "2008_000005.xml").write_text("<annotation><object>")
    elif how == "no_test_mask":
        (voc / "SegmentationClass" / "2010_000002.png").unlink()
    elif how == "path_in_list":
        (voc / "ImageSets/Main/train.txt").write_text("2008_000001\n../2008_000002\n")
    split = "test" if how == "no_test_mask" else "train"
    with pytest.raises(ValueError, match=culprit) as info:
        build_dataset(f"voc:{voc}", split, size=16)
    assert "\n" not in str(info.value)


def test_voc_end_to_end_through_the_cli(voc, tmp_path):
    """Train (paper preprocessing, tiny VGG), distil with WCAM, evaluate on the test split."""
    data = ["--data", f"voc:{voc}", "--size", "32", "--batch-size", "3", "--no-progress"]
    teacher, student = tmp_path / "t", tmp_path / "s"
    assert main(["train", *data, "--preprocess", "paper", "--width", "2", "--epochs", "1",
                 "--out", str(teacher)]) == 0
    meta = load_checkpoint(teacher)[1]
    assert meta["data"]["preprocess"] == "paper"
    assert meta["datasets"]["val"]["skipped"] == {
        "in the test split (ImageSets/Segmentation/val.txt)": 3}
    assert meta["model"]["kwargs"]["input_norm"][0] == pytest.approx([0.4589, 0.4355, 0.4032])
    assert main(["compress", "--teacher", str(teacher), "--method", "kd", "--matching", "wcam",
                 "--width-divisor", "2", "--epochs", "1", "--no-progress",
                 "--out", str(student)]) == 0
    assert load_checkpoint(student)[0].input_std.flatten().tolist() == pytest.approx(
        [0.2239, 0.2186, 0.2206])  # the student normalises like the teacher
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(student), "--teacher", str(teacher), "--split",
                 "test", "--explainers", "gradcam", "--no-progress", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["dataset"]["images"] == 3 and res["dataset"]["spec"] == f"voc:{voc}"
    run = res["runs"][1]["attribution"]["gradcam"]
    assert run["pointing_game_std"] is not None and run["agreement"]["spearman"] is not None
