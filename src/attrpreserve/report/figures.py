"""Matplotlib figures: PNG overlays of a map on its image, and the pages' inline figures (bar
charts, size sweeps, heatmap grids, training curves, agreement histograms). Page figures come
back as ``<img>`` tags holding the PNG (see :func:`inline`)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from matplotlib.ticker import (FuncFormatter, LogLocator, MaxNLocator,  # noqa: E402
                               NullFormatter)

from ..results_schema import SELF_AGREEMENT  # noqa: E402
from .html import png  # noqa: E402
from .words import (class_name, matching_of, matching_words, metric,  # noqa: E402
                    num, pct, recipe_groups, teacher_run)

__all__ = ["save_overlay", "save_overlays"]

MATCHING_COLOURS = {"none": "#9e9e9e", "at": "#f28e2b", "wcam": "#4e79a7"}
OTHER_COLOUR = "#76b7b2"

# agreement with the teacher first, then localisation on fixed pair sets ("SET/KEY", see
# words.metric), then the paper-comparable pointing game (each model's own predicted pairs)
PLOT_METRICS = (("mAP", "mAP"), ("spearman", "Spearman vs teacher"),
                ("topk_iou", "top-10% IoU vs teacher"),
                ("hit_given_teacher_hit", "P(hit | teacher hit)"),
                ("all/pointing_game", "pointing game, all pairs"),
                ("all/auc", "localisation AUC, all pairs"),
                ("teacher_correct/pointing_game", "pointing game, teacher-correct pairs"),
                ("pointing_game", "pointing game (paper-comparable)"))
# per-class table captions of keys the bars do not show
TABLE_METRICS = (("auc", "localisation AUC (paper-comparable)"),
                 ("pointing_game_std", "pointing game (15 px)"),
                 ("energy_pg", "energy pointing game"), ("cosine", "cosine vs teacher"),
                 ("peak_distance", "peak distance vs teacher (px)"))
SWEEP_METRICS = (("mAP", "mAP"), ("pointing_game", "pointing game (paper-comparable)"),
                 ("auc", "localisation AUC (paper-comparable)"),
                 ("spearman", "Spearman vs teacher"))


def inline(fig, alt: str, dpi: int = 90) -> str:
    """A figure as an inline ``<img>`` (base64 PNG data URI); closes the figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return png(buf.getvalue(), alt)


# --------------------------------------------------------------------------------------------
# Overlays (attrpreserve explain)
# --------------------------------------------------------------------------------------------

def draw_map(ax, att: np.ndarray) -> None:
    """Overlay one attribution map: signed maps diverging around zero, others "jet" from zero."""
    if att.min() < 0:
        bound = max(abs(att.min()), abs(att.max())) or 1.0
        ax.imshow(att, cmap="bwr", vmin=-bound, vmax=bound, alpha=0.6)
    else:
        ax.imshow(att, cmap="jet", vmin=0, vmax=att.max() or 1.0, alpha=0.5)


def _overlay_figure(image: torch.Tensor, attribution: torch.Tensor, title: str):
    """``image`` (3 x H x W in [0, 1]) beside it with ``attribution`` (H x W) overlaid; 600 x
    320 px at 100 dpi."""
    img = image.detach().float().cpu().permute(1, 2, 0).clamp(0, 1).numpy()
    att = attribution.detach().float().cpu().numpy()
    fig, axes = plt.subplots(1, 2, figsize=(6, 3.2), dpi=100)
    axes[0].imshow(img)
    axes[0].set_title("image", fontsize=9)
    axes[1].imshow(img)
    draw_map(axes[1], att)
    axes[1].set_title(title, fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return fig


def _written(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def save_overlay(image: torch.Tensor, attribution: torch.Tensor, path: str | Path,
                 title: str = "") -> Path:
    """Write ``image`` (3 x H x W in [0, 1]) beside it with ``attribution`` (H x W) overlaid.

    Signed maps use a diverging colour map centred on zero; non-negative maps use "jet" scaled
    to their maximum.
    """
    fig = _overlay_figure(image, attribution, title)
    path = _written(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_overlays(rows: list[tuple[torch.Tensor, torch.Tensor, str]], path: str | Path) -> Path:
    """One PNG of several overlays one under the other: each ``(image, attribution, title)``
    row drawn as :func:`save_overlay` draws it (e.g. several models on one image)."""
    from PIL import Image

    strips = []
    for image, attribution, title in rows:
        fig = _overlay_figure(image, attribution, title)
        fig.canvas.draw()
        strips.append(np.asarray(fig.canvas.buffer_rgba())[..., :3])
        plt.close(fig)
    sheet = np.full((sum(s.shape[0] for s in strips), max(s.shape[1] for s in strips), 3), 255,
                    dtype=np.uint8)
    top = 0
    for s in strips:
        sheet[top:top + s.shape[0], :s.shape[1]] = s
        top += s.shape[0]
    path = _written(path)
    Image.fromarray(sheet).save(path)
    return path


# --------------------------------------------------------------------------------------------
# Results page
# --------------------------------------------------------------------------------------------

def metric_bars(results: dict, explainer: str) -> str:
    """Bar charts per metric: recipes on x, naive / AT / WCAM bars, the teacher as a line."""
    teacher, groups = teacher_run(results), recipe_groups(results)
    fig, axes = plt.subplots(2, 4, figsize=(13, 5.6))
    width = 0.8 / max(len(runs) for runs in groups.values())
    for ax, (key, label) in zip(axes.flat, PLOT_METRICS):
        for gi, runs in enumerate(groups.values()):
            for ri, r in enumerate(runs):
                v = metric(r, key, explainer)
                x = gi - 0.4 + width * (ri + 0.5)
                m = matching_of(r)
                ax.bar(x, v if v is not None else 0, width * 0.92,
                       color=MATCHING_COLOURS.get(m, OTHER_COLOUR),
                       label=matching_words(m))
                ax.text(x, (v or 0) + 0.01, f"{v:.2f}" if v is not None else "n/a",
                        ha="center", va="bottom", fontsize=6.5)
        t = None if key in SELF_AGREEMENT else (metric(teacher, key, explainer) if teacher
                                               else None)
        if t is not None:
            ax.axhline(t, color="k", ls="--", lw=1.2, label="teacher")
        ax.set_title(label, fontsize=10)
        ax.set_xticks(range(len(groups)), list(groups), fontsize=8.5)
        ax.set_ylim(0, 1.08)
        ax.tick_params(axis="y", labelsize=7.5)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in axes.flat[1:]:  # the first panel may lack the teacher line of a later one
        h, lab = ax.get_legend_handles_labels()
        handles += h
        labels += lab
    unique = dict(zip(labels, handles))
    fig.legend(unique.values(), unique.keys(), loc="upper center", ncol=len(unique),
               frameon=False, fontsize=9, bbox_to_anchor=(0.5, 1.04))
    fig.tight_layout()
    return inline(fig, f"bar charts of each metric per recipe ({explainer})")


def _short(v: float) -> str:
    """Axis label for a size: 20k, 1.5M."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:g}{unit}"
    return f"{v:g}"


def sweep_curves(sweeps: list[dict], size_key: str, teacher: dict[str, float | None]) -> str:
    """Each of :data:`SWEEP_METRICS` against model size (``size_key`` of each row), one row of
    panels per recipe, one line per matching; ``teacher``: metric -> its value (dashed line)."""
    recipes = list(dict.fromkeys(s["recipe"] for s in sweeps))
    fig, axes = plt.subplots(len(recipes), len(SWEEP_METRICS), squeeze=False,
                             figsize=(13, 2.9 * len(recipes)))
    for row, recipe in zip(axes, recipes):
        points = [s for s in sweeps if s["recipe"] == recipe]
        matchings = sorted({s["matching"] for s in points},
                           key=lambda m: (m != "none", m))
        # one size for every point (nothing to plot against size): plot against strength
        x_key = size_key if len({s.get(size_key) for s in points}) > 1 else "strength"
        for ax, (key, label) in zip(row, SWEEP_METRICS):
            for m in matchings:
                pts = sorted((num(s.get(x_key)), num(s.get(key))) for s in points
                             if s["matching"] == m
                             and num(s.get(x_key)) and num(s.get(key)) is not None)
                if pts:
                    xs, ys = zip(*pts)
                    ax.plot(xs, ys, "o-", color=MATCHING_COLOURS.get(m, OTHER_COLOUR),
                            label=matching_words(m), ms=4)
            if teacher[key] is not None:
                ax.axhline(teacher[key], color="k", ls="--", lw=1, label="teacher")
            if x_key == size_key:
                ax.set_xscale("log")
                ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _short(v)))
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_title(f"{recipe}: {label}", fontsize=9.5)
            ax.set_xlabel(x_key.replace("_", " "), fontsize=8)
            ax.tick_params(labelsize=7.5)
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return inline(fig, "metrics against model size per recipe")


def heatmap_grid(imgs, names: list[str], maps: dict[str, torch.Tensor],
                 probs: dict[str, torch.Tensor], classes: torch.Tensor, class_names: list[str],
                 explainer: str, row_notes: list[str] | None = None) -> str:
    """Grid: one row per image of ``imgs`` (:class:`~.maps.ReportImages`); columns image | each
    name's map of ``classes[i]`` with its probability; the object outlined in white.
    ``row_notes``: extra text under each row's class label."""
    n, cols = len(imgs.images), 1 + len(names)
    fig, axes = plt.subplots(n, cols, squeeze=False, figsize=(1.9 * cols, 1.95 * n))
    outline = [patheffects.withStroke(linewidth=2.6, foreground="black")]
    for i in range(n):
        img = imgs.images[i].permute(1, 2, 0).clamp(0, 1).numpy()
        c = int(classes[i])
        obj = (imgs.masks[i] == c + 1).numpy().astype(float)
        for j, ax in enumerate(axes[i]):
            ax.imshow(img)
            if j:
                draw_map(ax, maps[names[j - 1]][i].numpy())
                ax.text(1, img.shape[0] - 2, f"p={float(probs[names[j - 1]][i]):.2f}",
                        fontsize=6.5, color="k", va="bottom",
                        bbox={"boxstyle": "square,pad=0.15", "fc": "white", "alpha": 0.75,
                              "lw": 0})
            if obj.any():
                cs = ax.contour(obj, levels=[0.5], colors="white", linewidths=1.2)
                for artist in getattr(cs, "collections", [cs]):
                    artist.set_path_effects(outline)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("image" if j == 0 else names[j - 1], fontsize=8.5)
        absent = not obj.any() and bool((imgs.masks[i] != 255).any())  # all void: unknown
        label = class_name(class_names, c) + ("\n(not in image)" if absent else "")
        if row_notes:
            label += "\n" + row_notes[i]
        axes[i][0].set_ylabel(label, fontsize=8.5)
    fig.tight_layout(pad=0.3, w_pad=0.2, h_pad=0.3)
    return inline(fig, f"{explainer} maps per run", dpi=100)


def training_curves(histories: dict[str, dict]) -> str:
    """One panel per checkpoint (name -> sidecar history): loss terms and val mAP per epoch
    (distillation, teachers) or best val mAP and sparsity per round (unstructured pruning)."""
    cols = min(4, len(histories))
    rows = math.ceil(len(histories) / cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(3.3 * cols, 3.0 * rows))
    for ax, (name, h) in zip(axes.flat, histories.items()):
        if h.get("epochs"):
            _plot_epochs(ax, h["epochs"])
        else:
            _plot_rounds(ax, h["rounds"])
        ax.set_title(name, fontsize=10)
    for ax in list(axes.flat)[len(histories):]:
        ax.axis("off")
    fig.tight_layout()
    return inline(fig, "training curves per checkpoint")


def _plot_epochs(ax, epochs: list[dict]) -> None:
    """Every numeric key but epoch / seconds / val_mAP is a loss term (log axis when all are
    positive); val mAP on a second axis."""
    x = [e.get("epoch", i + 1) for i, e in enumerate(epochs)]
    terms = [k for k in epochs[0] if k not in ("epoch", "seconds", "val_mAP")
             and num(epochs[0][k]) is not None]
    drawn: list[list] = []
    for k in terms:
        ys = [num(e.get(k)) for e in epochs]
        if all(v == 0 for v in ys if v is not None) or ys in drawn:
            continue  # e.g. the matching term of a naive run, or a total equal to its one term
        drawn.append(ys)
        ax.plot(x, [np.nan if v is None else v for v in ys], "o-", ms=3, label=k)
    values = [v for ys in drawn for v in ys if v is not None]
    if values and min(values) > 0 and max(values) / min(values) > 20:
        ax.set_yscale("log")  # loss terms of very different sizes (e.g. kd vs match)
    ax.set_xlabel("epoch", fontsize=8)
    ax.set_ylabel("loss", fontsize=8)
    ax.tick_params(labelsize=7)
    if any(num(e.get("val_mAP")) is not None for e in epochs):
        ax2 = ax.twinx()
        ax2.plot(x, [num(e.get("val_mAP")) or np.nan for e in epochs], "k--", lw=1.2,
                 label="val mAP")
        ax2.set_ylabel("val mAP", fontsize=8)
        ax2.tick_params(labelsize=7)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        _legend_below(ax, h1 + h2, l1 + l2)
    elif ax.lines:
        _legend_below(ax, *ax.get_legend_handles_labels())


def _legend_below(ax, handles, labels) -> None:
    """Legend under the panel, where it cannot hide a curve; integer ticks on x (epochs)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(handles, labels, fontsize=7, frameon=False, loc="upper center",
              bbox_to_anchor=(0.5, -0.22), ncol=4, handlelength=1.6, columnspacing=1.0)


def _plot_rounds(ax, rounds: list[dict]) -> None:
    x = [r.get("round", i + 1) for i, r in enumerate(rounds)]
    for key, style in (("best_val_mAP", "o-"), ("sparsity", "s--")):
        ax.plot(x, [num(r.get(key)) or np.nan for r in rounds], style, ms=3,
                label=key.replace("_", " "))
    ax.set_xlabel("pruning round", fontsize=8)
    ax.set_ylim(0, 1)
    ax.tick_params(labelsize=7)
    _legend_below(ax, *ax.get_legend_handles_labels())


# --------------------------------------------------------------------------------------------
# Audit page
# --------------------------------------------------------------------------------------------

def spearman_histograms(values: dict[str, list[float]], low: float) -> str:
    """One panel per explainer (name -> per-image mean Spearman): the histogram, the
    low-agreement threshold ``low`` and the mean marked."""
    cols = min(3, len(values))
    rows = math.ceil(len(values) / cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(4.4 * cols, 2.9 * rows))
    bins = np.linspace(-1, 1, 41)
    for ax, (e, v) in zip(axes.flat, values.items()):
        arr = np.clip(np.asarray(v, dtype=float), -1, 1)
        ax.hist(arr, bins=bins, color="#4e79a7", edgecolor="white", linewidth=0.5)
        ax.axvline(low, color="#e15759", ls="--", lw=1.2, label=f"low agreement < {low:g}")
        ax.axvline(float(arr.mean()), color="k", lw=1.2, label=f"mean {arr.mean():.3f}")
        share = float((arr < low).mean())
        ax.set_title(f"{e}: {len(arr)} images, {pct(share)} below {low:g}", fontsize=9.5)
        ax.set_xlim(-1.02, 1.02)
        ax.set_xlabel("per-image mean Spearman", fontsize=8)
        ax.set_ylabel("images", fontsize=8)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7.5)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7.5, frameon=False, loc="upper center", ncol=2,
                  bbox_to_anchor=(0.5, -0.2))
    for ax in list(axes.flat)[len(values):]:
        ax.axis("off")
    fig.tight_layout()
    return inline(fig, "histogram of per-image Spearman agreement")
