"""COCO photos with masks (``coco128:PATH``), the ImageNet-to-COCO mapping, and localisation of
an ImageNet model's top-1 class on real masks."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from attrpreserve.data import build_dataset
from attrpreserve.data.coco import COCO_THINGS, IMAGENET_TO_COCO, NO_MASK, coco_ids
from attrpreserve.evaluate import mask_localization
from attrpreserve.models.pretrained import imagenet_classes

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128-train"


def test_imagenet_to_coco_mapping():
    names = imagenet_classes()
    assert len(names) == 1000
    for index, name, coco in [(281, "tabby", {17}), (285, "Egyptian cat", {17}),
                              (207, "golden retriever", {18}), (404, "airliner", {5}),
                              (779, "school bus", {6}), (820, "steam locomotive", {7}),
                              (671, "mountain bike", {2}), (670, "motor scooter", {4}),
                              (814, "speedboat", {9}), (21, "kite", {16}),
                              (717, "pickup", {3, 8}), (386, "African elephant", {22})]:
        assert names[index] == name and coco_ids(index) == coco, (index, name)
    assert coco_ids(291) == set() and names[291] == "lion"  # wild cats are not COCO cats
    assert coco_ids(269) == set() and names[269] == "timber wolf"
    assert coco_ids(0) == set()
    assert all(i in COCO_THINGS for ids in IMAGENET_TO_COCO.values() for i in ids)
    dogs = [k for k, v in IMAGENET_TO_COCO.items() if v == {18}]
    assert len(dogs) == 118 and names[min(dogs)] == "Chihuahua"


def _coco_folder(root: Path) -> Path:
    """Four 40 x 32 photos: two with category 7 on the left half, one without, one unmasked."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(
            root / "images" / f"{i:03d}.jpg")
        if i == 3:
            continue
        mask = np.zeros((32, 40), np.uint8)
        mask[:, :20] = 7 if i < 2 else 3
        mask[:4] = 187  # stuff ("sky")
        Image.fromarray(mask).save(root / "masks" / f"{i:03d}.png")
    return root


def test_coco_items_carry_the_mask_under_the_same_crop(tmp_path):
    root = _coco_folder(tmp_path / "coco")
    ds = build_dataset(f"coco128:{root},holdout=1", "val", size=16)
    assert len(ds) == 4
    image, labels, void, region = ds[0]
    assert image.shape == (3, 16, 16) and labels.shape == (0,) and bool((void == 255).all())
    assert set(region.unique().tolist()) == {0, 7, 187}
    assert bool((region[8:, :5] == 7).all()) and bool((region[8:, -5:] == 0).all())
    assert bool((ds[3][3] == NO_MASK).all())
    torch.manual_seed(0)
    train = build_dataset(f"coco128:{root},holdout=0.5", "train", size=16)
    assert len(train) == 2 and train[0][3].shape == (16, 16)
    with pytest.raises(ValueError, match="no images/ folder"):
        build_dataset(f"coco128:{tmp_path}", "val")


class _Place(nn.Module):
    """Keeps channel 0 on the bottom-left quarter and channel 1 on the top-right one."""

    def forward(self, a):
        w = torch.zeros_like(a[:1])
        w[:, 0, 8:, :8] = 1
        w[:, 1, :8, 8:] = 1
        return a * w


class _BottomLeft(nn.Module):
    """Single-label toy: class 0 (always top-1) reads the bottom-left quarter."""

    def __init__(self):
        super().__init__()
        self.features, self.place = nn.Conv2d(3, 2, 1), _Place()
        self.matched_layer, self.single_label = "place", True
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.bias.fill_(1.0)

    def forward(self, x):
        return self.place(self.features(x)).mean((2, 3)) + torch.tensor([1.0, 0.0])


def test_mask_localization_scores_mapped_top1(tmp_path):
    root = _coco_folder(tmp_path / "coco")
    ds = build_dataset(f"coco128:{root},holdout=1", "val", size=16)
    model = _BottomLeft()
    res = mask_localization({"t": model, "s": model}, DataLoader(ds, batch_size=3), "t",
                            lambda c: {7} if c == 0 else set(), n_boot=50, progress=False)
    assert res["images"] == 3 and res["pairs"] == 2 and res["classes"] == {"0": 2}
    assert 0.35 < res["baselines"]["things_area"] < 0.55
    g = res["models"]["t"]["gradcam"]
    assert g["pointing_game"]["mean"] == 1.0  # the map's peak lies on the category's mask
    assert 0.7 < g["auc"]["mean"] < 0.85 and g["energy_things"]["mean"] == 1.0
    assert g["energy_labelled"]["mean"] == 1.0
    assert res["delta"]["s"]["gradcam"]["auc"]["delta"] == 0.0
    unmasked = [tuple(t[None] for t in ds[3])]
    with pytest.raises(ValueError, match="no photo with a mask"):
        mask_localization({"t": model}, unmasked, "t", coco_ids, progress=False)


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared COCO128 photos absent")
def test_shared_coco128_split_has_masks():
    val = build_dataset(f"coco128:{SHARED}", "val", size=64)
    train = build_dataset(f"coco128:{SHARED}", "train", size=64)
    assert len(val) + len(train) == 128
    masked = sum(int((val[i][3] >= 0).any()) for i in range(len(val)))
    assert 0 < masked <= len(val)
