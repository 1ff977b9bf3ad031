"""Black-box explainers (occlusion, RISE), batched over (image, class) pairs.

Both only call ``model(x)`` under ``torch.no_grad``: they work on models without autograd
(converted int8 models, modules whose parameters do not require grad, forward passes wrapped
in ``no_grad``). Call shape as every explainer: ``f(model, images, image_index, classes,
layer=None, **options) -> (maps P x H x W, logits B x K)``; ``layer`` is ignored.

Batching: the perturbed copies of an image do not depend on the class, so every image that
appears in a pair is perturbed once and one set of forward passes serves all of its pairs; the
rows of all images go through the model in chunks of ``batch_size``. The model must be in eval
mode (rows must not interact).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn

SCORES = ("logit", "sigmoid", "softmax")
# Pixels of perturbed images per forward pass by default: 256 images at 64 px, 20 at 224 px
# (256 at 224 px held ~12 GB of a fake-quant EfficientNet-Lite0's activations).
BATCH_PIXELS = 256 * 64 * 64


def _pair_sums(model: nn.Module, images: torch.Tensor, image_index: torch.Tensor,
               classes: torch.Tensor, mask_blocks: Iterable[torch.Tensor],
               perturb: Callable, weigh: Callable, batch_size: int | None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``sum_m weigh(scores_m)[pair] * mask_m`` for every pair (P x H x W), with the sums of the
    weights (P) and of the masks (H x W).

    ``mask_blocks`` yields n_b x H x W masks; ``perturb(x, masks)`` builds the perturbed inputs
    (rows x C x H x W) of images ``x`` (rows x C x H x W) under ``masks`` (rows x H x W);
    ``weigh(scores, rows_image)`` maps model outputs (rows x K) to per-class weights;
    ``batch_size`` rows go through the model at once (None: ``BATCH_PIXELS`` worth).
    """
    h, w = images.shape[-2:]
    batch_size = batch_size or max(1, BATCH_PIXELS // (h * w))
    maps = images.new_zeros((len(classes), h * w))
    weight_sums = images.new_zeros(len(classes))
    mask_sum = images.new_zeros(h * w)
    used, pair_of = torch.unique(image_index, return_inverse=True)
    for masks in mask_blocks:
        n = len(masks)
        flat = masks.flatten(1).to(maps.dtype)
        mask_sum += flat.sum(0)
        if len(classes) == 0:
            continue
        weights = []
        for start in range(0, len(used) * n, batch_size):
            rows = torch.arange(start, min(start + batch_size, len(used) * n),
                                device=images.device)
            img, msk = used[rows // n], rows % n
            out = model(perturb(images[img], masks[msk]))
            weights.append(weigh(out.float(), img))
        weights = torch.cat(weights).view(len(used), n, -1)       # U x n x K
        per_pair = weights[pair_of, :, classes].to(maps.dtype)    # P x n
        maps += per_pair @ flat
        weight_sums += per_pair.sum(1)
    return maps.view(-1, h, w), weight_sums, mask_sum.view(h, w)


def window_masks(height: int, width: int, window: int, stride: int,
                 device=None) -> torch.Tensor:
    """Occlusion windows (n x H x W, 1 inside): positions ``0, s, 2s, ...`` per axis, the last one
    cropped at the border -- ``ceil((H - k) / s) + 1`` per axis, as captum's Occlusion."""
    if window > min(height, width):
        raise ValueError(f"window {window} is larger than the image ({height} x {width})")
    if stride < 1 or stride > window:
        raise ValueError(f"stride must be in [1, window], got {stride}")
    ys = [i * stride for i in range(math.ceil((height - window) / stride) + 1)]
    xs = [i * stride for i in range(math.ceil((width - window) / stride) + 1)]
    masks = torch.zeros(len(ys) * len(xs), height, width, device=device)
    for n, (y, x) in enumerate((y, x) for y in ys for x in xs):
        masks[n, y:y + window, x:x + window] = 1
    return masks


def occlusion(model: nn.Module, images: torch.Tensor, image_index: torch.Tensor,
              classes: torch.Tensor, layer: str | None = None, window: int | None = None,
              stride: int | None = None, baseline: float = 0.0, batch_size: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Occlusion (Zeiler & Fergus 2014): the drop of the pair's logit when a square window is
    replaced by ``baseline``, averaged over the windows covering each pixel.

    ``window`` defaults to an eighth of the shorter image side (8 px at 64 px, at least 1) and
    ``stride`` to half the window; the window spans every colour channel. Equals captum's
    ``Occlusion(model).attribute(x, sliding_window_shapes=(C, k, k), strides=(C, s, s),
    baselines=baseline, target=c)`` of any channel. Returns ``(maps P x H x W, logits B x K)``.
    """
    h, w = images.shape[-2:]
    window = window or max(1, min(h, w) // 8)
    stride = stride or max(1, window // 2)
    with torch.no_grad():
        logits = model(images).float()
        masks = window_masks(h, w, window, stride, images.device).to(images.dtype)

        def perturb(x, m):
            m = m[:, None]
            return x * (1 - m) + baseline * m

        def weigh(out, img):
            return logits[img] - out

        maps, _, counts = _pair_sums(model, images, image_index, classes, [masks], perturb,
                                     weigh, batch_size)
        maps = maps / counts
    return maps, logits


def rise_masks(n: int, grid: int, p: float, size: tuple[int, int], seed: int,
               block: int = 256, device=None) -> Iterable[torch.Tensor]:
    """RISE masks in blocks of ``block`` (each n_b x H x W), the same for a given seed.

    Each mask: a ``grid x grid`` binary grid (cells on with probability ``p``), bilinearly
    upsampled to ``(grid + 1) x cell`` pixels (``cell = ceil(side / grid)``) and cropped at a
    random shift in ``[0, cell)`` per axis (Petsiuk et al. 2018). All random numbers are drawn
    up front from a CPU generator, so the masks do not depend on ``block`` or the device.
    """
    h, w = size
    gen = torch.Generator().manual_seed(int(seed))
    cells = torch.rand(n, grid, grid, generator=gen) < p
    ch, cw = math.ceil(h / grid), math.ceil(w / grid)
    dy = torch.randint(0, ch, (n,), generator=gen)
    dx = torch.randint(0, cw, (n,), generator=gen)
    for start in range(0, n, block):
        up = torch.nn.functional.interpolate(
            cells[start:start + block, None].float(), size=((grid + 1) * ch, (grid + 1) * cw),
            mode="bilinear", align_corners=False)[:, 0].clamp(0, 1)
        yield torch.stack([up[i, y:y + h, x:x + w] for i, (y, x) in
                           enumerate(zip(dy[start:start + block].tolist(),
                                         dx[start:start + block].tolist()))]).to(device)


def rise(model: nn.Module, images: torch.Tensor, image_index: torch.Tensor,
         classes: torch.Tensor, layer: str | None = None, n_masks: int = 2000, grid: int = 8,
         p: float = 0.5, seed: int = 0, score: str = "sigmoid", center: bool = True,
         batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """RISE (Petsiuk, Das & Saenko 2018): ``sum_i (s_i - center * mean(s)) M_i / (N p)``, with
    ``s_i`` the pair's class score on the masked image ``x * M_i``.

    Defaults: ``n_masks=2000`` random masks on an ``8 x 8`` grid (cells of 8 px at 64 px),
    ``p=0.5``, ``seed=0`` (the paper used 4000 masks on a 7 x 7 grid at 224 px). The same masks
    serve every image, so the maps are deterministic and a pair's map does not depend on the
    other pairs of the batch. ``score``: "sigmoid" (default; the class probability of the
    multi-label models here), "softmax" (single-label probability) or "logit".
    ``center`` (default True) subtracts the mean score over the masks, a control variate: the
    map changes by ``mean(s) * sum_i M_i / (N p)``, in expectation the same constant at every
    pixel, but the noise of uneven mask coverage ``sum_i M_i`` goes away; without it that noise
    swamps the signal when the score has a large constant part (a sigmoid near 0.5 varies
    little). ``center=False`` is the paper's estimator.
    Returns ``(maps P x H x W, logits B x K)``.
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    h, w = images.shape[-2:]
    with torch.no_grad():
        logits = model(images).float()
        blocks = rise_masks(n_masks, grid, p, (h, w), seed, device=images.device)

        def perturb(x, m):
            return x * m[:, None].to(x.dtype)

        def weigh(out, img):
            if score == "sigmoid":
                return torch.sigmoid(out)
            return torch.softmax(out, dim=1) if score == "softmax" else out

        maps, weight_sums, coverage = _pair_sums(model, images, image_index, classes, blocks,
                                                 perturb, weigh, batch_size)
        if center:
            maps = maps - (weight_sums / n_masks)[:, None, None] * coverage
    return maps / (n_masks * p), logits
