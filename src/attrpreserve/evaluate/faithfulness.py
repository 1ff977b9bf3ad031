"""Faithfulness: does a map point at what the model actually uses?

* Deletion / insertion curves and their AUC (Petsiuk et al., "RISE", BMVC 2018).
* Randomization sanity check (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

Pairs follow the explainer convention: pair ``j`` is ``(images[image_index[j]], classes[j])``
and ``maps`` is ``P x H x W`` at the images' resolution.  Results are float64 on the CPU.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .agreement import spearman, ssim

__all__ = [
    "blur_images",
    "causal_curves",
    "curve_auc",
    "deletion_auc",
    "insertion_auc",
    "faithfulness_aucs",
    "randomizable_layers",
    "randomize_model",
    "randomization_check",
    "SUBSTRATES",
    "BLUR_SIGMA",
    "BLUR_SIZE",
]

# RISE's insertion substrate: a Gaussian blur with an 11 x 11 kernel of sigma 5 px.
BLUR_SIGMA = 5.0
BLUR_SIZE = 11


def blur_images(images: torch.Tensor, sigma: float = BLUR_SIGMA,
                size: int = BLUR_SIZE) -> torch.Tensor:
    """Per-channel Gaussian blur (``size x size`` kernel, ``sigma`` px) with edge replication,
    so borders keep their colour (RISE pads with zeros, which darkens them)."""
    r = size // 2
    x = torch.arange(-r, r + 1, dtype=images.dtype, device=images.device)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    c = images.shape[1]
    out = F.pad(images, (r, r, r, r), mode="replicate")
    out = F.conv2d(out, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(out, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


SUBSTRATES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "zero": torch.zeros_like,
    "mean": lambda x: x.mean(dim=(2, 3), keepdim=True).expand_as(x),
    "blur": blur_images,
}
"""What removed pixels become: black (RISE's deletion), the image's per-channel mean, or the
blurred image (RISE's insertion start)."""

_SCORES = {
    "sigmoid": torch.sigmoid,  # multi-label models: one probability per class
    "softmax": lambda z: torch.softmax(z, dim=1),  # RISE's single-label setting
    "logit": lambda z: z,
}


def _pixel_ranks(maps: torch.Tensor) -> torch.Tensor:
    """Rank of every pixel in its map, 0 = most salient; ties go to the lower row-major index."""
    flat = maps.reshape(maps.shape[0], -1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


def _device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def causal_curves(model: nn.Module, images: torch.Tensor, image_index, classes, maps,
                  mode: str = "deletion", steps: int = 16, substrate: str | None = None,
                  score: str = "sigmoid", batch_size: int = 64) -> torch.Tensor:
    """Deletion or insertion curves (Petsiuk et al., RISE, BMVC 2018).

    Pixels are visited in decreasing order of the pair's map (ties: lower row-major index
    first).  At step ``i = 0..steps`` the first ``floor(i * H * W / steps)`` pixels (all
    channels) are changed: *deletion* replaces them in the image by the substrate
    (default ``"zero"``, RISE's black), *insertion* copies them from the image into the
    substrate (default ``"blur"``, RISE's blurred start); see :data:`SUBSTRATES`.  The curve is
    the model's ``score`` of the pair's class at each step: ``"sigmoid"`` (default, the
    probability of a multi-label model), ``"softmax"`` or ``"logit"``.

    Memory is bounded: at most ``batch_size`` perturbed images exist at once (the
    ``P * (steps + 1)`` forwards are chunked).  Runs under ``no_grad`` in eval mode (restored).

    Returns
    -------
    float64 tensor ``P x (steps + 1)`` on the CPU.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    if steps < 1 or batch_size < 1:
        raise ValueError("steps and batch_size must be >= 1")
    substrate = substrate or ("zero" if mode == "deletion" else "blur")
    if substrate not in SUBSTRATES or score not in _SCORES:
        raise ValueError(f"substrate must be one of {list(SUBSTRATES)}, score one of "
                         f"{list(_SCORES)}")
    device = _device(model)
    images = images.detach().to(device)
    n, c, h, w = images.shape
    maps = torch.as_tensor(maps).detach().to(device)
    if maps.dim() != 3 or tuple(maps.shape[1:]) != (h, w):
        raise ValueError(f"maps must be P x {h} x {w} (the images' size), got {tuple(maps.shape)}")
    image_index = torch.as_tensor(image_index, device=device).long()
    classes = torch.as_tensor(classes, device=device).long()
    p = maps.shape[0]
    ranks = _pixel_ranks(maps.to(torch.float64))
    changed_count = (torch.arange(steps + 1, device=device) * (h * w)) // steps
    base = SUBSTRATES[substrate](images)
    start, end = (images, base) if mode == "deletion" else (base, images)
    out = torch.empty(p * (steps + 1), dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for r0 in range(0, p * (steps + 1), batch_size):
                rows = torch.arange(r0, min(p * (steps + 1), r0 + batch_size), device=device)
                pair, step = rows // (steps + 1), rows % (steps + 1)
                changed = (ranks[pair] < changed_count[step][:, None]).view(-1, 1, h, w)
                img = image_index[pair]
                x = torch.where(changed, end[img], start[img])
                z = _SCORES[score](model(x).to(torch.float64))
                out[rows] = z[torch.arange(len(rows), device=device), classes[pair]]
    finally:
        model.train(was_training)
    return out.view(p, steps + 1).cpu()


def curve_auc(curves) -> torch.Tensor:
    """Area under each curve on ``x = 0, 1/steps, ..., 1`` by the trapezoidal rule (RISE's
    ``auc``: ``(sum - first / 2 - last / 2) / steps``).  float64 ``P``."""
    y = torch.as_tensor(curves).to(torch.float64)
    steps = y.shape[1] - 1
    if steps < 1:
        raise ValueError("a curve needs at least two points")
    return (y.sum(dim=1) - (y[:, 0] + y[:, -1]) / 2) / steps


def deletion_auc(model, images, image_index, classes, maps, **kwargs) -> torch.Tensor:
    """Deletion AUC (RISE): lower is better, the map's top pixels should matter most.
    Keyword arguments as in :func:`causal_curves`."""
    return curve_auc(causal_curves(model, images, image_index, classes, maps, "deletion",
                                   **kwargs))


def insertion_auc(model, images, image_index, classes, maps, **kwargs) -> torch.Tensor:
    """Insertion AUC (RISE): higher is better.  Keyword arguments as in :func:`causal_curves`."""
    return curve_auc(causal_curves(model, images, image_index, classes, maps, "insertion",
                                   **kwargs))


def faithfulness_aucs(model, images, image_index, classes, maps, steps: int = 16,
                      batch_size: int = 64, score: str = "sigmoid") -> dict[str, torch.Tensor]:
    """``{"deletion_auc", "insertion_auc"}`` per pair with RISE's substrates (zero / blur) and
    the class probability ``score`` ("sigmoid"; "softmax" for single-label models); ``steps``
    and ``batch_size`` as in :func:`causal_curves`."""
    kw = {"steps": steps, "batch_size": batch_size, "score": score}
    return {"deletion_auc": deletion_auc(model, images, image_index, classes, maps, **kw),
            "insertion_auc": insertion_auc(model, images, image_index, classes, maps, **kw)}


# --------------------------------------------------------------------------- randomization
def randomizable_layers(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters, from the output back to the input.

    "Output to input" is the reverse of registration order, which is the forward order for
    sequential models such as the VGGs here; Adebayo et al.'s cascading randomization walks
    this list from the top (logits) down.
    """
    names = [name for name, m in model.named_modules()
             if any(True for _ in m.parameters(recurse=False))]
    return names[::-1]


def _reinit(module: nn.Module) -> None:
    """Re-draw a module's parameters with its own initialiser (``reset_parameters``, which also
    resets BatchNorm's running statistics); otherwise each parameter is re-drawn from a normal
    with the parameter's original standard deviation (0.01 if that is zero)."""
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
        return
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            std = float(p.float().std()) if p.numel() > 1 else 0.0
            p.normal_(0.0, std if std > 0 and math.isfinite(std) else 0.01)


def randomize_model(model: nn.Module, layers: list[str] | None = None, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` whose named layers (default: every layer with parameters,
    "full" randomization) are re-initialised (see :func:`randomizable_layers`), drawing from a
    generator seeded with ``seed``.  The original model is untouched."""
    out = copy.deepcopy(model)
    modules = dict(out.named_modules())
    names = randomizable_layers(out) if layers is None else list(layers)
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ValueError(f"model has no layer {unknown[0]!r}")
    device = _device(out)
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        for name in names:
            _reinit(modules[name])
    return out


def randomization_check(model: nn.Module, images: torch.Tensor, image_index, classes,
                        explainer: str = "gradcam", layer: str | None = None,
                        mode: str = "cascading", seed: int = 0) -> list[dict]:
    """Model-parameter randomization test (Adebayo et al., NeurIPS 2018).

    Explains the pairs with the original model and with randomized copies and measures how
    similar the maps stay.  ``mode``:

    * ``"cascading"``: randomize the layers from the output down, one more at each step
      (the paper's cascading randomization; one row per step);
    * ``"independent"``: one layer at a time, the others original;
    * ``"full"``: every layer at once (one row).

    Each row: ``randomized`` (layer names re-initialised), ``spearman`` and ``spearman_abs``
    (rank correlation of the maps and of their absolute values, the paper's two variants) and
    ``ssim`` (recipe of :func:`..agreement.ssim`, NaN for maps under 11 px), each the mean over
    pairs of the upsampled maps (NaN pairs, e.g. constant maps, skipped).  A map that reflects
    the model must differ: similarity near 0.
    """
    from ..attribution import EXPLAINERS, upsample

    if mode not in ("cascading", "independent", "full"):
        raise ValueError(f"mode must be cascading, independent or full, got {mode!r}")
    device = _device(model)
    images = images.to(device)
    image_index = torch.as_tensor(image_index, device=device).long()
    classes = torch.as_tensor(classes, device=device).long()
    size = tuple(images.shape[-2:])

    def explain(m):
        m.eval()
        maps, _ = EXPLAINERS[explainer](m, images, image_index, classes, layer)
        return upsample(maps, size).detach().to("cpu", torch.float64)

    original = explain(model)
    layers = randomizable_layers(model)
    if mode == "cascading":
        plan = [layers[: i + 1] for i in range(len(layers))]
    elif mode == "independent":
        plan = [[name] for name in layers]
    else:
        plan = [layers]
    rows = []
    for names in plan:
        maps = explain(randomize_model(model, names, seed))
        big = min(size) >= 11
        rows.append({
            "randomized": names,
            "spearman": _nanmean(spearman(original, maps)),
            "spearman_abs": _nanmean(spearman(original.abs(), maps.abs())),
            "ssim": _nanmean(ssim(original, maps)) if big else float("nan"),
        })
    return rows


def _nanmean(x: torch.Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if len(x) else float("nan")
