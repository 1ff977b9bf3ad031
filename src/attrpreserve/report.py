"""Figures: attribution maps drawn over their image (PNG), for people to look at."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def save_overlay(image: torch.Tensor, attribution: torch.Tensor, path: str | Path,
                 title: str = "") -> Path:
    """Write ``image`` (3 x H x W in [0, 1]) beside it with ``attribution`` (H x W) overlaid.

    Signed maps use a diverging colour map centred on zero; non-negative maps use "jet" scaled
    to their maximum.
    """
    img = image.detach().float().cpu().permute(1, 2, 0).clamp(0, 1).numpy()
    att = attribution.detach().float().cpu().numpy()
    fig, axes = plt.subplots(1, 2, figsize=(6, 3.2))
    axes[0].imshow(img)
    axes[0].set_title("image", fontsize=9)
    axes[1].imshow(img)
    if att.min() < 0:
        bound = max(abs(att.min()), abs(att.max())) or 1.0
        axes[1].imshow(att, cmap="bwr", vmin=-bound, vmax=bound, alpha=0.6)
    else:
        axes[1].imshow(att, cmap="jet", vmin=0, vmax=att.max() or 1.0, alpha=0.5)
    axes[1].set_title(title, fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
