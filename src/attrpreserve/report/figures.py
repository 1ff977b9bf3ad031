"""Matplotlib figures: PNG overlays of a map on its image, and the pages' inline figures (bar
charts, size sweeps, heatmap grids, training curves, agreement histograms). Page figures come
back as ``<img>`` tags holding the PNG (see :func:`inline`)."""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.ticker import (FuncFormatter, LogLocator, MaxNLocator,  # noqa: E402
                               NullFormatter)

from ..fileio import atomic_write  # noqa: E402
from ..results_schema import CENTER_BASELINE, SELF_AGREEMENT  # noqa: E402
from .html import png  # noqa: E402
from .words import (class_name, matching_of, matching_words, metric,  # noqa: E402
                    num, pct, recipe_groups, teacher_run)

__all__ = ["save_overlay", "save_overlays"]

MATCHING_COLOURS = {"none": "#9e9e9e", "at": "#f28e2b", "wcam": "#4e79a7"}
OTHER_COLOUR = "#76b7b2"

# the task, agreement with the teacher, then localisation on fixed pair sets ("SET/KEY", see
# words.metric), then the paper-comparable pointing game (each model's own predicted pairs);
# metric_bars draws those the results have
PLOT_METRICS = (("mAP", "mAP"), ("top1", "top-1"), ("top1_agreement", "top-1 agreement"),
                ("spearman", "Spearman vs teacher"),
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

def draw_map(ax, att: np.ndarray, signed: bool | None = None):
    """Overlay one attribution map scaled to its own maximum: diverging around zero in [-1, 1]
    of its largest magnitude when ``signed`` (default: when it has a negative value), else
    "jet" in [0, 1] of its maximum. Returns the image, for a colour bar (:func:`colour_bar`)."""
    signed = bool(att.min() < 0) if signed is None else signed
    if signed:
        bound = max(abs(att.min()), abs(att.max())) or 1.0
        return ax.imshow(att / bound, cmap="bwr", vmin=-1, vmax=1, alpha=0.6)
    return ax.imshow(att / (att.max() or 1.0), cmap="jet", vmin=0, vmax=1, alpha=0.5)


def colour_bar(fig, beside: list, signed: bool):
    """The colour bar of maps drawn by :func:`draw_map`, right of the axes ``beside`` and as
    tall as they span (the caller leaves room for it at the figure's right edge)."""
    for ax in beside:
        ax.apply_aspect()  # images shrink their axes to the picture
    boxes = [ax.get_position() for ax in beside]
    y0, y1 = min(b.y0 for b in boxes), max(b.y1 for b in boxes)
    width = fig.get_figwidth()
    cax = fig.add_axes((max(b.x1 for b in boxes) + 0.08 / width, y0, 0.12 / width, y1 - y0))
    norm = Normalize(-1, 1) if signed else Normalize(0, 1)
    bar = fig.colorbar(ScalarMappable(norm, "bwr" if signed else "jet"), cax=cax)
    bar.set_label("map / its largest |value|" if signed else "map / its maximum", fontsize=7.5)
    bar.ax.tick_params(labelsize=7)
    return bar


def wrap_label(text: str, width: int = 22) -> str:
    """A label broken into lines of at most ``width`` characters (at spaces, hyphens, ``:``
    and ``+``), so neighbouring labels do not overlap."""
    spaced = text.replace(":", ": ").replace("+", " +")
    lines = textwrap.wrap(spaced, width) or [""]
    return "\n".join(lines).replace(": ", ":").replace(" +", "+")


def _overlay_figure(image: torch.Tensor, attribution: torch.Tensor, title: str):
    """``image`` (3 x H x W in [0, 1]) beside it with ``attribution`` (H x W) overlaid and its
    colour bar; the title wrapped to the panel."""
    img = image.detach().float().cpu().permute(1, 2, 0).clamp(0, 1).numpy()
    att = attribution.detach().float().cpu().numpy()
    fig, axes = plt.subplots(1, 2, figsize=(6.8, 3.4), dpi=100)
    axes[0].imshow(img)
    axes[0].set_title("image", fontsize=9)
    axes[1].imshow(img)
    signed = bool(att.min() < 0)
    draw_map(axes[1], att, signed)
    axes[1].set_title(wrap_label(title, 44), fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.subplots_adjust(left=0.01, right=0.87, top=0.86, bottom=0.02, wspace=0.05)
    colour_bar(fig, [axes[1]], signed)
    return fig


def _pixels(fig) -> np.ndarray:
    """The figure as RGB pixels, cropped to what it draws (nothing cut off); closes it."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", pad_inches=0.08,
                facecolor="white")
    plt.close(fig)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def _written(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def save_overlay(image: torch.Tensor, attribution: torch.Tensor, path: str | Path,
                 title: str = "") -> Path:
    """Write ``image`` (3 x H x W in [0, 1]) beside it with ``attribution`` (H x W) overlaid,
    with a colour bar and the title (wrapped, never cut off).

    Signed maps use a diverging colour map centred on zero; non-negative maps use "jet" scaled
    to their maximum.
    """
    return save_overlays([(image, attribution, title)], path)


def save_overlays(rows: list[tuple[torch.Tensor, torch.Tensor, str]], path: str | Path) -> Path:
    """One PNG of several overlays one under the other: each ``(image, attribution, title)``
    row drawn as :func:`save_overlay` draws it (e.g. several models on one image)."""
    from PIL import Image

    strips = [_pixels(_overlay_figure(*row)) for row in rows]
    sheet = np.full((sum(s.shape[0] for s in strips), max(s.shape[1] for s in strips), 3), 255,
                    dtype=np.uint8)
    top = 0
    for s in strips:
        sheet[top:top + s.shape[0], :s.shape[1]] = s
        top += s.shape[0]
    path = _written(path)
    atomic_write(path, lambda tmp: Image.fromarray(sheet).save(tmp, format="PNG"))
    return path


# --------------------------------------------------------------------------------------------
# Results page
# --------------------------------------------------------------------------------------------

def plotted_metrics(results: dict, explainer: str) -> list[tuple[str, str]]:
    """The :data:`PLOT_METRICS` that some compressed run has a value of."""
    runs = [r for group in recipe_groups(results).values() for r in group]
    return [(k, w) for k, w in PLOT_METRICS
            if any(metric(r, k, explainer) is not None for r in runs)]


def metric_bars(results: dict, explainer: str) -> str:
    """Bar charts of each of :func:`plotted_metrics`: recipes on x, naive / AT / WCAM bars, the
    teacher as a dashed line and, for localisation, the centre baseline as a dotted one."""
    teacher, groups = teacher_run(results), recipe_groups(results)
    panels = plotted_metrics(results, explainer)
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(3.25 * cols, 2.8 * rows))
    width = 0.8 / max(len(runs) for runs in groups.values())
    for ax, (key, label) in zip(axes.flat, panels):
        for gi, runs in enumerate(groups.values()):
            for ri, r in enumerate(runs):
                v = metric(r, key, explainer)
                x = gi - 0.4 + width * (ri + 0.5)
                m = matching_of(r)
                ax.bar(x, v if v is not None else 0, width * 0.92,
                       color=MATCHING_COLOURS.get(m, OTHER_COLOUR),
                       label=matching_words(m))
                ax.text(x, (v or 0) + 0.01, f"{v:.2f}" if v is not None else "–",
                        ha="center", va="bottom", fontsize=6.5)
        t = None if key in SELF_AGREEMENT or key == "top1_agreement" or teacher is None \
            else metric(teacher, key, explainer)
        if t is not None:
            ax.axhline(t, color="k", ls="--", lw=1.2, label="teacher")
        c = center_baseline(results, key, explainer)
        if c is not None:
            ax.axhline(c, color="#b07aa1", ls=":", lw=1.6, label="centre baseline")
        ax.set_title(label, fontsize=10)
        ax.set_xticks(range(len(groups)), [wrap_label(g, 16) for g in groups], fontsize=8.5)
        ax.set_ylim(0, 1.08)
        ax.tick_params(axis="y", labelsize=7.5)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = [], []
    for ax in axes.flat:  # one panel may lack the teacher or centre line of another
        h, lab = ax.get_legend_handles_labels()
        handles += h
        labels += lab
    unique = dict(zip(labels, handles))
    fig.legend(unique.values(), unique.keys(), loc="upper center", ncol=len(unique),
               frameon=False, fontsize=9, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    return inline(fig, f"bar charts of each metric per recipe ({explainer})")


def center_baseline(results: dict, key: str, explainer: str) -> float | None:
    """The centre baseline of a localisation metric on a fixed pair set ("SET/KEY": the same
    pairs for every run), or ``None``."""
    if "/" not in key:
        return None
    return next((v for r in results["runs"]
                 for v in [metric(r, key + CENTER_BASELINE, explainer)] if v is not None),
                None)


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
                 explainer: str, row_notes: list[str] | None = None,
                 titles: list[str] | None = None) -> str:
    """Grid: one row per image of ``imgs`` (:class:`~.maps.ReportImages`); columns image | each
    name's map of ``classes[i]`` with its probability; the object outlined in white; one colour
    bar. ``row_notes``: extra text under each row's class label; ``titles``: the columns'
    headings (default: ``names``), wrapped to the column."""
    n, cols = len(imgs.images), 1 + len(names)
    fig, axes = plt.subplots(n, cols, squeeze=False, figsize=(1.9 * cols + 0.7, 1.95 * n))
    outline = [patheffects.withStroke(linewidth=2.6, foreground="black")]
    signed = any(bool((maps[name] < 0).any()) for name in names)
    titles = ["image"] + [wrap_label(t) for t in (titles or names)]
    for i in range(n):
        img = imgs.images[i].permute(1, 2, 0).clamp(0, 1).numpy()
        c = int(classes[i])
        obj = (imgs.masks[i] == c + 1).numpy().astype(float)
        for j, ax in enumerate(axes[i]):
            ax.imshow(img)
            if j:
                draw_map(ax, maps[names[j - 1]][i].numpy(), signed)
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
                ax.set_title(titles[j], fontsize=8.5)
        absent = not obj.any() and bool((imgs.masks[i] != 255).any())  # all void: unknown
        label = class_name(class_names, c) + ("\n(not in image)" if absent else "")
        if row_notes:
            label += "\n" + row_notes[i]
        axes[i][0].set_ylabel(label, fontsize=8.5)
    fig.tight_layout(pad=0.3, w_pad=0.2, h_pad=0.3, rect=(0, 0, 1 - 0.7 / fig.get_figwidth(), 1))
    colour_bar(fig, list(axes[:, -1]), signed)
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
