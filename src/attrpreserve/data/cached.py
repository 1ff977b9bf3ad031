"""A uint8 photo cache (``cached:FOLDER``): a folder's photos decoded once, served as batches.

``images:FOLDER`` decodes every JPEG every epoch (a few hundred photos a second per core);
``cached:FOLDER[,holdout=S][,match=GLOB]`` takes the same folders, splits and options
(``data.images``) but decodes each photo once into one uint8 tensor ``N x 3 x M x M`` with
``M = round(size / 0.875)`` (the shorter side resized to M, the center square kept: the usual
ImageNet eval resize), optionally saved to a cache file so that a rerun skips decoding. Batches
come from that tensor on the device they are trained on (:meth:`CachedPhotos.loader`, moved
there once): training batches are random ``size x size`` crops of the M-pixel photos with random
horizontal flips, drawn from the loader's CPU generator (resumable) and cut on the device with
one gather; val / test batches are the center crop (the ImageNet eval crop), on the CPU (their
consumers move the images and keep the labels with the logits they bring back). Images come out
float in [0, 1]; each model normalises its own inputs (``models.normalize``).

Unlike ``images:``' random-resized crops (area 25-100%), the crops here keep the scale (the
margin M - size is all the translation there is): the cheap augmentation a frozen-ish
pretrained model fine-tuned for a few epochs needs, and what keeps a GPU fed from memory.

Cache files live in ``$ATTRPRESERVE_CACHE`` (default ``~/.cache/attrpreserve``; ``off`` keeps
the cache in memory only), one per (folder, split, options, size, n, file list), named by a hash
of those: a changed folder gets a new file. Items keep the ``(image, labels, mask)`` shape of
``images:``: val / test masks are the photos' object boxes under the eval crop (``data.boxes``,
``FOLDER/boxes.csv`` or ``boxes=FILE``; void without boxes), training masks are void.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .. import logs
from ..fileio import atomic_write
from .boxes import VOID, box_mask, load_boxes, to_window
from .images import (BOMBS, EVAL_RESIZE, opened, refuse_bombs, resolve_class, spec_options,
                     split_folder, spread)

CACHE_ENV = "ATTRPRESERVE_CACHE"
FORMAT = 1  # bump when the stored layout or the decoding changes


def stored_side(size: int) -> int:
    """Side of the stored photos for crops of ``size``: ``round(size / 0.875)``."""
    return round(size * EVAL_RESIZE)


def cache_dir() -> Path | None:
    """Where cache files go (``$ATTRPRESERVE_CACHE``, default ``~/.cache/attrpreserve``);
    None when it is ``off``."""
    value = os.environ.get(CACHE_ENV, "")
    if value.lower() in ("off", "none", "0"):
        return None
    return Path(value).expanduser() if value else Path.home() / ".cache" / "attrpreserve"


def decode_one(path: Path, side: int) -> np.ndarray:
    """One photo as ``side x side x 3`` uint8: shorter side resized to ``side``, center square."""
    try:  # run under ``images.refuse_bombs`` (``decode``): a bomb's warning is then an error
        with Image.open(path) as img:
            img.draft("RGB", (side, side))  # JPEG: decode at a reduced scale when enough
            img = img.convert("RGB")
    except (UnidentifiedImageError, OSError, *BOMBS) as err:
        raise ValueError(f"cannot read image {path}: {err}") from None
    w, h = img.size
    c = min(w, h)
    box = ((w - c) / 2, (h - c) / 2, (w + c) / 2, (h + c) / 2)
    return np.array(img.resize((side, side), Image.Resampling.BILINEAR, box=box))


def decode(files: list[Path], side: int, workers: int | None = None,
           progress: bool = False, desc: str = "decode") -> torch.Tensor:
    """``N x 3 x side x side`` uint8 of ``files`` (:func:`decode_one`), decoded by ``workers``
    threads (PIL releases the GIL while decoding and resizing; default: the CPU count)."""
    out = torch.empty((len(files), side, side, 3), dtype=torch.uint8)
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(files), desc=desc, leave=False, disable=not logs.bars(progress), unit="img")

    def work(i: int) -> None:
        out[i] = torch.from_numpy(decode_one(files[i], side))
        bar.update(1)

    with refuse_bombs(), ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, range(len(files))))
    bar.close()
    return out.permute(0, 3, 1, 2).contiguous()


def cache_key(root: Path, split: str, options: dict, side: int, files: list[Path]) -> str:
    """A hash of what the cached tensor depends on (a changed file list changes it)."""
    what = {"root": str(root.resolve()), "split": split, "options": options, "side": side,
            "format": FORMAT, "files": [str(f.relative_to(root)) for f in files]}
    return hashlib.sha1(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def load_or_decode(files: list[Path], side: int, key: str, name: str,
                   progress: bool = True) -> tuple[torch.Tensor, dict]:
    """The cached tensor of ``key`` if its file exists, else decoded (and saved); with what
    happened: ``{"source": "file" | "decoded", "seconds", "images_per_s", "file"}``."""
    folder = cache_dir()
    path = folder / f"photos-{name}-{side}px-{len(files)}-{key}.pt" if folder else None
    t0 = time.perf_counter()
    if path is not None and path.is_file():
        try:
            images = torch.load(path, weights_only=True)
        except Exception:  # noqa: BLE001  a truncated or foreign cache file: decode again
            images = None
        if torch.is_tensor(images) and images.dtype == torch.uint8 \
                and tuple(images.shape) == (len(files), 3, side, side):
            return images, _timing("file", len(files), t0, path)
    images = decode(files, side, progress=progress, desc=f"decode {name}")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: torch.save(images, tmp))
    return images, _timing("decoded", len(files), t0, path)


def _timing(source: str, n: int, t0: float, path) -> dict:
    seconds = time.perf_counter() - t0
    return {"source": source, "seconds": seconds, "images_per_s": n / max(seconds, 1e-9),
            "file": None if path is None else str(path)}


def crop_flip(images: torch.Tensor, size: int, tops: torch.Tensor, lefts: torch.Tensor,
              flips: torch.Tensor) -> torch.Tensor:
    """``size x size`` crops of ``images`` (B x C x H x W, any dtype, any device) at
    (``tops[b]``, ``lefts[b]``), mirrored left-right where ``flips[b]``: one gather."""
    b, c = images.shape[:2]
    dev = images.device
    steps = torch.arange(size, device=dev)
    rows = tops.to(dev)[:, None] + steps  # B x S
    cols = torch.where(flips.to(dev)[:, None], size - 1 - steps, steps) + lefts.to(dev)[:, None]
    return images[torch.arange(b, device=dev)[:, None, None, None],
                  torch.arange(c, device=dev)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size x size`` of B x C x H x W (the ImageNet eval crop of the stored
    photos)."""
    top, left = (images.shape[-2] - size) // 2, (images.shape[-1] - size) // 2
    return images[..., top:top + size, left:left + size]


class _Store:
    """The uint8 tensor, shared by every view of one split, with its copies per device."""

    def __init__(self, images: torch.Tensor):
        self.images = images
        self.copies: dict[str, torch.Tensor] = {}

    def on(self, device) -> torch.Tensor:
        device = torch.device(device)
        if device.type == "cpu":
            return self.images
        key = str(device)
        if key not in self.copies:
            self.copies[key] = self.images.to(device, non_blocking=False)
        return self.copies[key]


@dataclass
class CachedPhotos(Dataset):
    """A split's photos as a uint8 cache (see the module docstring): ``(image, labels, void
    mask)`` items like ``data.images.ImageSet``, and batches by :meth:`loader`.

    ``size``: the side of the crops served; ``store.images`` are ``stored_side(size)`` pixels.
    """

    store: _Store
    files: list[Path]
    targets: list[int]
    classes: list[str]
    size: int
    train: bool = False
    name: str = ""
    timing: dict = field(default_factory=dict)
    # per photo, its boxes normalised to the stored square (``data.boxes``); None: no box file
    boxes: list | None = None
    labeled: bool = field(init=False)

    def __post_init__(self):
        self.labeled = any(t >= 0 for t in self.targets)

    @property
    def images(self) -> torch.Tensor:
        return self.store.images

    def __len__(self) -> int:
        return len(self.files)

    def label_matrix(self) -> torch.Tensor:
        """N x K one-hot labels (all-zero rows for unlabeled photos)."""
        y = torch.zeros(len(self), len(self.classes))
        rows = [i for i, t in enumerate(self.targets) if t >= 0]
        y[rows, [self.targets[i] for i in rows]] = 1.0
        return y

    def eval_mask(self, i: int) -> torch.Tensor:
        """Photo ``i``'s box mask under the center crop (void without boxes)."""
        boxes = self.boxes[i] if self.boxes else []
        if boxes:
            side = self.images.shape[-1]
            lo, hi = (side - self.size) // 2 / side, ((side - self.size) // 2 + self.size) / side
            boxes = [to_window(b, (lo, lo, hi, hi)) for b in boxes]
        return box_mask(boxes, self.targets[i], self.size)

    def __getitem__(self, i):
        """Photo ``i``: a random crop + flip (torch's global RNG) if ``train`` (void mask), else
        the center crop with its box mask; float in [0, 1]."""
        x = self.images[i:i + 1]
        void = torch.full((self.size, self.size), VOID, dtype=torch.int64)
        if self.train:
            tops, lefts = _offsets(1, x.shape[-1] - self.size, None)
            x = crop_flip(x, self.size, tops, lefts, torch.rand(1) < 0.5)
        else:
            x = center_crop(x, self.size)
        y = torch.zeros(len(self.classes))
        if self.targets[i] >= 0:
            y[self.targets[i]] = 1.0
        return x[0].float().div_(255), y, void if self.train else self.eval_mask(i)

    def subset(self, keep: list[int]) -> "CachedPhotos":
        """The photos ``keep`` (indices, in that order), their tensor copied out."""
        index = torch.as_tensor(keep, dtype=torch.long)
        pick = lambda xs: None if xs is None else [xs[i] for i in keep]  # noqa: E731
        return replace(self, store=_Store(self.store.images[index]), files=pick(self.files),
                       targets=pick(self.targets), boxes=pick(self.boxes))

    def with_classes(self, classes) -> "CachedPhotos":
        """The same photos (the tensor shared) labeled in ``classes`` (each class folder a name,
        index or ImageNet wnid of one of them: ``images.resolve_class``)."""
        index = [resolve_class(c, classes) for c in self.classes]
        return replace(self, targets=[index[t] if t >= 0 else -1 for t in self.targets],
                       classes=list(classes))

    def describe(self) -> dict:
        return {"name": self.name, "n": len(self), "image_size": [self.size, self.size],
                "stored_size": list(self.images.shape[-2:]), "labeled": self.labeled,
                "classes": len(self.classes), "cache": dict(self.timing)}

    def loader(self, batch_size: int, shuffle: bool = False,
               generator: torch.Generator | None = None, device="cpu") -> "CachedLoader":
        """Batches; a training split's on ``device``, augmented there (:class:`CachedLoader`)."""
        return CachedLoader(self, batch_size, shuffle, generator or torch.Generator(), device)


def _offsets(n: int, margin: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crop offsets in [0, margin] (rows, columns) of ``n`` photos."""
    return tuple(torch.randint(0, margin + 1, (2, n), generator=generator))


class CachedLoader:
    """Batches ``(images float B x 3 x S x S, labels B x K, masks B x S x S)`` of a
    :class:`CachedPhotos`; a training split's on ``device`` (the uint8 tensor moved there once),
    val / test ones on the CPU. The order (shuffled with ``generator``), crop offsets and flips
    are drawn on the CPU from ``generator`` (so a resumed run repeats them); the crop and the
    conversion run where the batch goes. Has what the training loop reads of a DataLoader:
    ``dataset``, ``generator``, ``batch_size``, ``len``."""

    def __init__(self, dataset: CachedPhotos, batch_size: int, shuffle: bool,
                 generator: torch.Generator, device="cpu"):
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.generator, self.device = generator, torch.device(device)

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self):
        ds, n, size = self.dataset, len(self.dataset), self.dataset.size
        # training batches on the device; val / test ones on the CPU, where their consumers
        # (validation, the evaluator) keep labels next to the logits they bring back
        device = self.device if ds.train else torch.device("cpu")
        images = ds.store.on(device)
        labels = ds.label_matrix().to(device)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        void = torch.full((1, size, size), VOID, dtype=torch.int64, device=device)
        for lo in range(0, n, self.batch_size):
            idx = order[lo:lo + self.batch_size].to(device)
            if ds.train:
                tops, lefts = _offsets(len(idx), images.shape[-1] - size, self.generator)
                flips = torch.rand(len(idx), generator=self.generator) < 0.5
                x = crop_flip(images[idx], size, tops, lefts, flips)
                masks = void.expand(len(idx), size, size)
            else:
                x = center_crop(images[idx], size)
                masks = torch.stack([ds.eval_mask(int(i)) for i in idx]) if ds.boxes else \
                    void.expand(len(idx), size, size)
            yield x.float().div_(255), labels[idx], masks


def build_cached(arg: str | None, split: str, size: int, n: int | None,
                 progress: bool = True) -> CachedPhotos:
    """The ``cached:FOLDER[,holdout=S][,match=GLOB][,boxes=FILE]`` builder: ``images:``' split of
    the folder (``n`` photos spread evenly), decoded once (or read from its cache file), with
    the boxes of its photos in the stored square's coordinates."""
    root, options = spec_options(arg, "cached", known=("holdout", "match", "boxes"))
    files, targets, classes = split_folder(root, split, options.get("holdout"),
                                           options.get("match"))
    if n is not None:
        keep = spread(len(files), n)
        files, targets = [files[i] for i in keep], [targets[i] for i in keep]
    side = stored_side(size)
    key = cache_key(root, split, {k: v for k, v in options.items() if k != "boxes"}, side, files)
    images, timing = load_or_decode(files, side, key, f"{root.name}-{split}", progress)
    return CachedPhotos(_Store(images), files, targets, classes, size, split == "train",
                        f"cached:{root.name}/{split}", timing, square_boxes(root, options, files))


def square_boxes(root: Path, options: dict, files: list[Path]) -> list | None:
    """The files' boxes (``data.boxes``) in the coordinates of the center square they are
    stored as (each boxed photo's header read for its size); None without a box file."""
    boxes = load_boxes(root, options.get("boxes"), files)
    if boxes is None:
        return None
    out = []
    for f, bs in zip(files, boxes):
        if bs:
            with opened(f) as img:
                w, h = img.size
            c = min(w, h)
            bs = [to_window(b, ((w - c) / 2 / w, (h - c) / 2 / h, (w + c) / 2 / w,
                                (h + c) / 2 / h)) for b in bs]
        out.append(bs)
    return out
