"""Datasets: images with per-pixel class masks; image labels are the classes present in the mask.

A dataset is selected by a spec string, ``NAME`` or ``NAME:ARG``:

- ``scenes`` : built-in synthetic shape scenes (``scenes:key=value,...`` overrides ``SceneConfig``);
- ``masks:PATH`` : an image + mask folder (docs/data.md), or a VOC2012 folder as it is;
- ``voc:PATH`` : a ``VOCdevkit/VOC2012`` folder (or its parent); splits in ``data.voc``;
- ``images:FOLDER`` / ``cached:FOLDER`` : photos read lazily (``data.images``) or decoded once
  into a uint8 cache served in batches (``data.cached``); ``coco128:PATH`` COCO photos.

Preprocessing presets (input size and normalisation, training augmentation) are in
``data.transforms``.

``DATASETS`` maps each name to a builder ``(arg, split, size, seed, n) -> SegmentationSet``; a new
format is one ``@register_dataset`` function. Every bad spec, path or file raises ``ValueError``.

Examples
--------
>>> train = build_dataset("scenes", "train", n=100)
>>> image, labels, mask = train[0]          # float 3xHxW in [0, 1], float K, int64 HxW
"""

from __future__ import annotations

from numbers import Integral
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ..registry import Registry
from . import masks as _masks
from . import voc as _voc
from .scenes import SCENE_CLASSES, SceneConfig, generate_scenes
from .transforms import PREPROCESS, Preprocess, get_preprocess

__all__ = [
    "SegmentationSet", "build_dataset", "register_dataset", "DATASETS", "SPLITS",
    "SCENE_CLASSES", "SceneConfig", "generate_scenes", "IGNORE_INDEX", "PREPROCESS", "Preprocess",
    "get_preprocess",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")
IGNORE_INDEX = 255
"""Mask value of pixels that are neither object nor background (VOC edges, hidden objects)."""

SCENES_DEFAULT_N = {"train": 2000, "val": 300, "test": 500}


class SegmentationSet(Dataset):
    """In-memory images and per-pixel class masks; multi-hot labels (from the masks by default).

    Parameters
    ----------
    images : torch.Tensor
        uint8, N x 3 x H x W.
    masks : torch.Tensor
        uint8, N x H x W; 0 background, ``k + 1`` for ``classes[k]``, 255 ignore. An image
        without localisation ground truth has an all-255 mask.
    classes : list of str
        The K class names.
    name : str
        Free-form name, e.g. ``"scenes/train"``.
    labels : torch.Tensor, optional
        float32 N x K image labels given by the source (VOC annotations); default: derived
        from the masks.
    notes : dict, optional
        What the source left out or lacks, for :meth:`describe` (``{"skipped": {reason:
        count}, "without_mask": count}``).

    Attributes
    ----------
    labels : torch.Tensor
        float32 N x K; by default ``labels[i, k] = 1`` iff value ``k + 1`` occurs in ``masks[i]``.
    """

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, classes: list[str],
                 name: str = "", labels: torch.Tensor | None = None, notes: dict | None = None):
        _check_arrays(images, masks, classes)
        self.images, self.masks = images, masks
        self.classes, self.name = list(classes), name
        from_masks = _labels_from_masks(masks, len(classes))
        if labels is None:
            labels = from_masks
        elif tuple(labels.shape) != tuple(from_masks.shape):
            raise ValueError(f"labels must be N x K = {tuple(from_masks.shape)}, "
                             f"got {tuple(labels.shape)}")
        self.labels = labels.float()
        self.notes = dict(notes or {})

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i):
        """(image float32 3 x H x W in [0, 1], labels float32 K, mask int64 H x W)."""
        return self.images[i].float().div_(255), self.labels[i], self.masks[i].long()

    def describe(self) -> dict:
        """Plain-data summary for results files: name, size, classes, label counts, classes
        absent from this split, and the source's notes (skipped images, images without mask)."""
        counts = self.labels.sum(0).int().tolist()
        return {
            "name": self.name, "n": len(self), "image_size": list(self.images.shape[2:]),
            "classes": self.classes, "label_counts": counts,
            "absent_classes": [c for c, k in zip(self.classes, counts) if k == 0], **self.notes,
        }

    def __repr__(self) -> str:
        h, w = self.images.shape[2:]
        k = len(self.classes)
        return f"SegmentationSet({self.name!r}, n={len(self)}, {h}x{w}, {k} classes)"


def _check_arrays(images, masks, classes):
    """Reject arrays that break the dtype / shape / value contract, with a one-line reason."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 N x 3 x H x W, "
                         f"got {images.dtype} {tuple(images.shape)}")
    if masks.dtype != torch.uint8 or tuple(masks.shape) != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"masks must be uint8 N x H x W matching the images, "
                         f"got {masks.dtype} {tuple(masks.shape)}")
    if not 1 <= len(classes) < IGNORE_INDEX:
        raise ValueError(f"need 1..254 classes, got {len(classes)}")


def _labels_from_masks(masks: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Multi-hot N x K labels from histograms of blocks of masks (an int64 copy of a block at a
    time, not of all: VOC at 227 px would need GBs); rejects values above K other than 255."""
    n, block = masks.shape[0], 256
    present = torch.zeros(n, 256, dtype=torch.bool)
    for lo in range(0, n, block):
        part = masks[lo:lo + block]
        m = part.shape[0]
        offsets = torch.arange(m, dtype=torch.int64).view(m, 1) * 256
        hist = torch.bincount((part.reshape(m, -1).long() + offsets).ravel(), minlength=256 * m)
        present[lo:lo + m] = hist.view(m, 256) > 0
    bad = present[:, n_classes + 1:IGNORE_INDEX].any(1)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(f"mask {i} has values above the {n_classes} classes (255 = ignore)")
    return present[:, 1:n_classes + 1].float()


# ----------------------------------------------------------------------------- registry

Builder = Callable[[str | None, str, int, int, int | None], SegmentationSet]
DATASETS: Registry[Builder] = Registry("dataset")


def register_dataset(name: str) -> Callable[[Builder], Builder]:
    """Decorator: register a builder ``(arg, split, size, seed, n) -> SegmentationSet``."""
    return DATASETS.register(name)


def _from_numpy(images: np.ndarray, masks: np.ndarray, classes, name, labels=None,
                notes=None) -> SegmentationSet:
    """Wrap N x H x W x 3 / N x H x W uint8 arrays (channels-last, as loaded) into a set."""
    tensor = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return SegmentationSet(tensor, torch.from_numpy(masks), classes, name, labels, notes)


@register_dataset("scenes")
def _build_scenes(arg, split, size, seed, n):
    """Synthetic scenes; each split is its own random stream, image i independent of n."""
    cfg = SceneConfig.from_string(arg, size=size)
    n = SCENES_DEFAULT_N[split] if n is None else n
    images, masks = generate_scenes(n, seed, SPLITS.index(split), cfg)
    return _from_numpy(images, masks, list(SCENE_CLASSES), f"scenes/{split}")


@register_dataset("masks")
def _build_masks(arg, split, size, seed, n):
    """Image + mask folder (a VOC2012 folder without classes.txt is read as VOC)."""
    root = _masks.folder_root(arg, "masks")
    if _masks.is_voc(root):
        return _build_voc(arg, split, size, seed, n)
    classes = _masks.read_classes(root / "classes.txt")
    images, masks = _masks.load_folder(root, split, size, n, classes)
    return _from_numpy(images, masks, classes, f"masks:{root.name}/{split}")


@register_dataset("voc")
def _build_voc(arg, split, size, seed, n):
    """PASCAL VOC 2012: Main lists + XML labels for train/val, segmentation val for test."""
    root = _masks.folder_root(arg, "voc")
    voc = _masks.find_voc_root(root)
    if voc is None:
        raise ValueError(f"no VOC2012 folder (JPEGImages/ with SegmentationClass/ or "
                         f"Annotations/) at or under {root}")
    images, masks, labels, notes = _voc.load_voc(voc, split, size, n)
    return _from_numpy(images, masks, list(_masks.VOC_CLASSES), f"voc/{split}",
                       None if labels is None else torch.from_numpy(labels), notes)


def build_dataset(spec: str, split: str, *, size: int = 64, seed: int = 0,
                  n: int | None = None) -> SegmentationSet:
    """Build the ``split`` of the dataset named by ``spec`` (``"scenes"``, ``"masks:PATH"``, ...).

    Parameters
    ----------
    spec : str
        ``NAME`` or ``NAME:ARG``; NAME is a key of ``DATASETS``.
    split : {"train", "val", "test"}
    size : int
        Side of the square images.
    seed : int
        Seed of generated data (ignored by folders, whose content is fixed).
    n : int, optional
        Number of images: the first n (scenes default: train 2000, val 300, test 500).

    Raises
    ------
    ValueError
        Unknown name or split, bad size or n, missing or malformed files.
    """
    name, _, arg = spec.partition(":")
    DATASETS.check(name, f" in spec {spec!r}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if not isinstance(size, Integral) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if n is not None and (not isinstance(n, Integral) or n < 1):
        raise ValueError(f"n must be a positive integer or None, got {n!r}")
    if not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return DATASETS[name](arg or None, split, int(size), int(seed), None if n is None else int(n))


# ----------------------------------------------------------------------------- photo folders
# Photos read lazily at the model's size (``data.images``, ``data.coco``): unlabeled or
# class-folder labeled ``images:FOLDER``, and COCO photos with panoptic masks ``coco128:PATH``.
# Their items keep the (image, labels, mask) shape with an all-void mask (no localisation by
# the standard evaluator); ``ImageSet.with_classes`` maps labels onto a model's classes.

@register_dataset("images")
def _build_images(arg, split, size, seed, n):
    """A folder of photos (``images:FOLDER[,holdout=0.2]``; docs/pretrained.md)."""
    from .images import build_images

    return build_images(arg, split, size, n)


@register_dataset("cached")
def _build_cached(arg, split, size, seed, n):
    """A folder of photos decoded once into a uint8 cache (``cached:FOLDER``; data.cached)."""
    from .cached import build_cached

    return build_cached(arg, split, size, n)


@register_dataset("coco128")
def _build_coco(arg, split, size, seed, n):
    """COCO photos + panoptic masks (``coco128:PATH[,holdout=0.2]``)."""
    from .coco import build_coco

    return build_coco(arg, split, size, n)
