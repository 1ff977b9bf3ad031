"""What the heatmap grids show: images with their labels and masks, the class each row
explains, and a model's maps and probabilities on them (the one place the pages run
explainers)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attribution import EXPLAINERS, upsample
from ..models import class_probabilities

__all__ = ["Heatmaps", "ReportImages", "explain_targets", "heatmaps", "maps_of",
           "pick_images"]


@dataclass
class ReportImages:
    """A few images to draw attribution maps on, with what is in them.

    ``images``: float N x 3 x H x W in [0, 1]; ``labels``: multi-hot N x K; ``masks``: int
    N x H x W with value ``c + 1`` on class ``c``'s object, 0 background, 255 void.
    """

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor

    @classmethod
    def from_dataset(cls, dataset, n: int = 4, scan: int = 200) -> "ReportImages":
        """``n`` items of a (image, labels, mask) dataset that hold an object, chosen in order
        so that each adds a class not shown yet where possible (varied rows)."""
        picked, seen, spare = [], set(), []
        for i in range(min(len(dataset), scan)):
            labels = set(torch.as_tensor(dataset[i][1]).nonzero().flatten().tolist())
            if not labels:
                continue
            if labels - seen:
                picked.append(i)
                seen |= labels
            else:
                spare.append(i)
            if len(picked) == n:
                break
        picked = (picked + spare)[:n]
        return cls.stacked([dataset[i] for i in picked])

    @classmethod
    def stacked(cls, items: list) -> "ReportImages":
        """``(image, labels, mask)`` items as one batch; a missing (``None``) mask is all void."""
        x = torch.stack([torch.as_tensor(it[0]).float() for it in items])
        labels = torch.stack([torch.as_tensor(it[1]).float() for it in items])
        masks = [it[2] if len(it) > 2 else None for it in items]
        return cls(x, labels, torch.stack([
            torch.as_tensor(m).long() if m is not None else
            torch.full(x.shape[-2:], 255, dtype=torch.long) for m in masks]))


def as_images(images) -> ReportImages:
    """A :class:`ReportImages`, or one from an ``(images, labels, masks)`` tuple."""
    if isinstance(images, ReportImages):
        return images
    x, y, m = images
    return ReportImages(torch.as_tensor(x).float(), torch.as_tensor(y).float(),
                        torch.as_tensor(m).long())


def pick_images(images, indices: list[int]) -> ReportImages:
    """The images ``indices`` (positions in loader order) from a :class:`ReportImages` or
    ``(images, labels, masks)`` tuple holding every image in loader order, a DataLoader (its
    dataset), or any dataset / callable returning ``(image, labels, mask)`` for an index."""
    if isinstance(images, tuple) and len(images) == 3 and torch.is_tensor(images[0]) \
            and images[0].dim() == 4:
        images = as_images(images)
    if isinstance(images, ReportImages):
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = images.images[idx].float()
        masks = images.masks[idx].long() if images.masks is not None else None
        return ReportImages(x, images.labels[idx].float(), masks if masks is not None else
                            torch.full((len(idx), *x.shape[-2:]), 255, dtype=torch.long))
    if isinstance(images, torch.utils.data.DataLoader):
        images = images.dataset
    get = images.__getitem__ if hasattr(images, "__getitem__") else images
    return ReportImages.stacked([get(int(i)) for i in indices])


def explain_targets(reference_logits: torch.Tensor, labels: torch.Tensor,
                    target: str) -> torch.Tensor:
    """Class per image: the reference model's top-1 ("top1"), or the ground-truth class it
    scores highest ("truth"; its top-1 when the image has no label)."""
    if target == "top1":
        return reference_logits.argmax(1)
    masked = reference_logits.masked_fill(labels <= 0, float("-inf"))
    has = (labels > 0).any(1)
    return torch.where(has, masked.argmax(1), reference_logits.argmax(1))


def maps_of(model, explainer: str, x: torch.Tensor, classes: torch.Tensor, layer,
            size) -> tuple[torch.Tensor, torch.Tensor]:
    """One map per image (the given class) upsampled to ``size``, and the model's probability
    of the class (:func:`models.class_probabilities`); the model's train / eval mode is restored
    afterwards."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        index = torch.arange(len(x), device=device)
        maps, logits = EXPLAINERS[explainer](model, x.to(device), index, classes.to(device),
                                             layer)
    finally:
        model.train(was_training)
    probs = class_probabilities(model, logits)[index, classes.to(device)]
    return upsample(maps.float(), size).cpu(), probs.cpu()


@dataclass
class Heatmaps:
    """What the results page's heatmap grids draw, computed where the models are loaded.

    ``names``: the models in column order (the first one chose the explained classes);
    ``classes``: the class explained in each image's row; ``maps`` / ``probs``:
    ``{explainer: {name: N x H x W maps / N probabilities}}``; ``skipped``: "what: why" notes
    (a checkpoint that could not be read, an unknown explainer)."""

    images: ReportImages
    names: list[str]
    classes: torch.Tensor
    target: str
    maps: dict[str, dict[str, torch.Tensor]]
    probs: dict[str, dict[str, torch.Tensor]]
    skipped: list[str]


def heatmaps(models: dict, images, explainers, target: str = "truth",
             skipped: list[str] | None = None) -> Heatmaps:
    """Every model's maps and probabilities on ``images`` (a :class:`ReportImages` or an
    ``(images, labels, masks)`` tuple) for the class :func:`explain_targets` picks with the
    first model. ``models``: name -> ``nn.Module`` in column order."""
    if target not in ("truth", "top1"):
        raise ValueError(f"target must be 'truth' or 'top1', got {target!r}")
    imgs, names, skipped = as_images(images), list(models), list(skipped or [])
    classes = torch.zeros(len(imgs.images), dtype=torch.long)
    if names:
        first = models[names[0]]
        with torch.no_grad():
            ref = first(imgs.images.to(next(first.parameters()).device)).float().cpu()
        classes = explain_targets(ref, imgs.labels, target)
    size = tuple(imgs.images.shape[-2:])
    maps, probs = {}, {}
    for e in explainers:
        if e not in EXPLAINERS:
            skipped.append(f"explainer {e}: unknown")
            continue
        maps[e], probs[e] = {}, {}
        for name in names:
            maps[e][name], probs[e][name] = maps_of(models[name], e, imgs.images, classes,
                                                    None, size)
    return Heatmaps(imgs, names, classes, target, maps, probs, skipped)
