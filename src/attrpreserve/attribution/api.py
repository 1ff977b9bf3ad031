"""The top-level Python API: ``attrpreserve.explain(model, images, targets, method=...)``.

>>> maps = explain(model, images, targets=[3, 0])    # Grad-CAM, one class per image, any CNN
>>> maps = explain(model, images, targets=[3, 0], method="rap")
>>> maps = explain(model, images, targets=[[0, 2], [1]], method="gradcam",
...                resolution="layer")                                    # pairs, layer maps
>>> maps = explain(model, images, targets=labels.bool(), method="rise", n_masks=500)
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

import torch
from torch import nn

from ..models.layers import eval_mode, model_device
from .explainers import EXPLAINERS, check_applicable
from .gradcam import upsample

RESOLUTIONS = ("input", "layer")


def _as_class(value) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
        raise ValueError(f"a target class must be a non-negative int, got {value!r}")
    return int(value)


def pairs_from_targets(targets, n_images: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image_index, classes)`` (LongTensors, P each) of the (image, class) pairs in ``targets``.

    Accepted forms, pairs listed image by image in the given order:

    * an ``int``: that class for every image (P = B);
    * a 1-D integer tensor or a sequence of B ints: one class per image (P = B);
    * a sequence of B sequences of ints: those classes for each image (any number, even none);
    * a 2-D bool tensor B x K (or a 0/1 float tensor, e.g. multi-hot labels): every
      (image, class) where it is true, classes ascending.

    A 2-D integer tensor is ambiguous (indices or multi-hot?) and raises ValueError: pass
    ``t.tolist()`` for per-image class lists or ``t.bool()`` for a multi-hot mask.
    """
    if not isinstance(targets, (torch.Tensor, Sequence, Integral)) and hasattr(targets,
                                                                             "__array__"):
        targets = torch.as_tensor(targets)  # a NumPy array
    if isinstance(targets, torch.Tensor):
        if targets.dim() == 0:
            return pairs_from_targets(_as_class(targets), n_images, device)
        if targets.dim() == 2:
            return _multi_hot_pairs(targets, n_images, device)
        if targets.dim() != 1 or targets.is_floating_point() or targets.dtype == torch.bool:
            raise ValueError("a 1-D target tensor must hold one integer class per image")
        targets = targets.tolist()
    if isinstance(targets, Integral) and not isinstance(targets, bool):
        targets = [targets] * n_images
    if not isinstance(targets, Sequence) or len(targets) != n_images:
        raise ValueError(f"targets must give classes for each of the {n_images} images "
                         "(an int, B ints, B lists of ints, or a B x K bool mask)")
    index, classes = [], []
    for i, t in enumerate(targets):
        many = isinstance(t, Sequence) or (isinstance(t, torch.Tensor) and t.dim() > 0)
        per_image = list(t) if many else [t]
        index += [i] * len(per_image)
        classes += [_as_class(c) for c in per_image]
    as_long = dict(dtype=torch.long, device=device)
    return torch.tensor(index, **as_long), torch.tensor(classes, **as_long)


def _multi_hot_pairs(mask: torch.Tensor, n_images: int, device) -> tuple:
    """Pairs of a B x K multi-hot mask (bool, or float with values 0 / 1)."""
    if len(mask) != n_images:
        raise ValueError(f"a target mask needs one row per image ({n_images}), got {len(mask)}")
    if mask.dtype != torch.bool:
        if not mask.is_floating_point() or not ((mask == 0) | (mask == 1)).all():
            raise ValueError("a 2-D target tensor must be a bool (or 0/1 float) multi-hot mask; "
                             "pass t.tolist() for per-image lists of class indices")
        mask = mask != 0
    index, classes = mask.nonzero(as_tuple=True)
    return index.to(device), classes.to(device)


def explain(model: nn.Module, images: torch.Tensor, targets, method: str = "gradcam",
            layer: str | None = None, resolution: str = "input", **options) -> torch.Tensor:
    """Attribution maps of ``model`` for (image, class) pairs, batched.

    Parameters
    ----------
    model : the classifier (logits B x K). Run in eval mode; every module's mode is restored.
    images : B x C x H x W (or one C x H x W image), moved to the model's device.
    targets : which classes to explain, see ``pairs_from_targets`` (an int, one class per
        image, per-image lists of classes, or a B x K bool mask).
    method : a registered explainer (``attrpreserve.attribution.EXPLAINERS``): "gradcam"
        (default), "gradient", "input_x_gradient", "ig", "lrp", "lrp_a1b0", "ebp", "rap", "occlusion",
        "rise".
    layer : the layer of CAM-type methods ("gradcam"; default: the output of the model's last
        feature block, e.g. ``layer4`` of a ResNet, see ``models.default_layer``). Ignored by the
        other methods.
    resolution : "input" (default; CAM maps are bilinearly upsampled to H x W) or "layer"
        (CAM-type methods only: the maps at the layer's resolution).
    **options : passed to the explainer (e.g. ``steps`` for "ig", ``composite`` for "lrp",
        ``n_masks`` for "rise", ``window`` for "occlusion").

    Returns
    -------
    maps : P x H x W (or P x h x w at layer resolution), one map per pair in the order of
        ``pairs_from_targets``, detached, on the model's device.
    """
    EXPLAINERS.check(method)
    check_applicable(model, [method])
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    at_layer = EXPLAINERS.meta(method)["resolution"] == "layer"
    if resolution == "layer" and not at_layer:
        raise ValueError(f"resolution='layer' needs a CAM-type method "
                         f"({', '.join(EXPLAINERS.names(resolution='layer'))}); {method!r} "
                         f"explains the input")
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4:
        raise ValueError(f"images must be B x C x H x W, got shape {tuple(images.shape)}")
    device = model_device(model, images.device)
    images = images.to(device)
    image_index, classes = pairs_from_targets(targets, len(images), device)
    with eval_mode(model):
        maps, _ = EXPLAINERS[method](model, images, image_index, classes,
                                     layer if at_layer else None, **options)
    if resolution == "input":
        maps = upsample(maps, tuple(images.shape[-2:]))
    return maps.detach()
