"""Load image + class-mask folders (the "masks" format); shared file helpers for VOC (``voc``).

The "masks" format (docs/design.md, docs/data.md)::

    ROOT/classes.txt              one class name per line; line 1 is mask value 1 (0 is background)
    ROOT/images/ID.png|jpg|jpeg   any size and mode PIL reads (RGB, L, RGBA, P, 16-bit, ...)
    ROOT/masks/ID.png             single channel, class index per pixel, 0 background, 255 ignore
    ROOT/splits/train.txt         one ID per line (blank lines ignored); also val.txt, test.txt

``split="test"`` without a test list falls back to val with a warning. Images become 8-bit RGB
(grey and 16-bit grey images are replicated to three channels, 16-bit values scaled by 1/257,
alpha is dropped) and are resized to ``size x size`` bilinearly, masks with nearest neighbour
(no cropping: the aspect ratio changes). A mask must have its image's size: it is checked before
either is resized. Every problem raises ``ValueError`` naming the offending file: missing or
unreadable files, a mask of the wrong size, mode or values, an empty list, an ID with a path
separator or listed twice, an ID with two image files. Nothing is skipped.

The functions here return numpy arrays; ``attrpreserve.data`` wraps them into a
``SegmentationSet``.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .images import BOMBS, refuse_bombs

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


def read_ids(path: Path) -> list[str]:
    """IDs of a list file, one per line (blank lines ignored), checked: not empty, no path
    separators, no duplicates."""
    if not path.is_file():
        raise ValueError(f"missing split list {path}")
    ids, seen = [], {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        image_id = line.strip()
        if not image_id:
            continue
        if "/" in image_id or "\\" in image_id or image_id in (".", ".."):
            raise ValueError(f"{path} line {lineno}: ID {image_id!r} contains a path separator; "
                             "list file names without folder or extension")
        if image_id in seen:
            raise ValueError(f"{path} line {lineno}: ID {image_id!r} is listed twice "
                             f"(first on line {seen[image_id]})")
        seen[image_id] = lineno
        ids.append(image_id)
    if not ids:
        raise ValueError(f"empty split list {path}")
    return ids


def read_split(root: Path, split: str,
               layout: FolderLayout = MASKS_LAYOUT) -> tuple[list[str], Path]:
    """IDs of ``split`` and the list file they came from (test falls back to val, warning)."""
    path = root / layout.splits / f"{split}.txt"
    if split == "test" and not path.is_file():
        val = path.with_name("val.txt")
        warnings.warn(f"no test list {path}; using the val list {val} for split 'test'",
                      stacklevel=3)
        path = val
    return read_ids(path), path


def find_image(root: Path, image_id: str, layout: FolderLayout = MASKS_LAYOUT) -> Path:
    """The image file of ``image_id``: the one existing file among ``layout.image_exts``."""
    base = root / layout.images / image_id
    found = [p for ext in layout.image_exts
             if (p := base.with_name(base.name + ext)).is_file()]
    if len(found) > 1:
        raise ValueError(f"ID {image_id!r} has several images: {', '.join(map(str, found))}; "
                         "keep one")
    if found:
        return found[0]
    exts = "|".join(e.lstrip(".") for e in layout.image_exts)
    hint = (" (list IDs without the extension)"
            if Path(image_id).suffix.lower() in layout.image_exts else "")
    raise ValueError(f"missing image {base}.{exts}{hint}")


def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
        return img
    except (UnidentifiedImageError, OSError, ValueError, *BOMBS) as err:
        raise ValueError(f"cannot read {path}: {err}") from None


def to_rgb(img: Image.Image, path: Path) -> np.ndarray:
    """H x W x 3 uint8 of any PIL mode: 16/32-bit grey scaled to 8 bits (PIL's own conversion
    would clip), float grey read as [0, 1], alpha dropped, palette and CMYK converted."""
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img).astype(np.float64)
        if img.mode == "F":
            arr = arr * 255.0
        elif img.mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr / 257.0
        if arr.min(initial=0) < 0 or arr.max(initial=0) > 255.5:
            raise ValueError(f"image {path}: values out of range for mode {img.mode} "
                             f"({arr.min():g}..{arr.max():g})")
        grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    with warnings.catch_warnings():  # palette transparency: the colours are what we keep
        warnings.simplefilter("ignore", UserWarning)
        return np.asarray(img.convert("RGB"))


def load_mask(path: Path, n_classes: int) -> Image.Image:
    """Open a class-index mask; check it is single-channel with values in 0..K or 255."""
    if not path.is_file():
        raise ValueError(f"missing mask {path}")
    mask = _open(path)
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask {path} must be single-channel, got mode {mask.mode}")
    if arr.dtype.kind == "f":
        raise ValueError(f"mask {path} holds floats (mode {mask.mode}); "
                         "it must hold integer class indices")
    values = np.unique(arr).astype(np.int64)
    bad = values[((values < 0) | (values > n_classes)) & (values != IGNORE)]
    if bad.size:
        raise ValueError(f"mask {path} has class index {int(bad[0])} out of range: "
                         f"{n_classes} classes are 1..{n_classes}, 0 background, 255 ignore")
    return Image.fromarray(arr.astype(np.uint8))


def load_pair(image_path: Path, mask_path: Path | None, size: int, n_classes: int):
    """One (image uint8 size x size x 3, mask uint8 size x size), checked and resized.

    ``mask_path=None``: an image without a mask; its mask is all ``IGNORE`` (255).
    """
    mask = None if mask_path is None else load_mask(mask_path, n_classes)
    img = _open(image_path)
    if mask is not None and img.size != mask.size:
        raise ValueError(f"mask {mask_path} is {mask.size[0]}x{mask.size[1]} but image "
                         f"{image_path} is {img.size[0]}x{img.size[1]}")
    img = Image.fromarray(to_rgb(img, image_path))
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
        if mask is not None:
            mask = mask.resize((size, size), Image.Resampling.NEAREST)
    if mask is None:
        return np.asarray(img), np.full((size, size), IGNORE, dtype=np.uint8)
    return np.asarray(img), np.asarray(mask)


def load_pairs(pairs: list[tuple[Path, Path | None]], size: int,
               n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N x size x size x 3) and masks (N x size x size) of (image, mask) file pairs,
    read by a few threads (decoding releases the GIL); the first bad file in list order raises."""
    images = np.empty((len(pairs), size, size, 3), dtype=np.uint8)
    masks = np.empty((len(pairs), size, size), dtype=np.uint8)

    def load(j: int) -> None:
        images[j], masks[j] = load_pair(*pairs[j], size, n_classes)

    workers = min(8, os.cpu_count() or 1, max(1, len(pairs)))
    with refuse_bombs():  # over the pixel limit: an error naming the file (images.opened)
        if workers == 1:
            for j in range(len(pairs)):
                load(j)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(load, range(len(pairs))))
    return images, masks


def load_folder(root: Path, split: str, size: int, n: int | None, classes: list[str],
                layout: FolderLayout = MASKS_LAYOUT) -> tuple[np.ndarray, np.ndarray]:
    """Images (N x size x size x 3) and masks (N x size x size) of a split's first ``n`` IDs."""
    ids, _ = read_split(root, split, layout)
    ids = ids[:n] if n is not None else ids
    pairs = [(find_image(root, i, layout), root / layout.masks / f"{i}.png") for i in ids]
    return load_pairs(pairs, size, len(classes))


def find_voc_root(path: Path) -> Path | None:
    """The ``VOC2012`` folder at or under ``path`` (also ``VOCdevkit``'s parent), if any: a
    folder with ``JPEGImages/`` and ``SegmentationClass/`` or ``Annotations/``."""
    for cand in (path, path / "VOC2012", path / "VOCdevkit" / "VOC2012"):
        if (cand / VOC_LAYOUT.images).is_dir() and (
                (cand / VOC_LAYOUT.masks).is_dir() or (cand / "Annotations").is_dir()):
            return cand
    return None


def folder_root(arg: str | None, fmt: str) -> Path:
    """The existing folder named by the ``PATH`` of ``fmt:PATH``."""
    if not arg:
        raise ValueError(f"dataset '{fmt}' needs a folder: '{fmt}:PATH'")
    root = Path(arg).expanduser()
    if not root.is_dir():
        raise ValueError(f"dataset folder not found: {root}")
    return root


def is_voc(root: Path) -> bool:
    """Whether ``masks:ROOT`` means a VOC folder: one is found and there is no classes.txt."""
    return find_voc_root(root) is not None and not (root / "classes.txt").is_file()
