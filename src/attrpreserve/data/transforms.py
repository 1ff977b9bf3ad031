"""Named preprocessing presets: input size, input normalisation, training-time augmentation.

A preset is selected by name (``DataConfig.preprocess``, ``--preprocess NAME``) and recorded in
every checkpoint's data settings, so compression, evaluation and audits inherit it.

- ``none`` (default): images as stored, no augmentation here (the training loop's
  ``--augment`` adds its 90-degree rotations and flips; the built-in scenes use that).
- ``paper``: the paper's PASCAL VOC pipeline (its public code, ``pascal/dataset.py``): 227 px
  inputs, normalised with the VOC mean (0.4589, 0.4355, 0.4032) and std (0.2239, 0.2186,
  0.2206); training batches get a random-resized crop (area 8-100%, aspect 3/4-4/3, resized back
  to the input size) and a horizontal flip with probability 1/2, per image.

Every model of the project takes images in [0, 1]: a preset's ``mean`` / ``std`` become the
teacher's ``input_norm`` (``pipeline.train_teacher``; a forward pre-hook inside the model, kept
in its spec, so students and checkpoints normalise the same way), and report overlays, the
``explain`` command and attribution baselines keep working on plain images.

Augmentation is applied by the training loader's ``collate_fn`` (:meth:`Preprocess.collate`),
drawing from the loader's own generator, so a resumed run repeats the crops of an uninterrupted
one. Crops are taken from the in-memory image (already resized to ``size x size``), not from the
full-resolution file as torchvision's ``RandomResizedCrop`` on the JPEG would; the mask is
cropped along (nearest neighbour).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils.data import default_collate

VOC_MEAN = (0.4589, 0.4355, 0.4032)
VOC_STD = (0.2239, 0.2186, 0.2206)


@dataclass(frozen=True)
class Preprocess:
    """One preset: default input size, per-channel normalisation, training augmentation."""

    name: str
    size: int | None = None  # the preset's input size (``--size`` default when it is chosen)
    mean: tuple[float, float, float] | None = None  # the model's input normalisation
    std: tuple[float, float, float] | None = None
    crop_scale: tuple[float, float] | None = None  # random-resized-crop area range; None: off
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = False  # random horizontal flip of training images

    @property
    def augments(self) -> bool:
        return self.crop_scale is not None or self.flip

    def augment(self, images: torch.Tensor, masks: torch.Tensor | None,
                generator: torch.Generator):
        """Crop-and-resize and flip each image (and its mask) of a batch; sizes are kept."""
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        images = images.clone()
        masks = None if masks is None else masks.clone()
        size = list(images.shape[-2:])
        for i in range(len(images)):
            if self.crop_scale is not None:
                box = crop_box(*size, self.crop_scale, self.crop_ratio, generator)
                images[i] = TF.resized_crop(images[i], *box, size, antialias=True)
                if masks is not None:
                    masks[i] = TF.resized_crop(masks[i][None], *box, size,
                                               interpolation=InterpolationMode.NEAREST)[0]
            if self.flip and bool(torch.rand((), generator=generator) < 0.5):
                images[i] = images[i].flip(-1)
                if masks is not None:
                    masks[i] = masks[i].flip(-1)
        return images, masks

    def collate(self, generator: torch.Generator):
        """A ``collate_fn`` that stacks a batch, then augments it with ``generator``."""
        def collate(items):
            batch = default_collate(items)
            masks = batch[2] if len(batch) > 2 else None
            images, masks = self.augment(batch[0], masks, generator)
            return [images, batch[1], *([masks] if masks is not None else []), *batch[3:]]
        return collate


def crop_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
             generator: torch.Generator) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random crop covering ``scale`` of the area with aspect ratio
    (w / h) log-uniform in ``ratio``; torchvision's ``RandomResizedCrop.get_params`` rule (ten
    tries, then the central crop clamped to ``ratio``), drawing from ``generator``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(u[2] * (height - h + 1)), height - h)
            left = min(int(u[3] * (width - w + 1)), width - w)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


PREPROCESS: dict[str, Preprocess] = {
    "none": Preprocess("none"),
    "paper": Preprocess("paper", size=227, mean=VOC_MEAN, std=VOC_STD, crop_scale=(0.08, 1.0),
                        flip=True),
}


def get_preprocess(name: str | Preprocess | None) -> Preprocess:
    """The preset called ``name`` (``None``: ``"none"``); ``ValueError`` lists the known ones."""
    if isinstance(name, Preprocess):
        return name
    key = "none" if name is None else name
    if key not in PREPROCESS:
        raise ValueError(f"unknown preprocessing preset {name!r}; known: {', '.join(PREPROCESS)}")
    return PREPROCESS[key]
