"""PASCAL VOC 2012 as distributed (``VOCdevkit/VOC2012``): classification lists for training,
segmentation masks for the attribution evaluation.

Splits of a folder that has ``ImageSets/Main`` and ``Annotations/`` (the full download):

- ``train``: ``ImageSets/Main/train.txt``; labels: the object names in ``Annotations/ID.xml``;
- ``val``: ``ImageSets/Main/val.txt`` without the ``test`` images; labels from the XML;
- ``test``: ``ImageSets/Segmentation/val.txt`` (1,449 images); labels: the classes in the mask.

``val`` selects the checkpoint (best mAP), ``test`` is what ``evaluate`` reports: the images of
the segmentation val list are removed from ``val`` (the paper's code selected on them), and
``describe()`` counts them under ``skipped``. Every object in an annotation counts as a
positive label, "difficult" ones included (as the paper's code does).

Masks: ``SegmentationClass/ID.png`` palette PNGs (index = class, 0 background, 255 void).
Training and selection images that have no mask (most of them) get an all-255 mask: "no
localisation ground truth", which evaluation treats as absent; ``describe()`` counts them under
``without_mask``. The test images must all have masks.

A folder without ``ImageSets/Main`` (the segmentation part alone) is read from the
segmentation lists: ``train``/``val`` from ``ImageSets/Segmentation``, labels from the masks,
and ``test`` falls back to val with a warning.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from .masks import VOC_CLASSES, VOC_LAYOUT, find_image, load_pairs, read_ids, read_split

MAIN = "ImageSets/Main"
SEGMENTATION = "ImageSets/Segmentation"


def has_main(root: Path) -> bool:
    """Whether ``root`` has the classification lists and annotations (the full VOC folder)."""
    return (root / MAIN).is_dir() and (root / "Annotations").is_dir()


def annotation_labels(path: Path) -> np.ndarray:
    """Multi-hot float32 (20,) of the object names in one ``Annotations/ID.xml``."""
    if not path.is_file():
        raise ValueError(f"missing annotation {path}")
    try:
        tree = ET.parse(path)
    except ET.ParseError as err:
        raise ValueError(f"cannot parse annotation {path}: {err}") from None
    labels = np.zeros(len(VOC_CLASSES), dtype=np.float32)
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip().lower()
        if name not in VOC_CLASSES:
            raise ValueError(f"annotation {path}: unknown class {name!r}; VOC classes are "
                             f"{', '.join(VOC_CLASSES)}")
        labels[VOC_CLASSES.index(name)] = 1.0
    return labels


def split_ids(root: Path, split: str) -> tuple[list[str], dict]:
    """IDs of ``split`` (see the module docstring) and notes on what was left out."""
    if split == "test":
        return read_ids(root / SEGMENTATION / "val.txt"), {}
    ids = read_ids(root / MAIN / f"{split}.txt")
    notes = {}
    if split == "val" and (root / SEGMENTATION / "val.txt").is_file():
        held_out = set(read_ids(root / SEGMENTATION / "val.txt"))
        kept = [i for i in ids if i not in held_out]
        if not kept:
            raise ValueError(f"no images left in {root / MAIN / 'val.txt'} once the test images "
                             f"({root / SEGMENTATION / 'val.txt'}) are removed")
        if len(kept) < len(ids):
            notes["skipped"] = {"in the test split (ImageSets/Segmentation/val.txt)":
                                len(ids) - len(kept)}
        ids = kept
    return ids, notes


def load_voc(root: Path, split: str, size: int, n: int | None):
    """``(images N x size x size x 3, masks N x size x size, labels N x 20 or None, notes)``.

    ``labels`` is ``None`` where the masks define them (test split, segmentation-only folders).
    """
    n_classes = len(VOC_CLASSES)
    masks_dir = root / VOC_LAYOUT.masks
    if not has_main(root):
        ids, _ = read_split(root, split, VOC_LAYOUT)
        ids = ids[:n] if n is not None else ids
        pairs = [(find_image(root, i, VOC_LAYOUT), masks_dir / f"{i}.png") for i in ids]
        return (*load_pairs(pairs, size, n_classes), None, {})
    ids, notes = split_ids(root, split)
    ids = ids[:n] if n is not None else ids
    with_masks = split == "test"
    pairs = [(find_image(root, i, VOC_LAYOUT),
              masks_dir / f"{i}.png" if with_masks or (masks_dir / f"{i}.png").is_file()
              else None) for i in ids]
    images, masks = load_pairs(pairs, size, n_classes)
    if with_masks:
        return images, masks, None, notes
    labels = np.stack([annotation_labels(root / "Annotations" / f"{i}.xml") for i in ids])
    missing = sum(mask is None for _, mask in pairs)
    if missing:
        notes["without_mask"] = missing
    return images, masks, labels, notes

