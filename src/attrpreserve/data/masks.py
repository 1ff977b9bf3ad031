"""Load image + class-mask folders (the "masks" format, and PASCAL VOC 2012 as it is on disk).

The "masks" format (docs/design.md)::

    ROOT/classes.txt              one class name per line; line 1 is mask value 1 (0 is background)
    ROOT/images/ID.png|jpg|jpeg   any mode PIL reads; converted to RGB
    ROOT/masks/ID.png             single channel, class index per pixel, 0 background, 255 ignore
    ROOT/splits/train.txt         one ID per line (blank lines ignored); also val.txt, test.txt

``split="test"`` without a test list falls back to val with a warning. Images are resized to
``size x size`` bilinearly, masks with nearest neighbour (no cropping: the aspect ratio changes).
Every problem raises ``ValueError`` naming the offending file. The functions here return numpy
arrays; ``attrpreserve.data`` wraps them into a ``SegmentationSet``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IGNORE = 255

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)


@dataclass(frozen=True)
class FolderLayout:
    """Where a folder format keeps its images, masks and split lists (relative to the root)."""

    images: str = "images"
    image_exts: tuple[str, ...] = (".png", ".jpg", ".jpeg")
    masks: str = "masks"
    splits: str = "splits"


MASKS_LAYOUT = FolderLayout()
VOC_LAYOUT = FolderLayout("JPEGImages", (".jpg", ".jpeg", ".png"), "SegmentationClass",
                          "ImageSets/Segmentation")


def read_classes(path: Path) -> list[str]:
    """Class names from ``classes.txt``; trailing blank lines are dropped, inner ones are errors."""
    if not path.is_file():
        raise ValueError(f"missing class list {path}")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise ValueError(f"empty class list {path}")
    if "" in names:
        raise ValueError(f"blank line {names.index('') + 1} in class list {path}")
    if len(names) >= IGNORE:
        raise ValueError(f"too many classes ({len(names)}) in {path}; at most 254 fit a uint8 mask")
    return names


def read_split(root: Path, split: str,
               layout: FolderLayout = MASKS_LAYOUT) -> tuple[list[str], Path]:
    """IDs of ``split`` and the list file they came from (test falls back to val, warning)."""
    path = root / layout.splits / f"{split}.txt"
    if split == "test" and not path.is_file():
        val = path.with_name("val.txt")
        warnings.warn(f"no test list {path}; using the val list {val} for split 'test'",
                      stacklevel=3)
        path = val
    if not path.is_file():
        raise ValueError(f"missing split list {path}")
    ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    ids = [i for i in ids if i]
    if not ids:
        raise ValueError(f"empty split list {path}")
    return ids, path


def find_image(root: Path, image_id: str, layout: FolderLayout = MASKS_LAYOUT) -> Path:
    """The image file of ``image_id`` (first existing extension of ``layout.image_exts``)."""
    base = root / layout.images / image_id
    for ext in layout.image_exts:
        if (path := base.with_name(base.name + ext)).is_file():
            return path
    exts = "|".join(e.lstrip(".") for e in layout.image_exts)
    raise ValueError(f"missing image {base}.{exts}")


def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
        return img
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read {path}: {err}") from None


def load_mask(path: Path, n_classes: int) -> Image.Image:
    """Open a class-index mask; check it is single-channel with values in 0..K or 255."""
    if not path.is_file():
        raise ValueError(f"missing mask {path}")
    mask = _open(path)
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask {path} must be single-channel, got mode {mask.mode}")
    values = np.unique(arr)
    bad = values[(values > n_classes) & (values != IGNORE)]
    if bad.size:
        raise ValueError(f"mask {path} has value {int(bad[0])} > {n_classes} classes "
                         "(255 = ignore)")
    return Image.fromarray(arr.astype(np.uint8))


def load_pair(image_path: Path, mask_path: Path, size: int, n_classes: int):
    """One (image uint8 size x size x 3, mask uint8 size x size), checked and resized."""
    mask = load_mask(mask_path, n_classes)
    img = _open(image_path)
    if img.size != mask.size:
        raise ValueError(f"mask {mask_path} is {mask.size[0]}x{mask.size[1]} but image "
                         f"{image_path} is {img.size[0]}x{img.size[1]}")
    img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
        mask = mask.resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(img), np.asarray(mask)


def load_folder(root: Path, split: str, size: int, n: int | None, classes: list[str],
                layout: FolderLayout = MASKS_LAYOUT) -> tuple[np.ndarray, np.ndarray]:
    """Images (N x size x size x 3) and masks (N x size x size) of a split's first ``n`` IDs."""
    ids, _ = read_split(root, split, layout)
    ids = ids[:n] if n is not None else ids
    images = np.empty((len(ids), size, size, 3), dtype=np.uint8)
    masks = np.empty((len(ids), size, size), dtype=np.uint8)
    for j, image_id in enumerate(ids):
        mask_path = root / layout.masks / f"{image_id}.png"
        images[j], masks[j] = load_pair(find_image(root, image_id, layout), mask_path, size,
                                        len(classes))
    return images, masks


def find_voc_root(path: Path) -> Path | None:
    """The ``VOC2012`` folder at or under ``path`` (also ``VOCdevkit``'s parent), if any."""
    for cand in (path, path / "VOC2012", path / "VOCdevkit" / "VOC2012"):
        if (cand / VOC_LAYOUT.images).is_dir() and (cand / VOC_LAYOUT.masks).is_dir():
            return cand
    return None


def resolve_folder(arg: str | None, fmt: str) -> tuple[Path, list[str], FolderLayout]:
    """Root, class names and layout of ``masks:PATH`` (a VOC2012 folder is accepted as is)."""
    if not arg:
        raise ValueError(f"dataset '{fmt}' needs a folder: '{fmt}:PATH'")
    root = Path(arg).expanduser()
    if not root.is_dir():
        raise ValueError(f"dataset folder not found: {root}")
    voc = find_voc_root(root)
    if fmt == "voc" or (voc is not None and not (root / "classes.txt").is_file()):
        if voc is None:
            raise ValueError(f"no VOC2012 folder (JPEGImages/, SegmentationClass/) under {root}")
        return voc, list(VOC_CLASSES), VOC_LAYOUT
    return root, read_classes(root / "classes.txt"), MASKS_LAYOUT
