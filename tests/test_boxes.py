"""Object boxes of photo folders (``data.boxes``): parsing, masks under each loader's crop, and
localisation only where a photo has boxes."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from attrpreserve.data import build_dataset
from attrpreserve.data.boxes import box_mask, read_boxes
from attrpreserve.data.cached import build_cached
from attrpreserve.data.images import EVAL_RESIZE
from attrpreserve.evaluate.runner import collect_pairs

HEADER = "split,wnid,file,x0n,y0n,x1n,y1n\n"
BOX = (0.1, 0.2, 0.6, 0.9)  # of cat/a.png, a 60 x 40 photo


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTRPRESERVE_CACHE", "off")
    rng = np.random.default_rng(0)
    for cls, name, size in (("cat", "a.png", (60, 40)), ("cat", "b.png", (40, 40)),
                            ("dog", "c.png", (30, 50))):
        path = tmp_path / "f" / "val" / cls / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    rows = ["val,cat,a.png," + ",".join(map(str, BOX)),
            "val,dog,a.png,0,0,1,1",  # another class's folder: not a.png of cat
            "train,cat,b.png,0,0,1,1",  # another split: b.png of val/ has no box
            "val,cat,zzz.png,0,0,1,1"]  # names no photo: ignored
    (tmp_path / "f" / "boxes.csv").write_text(HEADER + "\n".join(rows) + "\n")
    return tmp_path / "f"


def reference_mask(photo, box, size: int) -> np.ndarray:
    """The box drawn on the full photo, then resized and center-cropped like an eval image:
    an independent route to the mask the loaders compute from coordinates."""
    w, h = Image.open(photo).size
    full = np.zeros((h, w), np.uint8)
    full[round(box[1] * h):round(box[3] * h), round(box[0] * w):round(box[2] * w)] = 1
    side = round(size * EVAL_RESIZE)
    c = min(w, h)
    img = Image.fromarray(full).resize((side, side), Image.Resampling.NEAREST,
                                       box=((w - c) / 2, (h - c) / 2, (w + c) / 2, (h + c) / 2))
    top = (side - size) // 2
    return np.asarray(img)[top:top + size, top:top + size]


def test_box_mask_by_hand():
    m = box_mask([(0.25, 0.25, 0.75, 0.75)], label=2, size=8)
    expected = torch.zeros(8, 8, dtype=torch.int64)
    expected[2:6, 2:6] = 3
    assert torch.equal(m, expected)
    assert bool((box_mask([], 2, 8) == 255).all()) and bool((box_mask([(0, 0, 1, 1)], -1, 8)
                                                              == 255).all())
    flipped = box_mask([(0.0, 0.0, 0.25, 1.0)], 0, 8, flip=True)
    assert bool((flipped[:, 6:] == 1).all()) and bool((flipped[:, :6] == 0).all())


@pytest.mark.parametrize("spec", ["images", "cached"])
def test_masks_follow_the_eval_crop_and_only_boxed_photos_get_one(folder, spec):
    ds = build_dataset(f"{spec}:{folder}", "val", size=16)
    names = [f.name for f in ds.files]
    assert names == ["a.png", "b.png", "c.png"]
    _, labels, mask = ds[0]
    ref = reference_mask(ds.files[0], BOX, 16)
    # the two routes differ at most on the box's edge rows / columns (rounding)
    assert (mask.numpy() == 255).sum() == 0
    assert np.mean((mask.numpy() == 1) != (ref == 1)) < 4 * 16 / 256
    assert bool((ds[1][2] == 255).all()) and bool((ds[2][2] == 255).all())
    if spec == "cached":  # batches carry the same masks as items
        _, _, batch_masks = next(iter(ds.loader(3)))
        assert torch.equal(batch_masks[0], mask) and bool((batch_masks[1:] == 255).all())


@pytest.mark.parametrize("text, words", [
    ("file,x0n,y0n,x1n\n", "header lacks y1n"),
    (HEADER + "val,cat,a.png,0.1,0.2,0.6\n", "row 2: 6 fields"),
    (HEADER + "val,cat,a.png,0.1,0.2,0.6,0.9\nval,cat,b.png,0.1,x,0.6,0.9\n",
     "row 3: y0n must be a number in [0, 1], got 'x'"),
    (HEADER + "val,cat,a.png,0.6,0.2,0.1,0.9\n", "row 2: empty box"),
    (HEADER + "val,cat,a.png,0.1,0.2,1.5,0.9\n", "row 2: x1n must be a number in [0, 1]"),
])
def test_a_wrong_box_file_is_one_line_naming_the_row(tmp_path, text, words):
    path = tmp_path / "boxes.csv"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        read_boxes(path)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_boxes_option_names_another_file(folder, tmp_path):
    other = tmp_path / "mine.csv"
    other.write_text(HEADER + "val,dog,c.png,0,0,0.5,0.5\n")
    ds = build_cached(f"{folder},boxes={other}", "val", 16, None, progress=False)
    assert [bool(b) for b in ds.boxes] == [False, False, True]
    with pytest.raises(ValueError, match="box file not found"):
        build_dataset(f"images:{folder},boxes={tmp_path / 'nope.csv'}", "val", size=16)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(4, 2)
        self.matched_layer = "act"

    def forward(self, x):
        return self.head(self.act(self.conv(x)).mean((2, 3)))


def test_localisation_only_on_boxed_photos(folder):
    torch.manual_seed(0)
    ds = build_cached(str(folder), "val", 16, None, progress=False)
    data = collect_pairs({"t": Tiny()}, ds.loader(3), progress=False)
    rec = data["pairs"]["t"]["gradcam"]
    assert data["localization"]
    for key in ("hit", "auc", "energy"):  # a.png is boxed; b.png and c.png are not
        assert not torch.isnan(rec[key][0]) and bool(torch.isnan(rec[key][1:]).all())
    assert not torch.isnan(data["center_hit"][0]) and bool(torch.isnan(data["center_hit"][1:]).all())
