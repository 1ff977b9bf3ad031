"""Figures for people to look at: PNG overlays, and a self-contained HTML report of a results file.

``write_report(results, "report.html", checkpoints, images)`` turns a results.json document
(``pipeline.evaluate``) into one HTML file that opens offline: every image is an inline base64
PNG, the CSS is inline, there is no script and no external URL. It answers, in plain sentences
first, whether compression moved the explanations and how much of that each attribution-matched
run won back, then shows the tables, plots, heatmaps, training curves and configuration behind it.

``write_audit_report(audit_result, "audit.html", model_a, model_b, dataset)`` does the same for
an :func:`attrpreserve.evaluate.audit` result: how far did B's explanations move from A's, with
CIs, hidden disagreement, per-image and per-class numbers and an "explanation forgotten" gallery.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from matplotlib.ticker import (FuncFormatter, LogLocator, MaxNLocator,  # noqa: E402
                               NullFormatter)
import numpy as np  # noqa: E402
import torch  # noqa: E402

__all__ = ["ReportImages", "audit_headline", "gap_closed", "headline", "recipe_groups",
           "save_overlay", "write_audit_report", "write_report"]


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
    _draw_map(axes[1], att)
    axes[1].set_title(title, fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _draw_map(ax, att: np.ndarray) -> None:
    """Overlay one attribution map: signed maps diverging around zero, others "jet" from zero."""
    if att.min() < 0:
        bound = max(abs(att.min()), abs(att.max())) or 1.0
        ax.imshow(att, cmap="bwr", vmin=-bound, vmax=bound, alpha=0.6)
    else:
        ax.imshow(att, cmap="jet", vmin=0, vmax=att.max() or 1.0, alpha=0.5)


# --------------------------------------------------------------------------------------------
# Reading a results document
# --------------------------------------------------------------------------------------------

NO_GAP = 0.02  # a naive run within this of the teacher has "no gap to close"

# Key metrics of the headline: (key, words). All are higher-is-better.
HEADLINE_METRICS = (("pointing_game", "pointing game"), ("auc", "localisation AUC"),
                    ("spearman", "Spearman agreement"))

# Agreement metrics compare a run's maps with the teacher's: the teacher itself scores 1.
SELF_AGREEMENT = {"spearman": 1.0, "topk_iou": 1.0, "cosine": 1.0, "argmax_agree": 1.0}

RECIPE_WORDS = {"kd": "distillation", "structured": "structured pruning",
                "unstructured": "unstructured pruning", "quantization": "quantization"}
MATCHING_WORDS = {"none": "naive", "at": "AT", "wcam": "WCAM"}
MATCHING_ORDER = {"none": 0, "at": 1, "wcam": 2}
MATCHING_COLOURS = {"none": "#9e9e9e", "at": "#f28e2b", "wcam": "#4e79a7"}


def metric(run: dict, key: str, explainer: str = "gradcam"):
    """One number of a run: a task metric (mAP, F1), an attribution or an agreement metric, a
    cost; ``None`` when the run does not have it."""
    if key in ("mAP", "F1"):
        return _num((run.get("task") or {}).get(key))
    if key in ("params", "nonzero_params", "macs", "bytes", "latency_ms"):
        return _num((run.get("cost") or {}).get(key))
    att = (run.get("attribution") or {}).get(explainer) or {}
    if key in att and not isinstance(att[key], dict):
        return _num(att[key])
    return _num((att.get("agreement") or {}).get(key))


def _num(v):
    """``v`` as a finite float (or int), else ``None`` (JSON nulls, NaN, strings)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return v if math.isfinite(v) else None


def _matching(run: dict) -> str:
    return str((run.get("compression") or {}).get("matching") or "none")


def _method(run: dict) -> str:
    return str((run.get("compression") or {}).get("method") or "none")


def teacher_run(results: dict) -> dict | None:
    """The reference run: role "teacher", else the uncompressed one (method "none")."""
    runs = results.get("runs", [])
    return (next((r for r in runs if r.get("role") == "teacher"), None)
            or next((r for r in runs if _method(r) == "none"), None))


def recipe_groups(results: dict) -> dict[str, list[dict]]:
    """Compressed runs grouped by recipe, naive (matching "none") run first in each group.

    A recipe is the run name before "+" ("kd+wcam" -> "kd", "structured-50+at" ->
    "structured-50"); a matched run without "+" in its name joins its compression method's group.
    Order: groups as they first appear; within one, naive, AT, WCAM, then other matchings.
    """
    teacher = teacher_run(results)
    groups: dict[str, list[dict]] = {}
    for run in results.get("runs", []):
        if run is teacher:
            continue
        name = str(run.get("name", "?"))
        if "+" in name:
            key = name.split("+", 1)[0]
        else:
            key = name if _matching(run) == "none" else _method(run)
        groups.setdefault(key, []).append(run)
    for runs in groups.values():
        runs.sort(key=lambda r: MATCHING_ORDER.get(_matching(r), 3))
    return groups


def gap_closed(teacher: float | None, naive: float | None, matched: float | None,
               tol: float = NO_GAP) -> float | None:
    """Share of the naive run's gap to the teacher that the matched run wins back.

    ``(matched - naive) / (teacher - naive)`` for higher-is-better metrics: 1 = back at the
    teacher, 0 = no better than naive, > 1 = beyond the teacher, < 0 = worse than naive. ``None``
    when a value is missing or the naive run is within ``tol`` of (or above) the teacher.
    """
    if teacher is None or naive is None or matched is None or teacher - naive <= tol:
        return None
    return (matched - naive) / (teacher - naive)


def _reference(teacher: dict | None, key: str, explainer: str):
    """The teacher's value of ``key`` (1 for agreement metrics: its maps match themselves)."""
    if key in SELF_AGREEMENT:
        return SELF_AGREEMENT[key]
    return metric(teacher, key, explainer) if teacher else None


def _naive(runs: list[dict]) -> dict | None:
    return next((r for r in runs if _matching(r) == "none"), None)


def _recipe_words(method: str) -> str:
    return RECIPE_WORDS.get(method, method)


def _matching_words(run: dict) -> str:
    m = _matching(run)
    return MATCHING_WORDS.get(m, m.upper())


def _explainers(results: dict) -> list[str]:
    """Explainers that any run reports, in first-seen order."""
    seen: list[str] = []
    for run in results.get("runs", []):
        for e in run.get("attribution") or {}:
            if e not in seen:
                seen.append(e)
    return seen


def _pct(share: float) -> str:
    return f"{100 * share:.0f}%"


def headline(results: dict, explainer: str = "gradcam") -> list[dict]:
    """Plain-sentence answers per recipe: did compression move the explanations, and did
    matching bring them back? Returns ``[{recipe, summary, sentences: [str]}]`` (plain text)."""
    teacher = teacher_run(results)
    out = []
    for recipe, runs in recipe_groups(results).items():
        naive = _naive(runs)
        matched = [r for r in runs if r is not naive]
        method = _method(runs[0])
        sentences = [_metric_sentence(teacher, naive, matched, key, words, method, explainer)
                     for key, words in HEADLINE_METRICS]
        out.append({"recipe": recipe, "summary": _summary(teacher, naive, matched, explainer,
                                                          method),
                    "sentences": [s for s in sentences if s]})
    return out


def _summary(teacher, naive, matched, explainer, method) -> str:
    """One line per recipe: moved or not (by the key metrics), and the best matching."""
    what = _recipe_words(method)
    if teacher is None:
        return f"{what.capitalize()}: no teacher run to compare with."
    if naive is None:
        return (f"{what.capitalize()}: no naive run, so the effect of matching cannot be "
                f"separated from compression itself.")
    gaps = {k: (_reference(teacher, k, explainer), metric(naive, k, explainer))
            for k, _ in HEADLINE_METRICS}
    moved = [w for k, w in HEADLINE_METRICS
             if None not in gaps[k] and gaps[k][0] - gaps[k][1] > NO_GAP]
    if not moved:
        if all(None in v for v in gaps.values()):
            return f"Naive {what}: no {explainer} metrics to judge by."
        return f"Naive {what} did not move the {explainer} explanations (all key metrics " \
               f"within {NO_GAP} of the teacher)."
    text = f"Naive {what} moved the {explainer} explanations ({', '.join(moved)} dropped)."
    shares = [(gap_closed(*gaps["pointing_game"], metric(r, "pointing_game", explainer)), r)
              for r in matched]
    shares = [(s, r) for s, r in shares if s is not None]
    if shares:
        s, r = max(shares, key=lambda sr: sr[0])
        text += (f" Best at bringing them back: {_matching_words(r)} ({r.get('name')}), "
                 f"{_pct(s)} of the pointing-game gap closed.")
    return text


def _metric_sentence(teacher, naive, matched, key, words, method, explainer) -> str | None:
    """E.g. "Naive distillation (kd) lost 0.313 pointing game (teacher 0.416, kd 0.103); WCAM
    (kd+wcam) won back 73% of it (mAP 0.489 vs 0.384)."""
    t = _reference(teacher, key, explainer)
    if naive is None:
        if teacher is None:
            return None
        parts = [f"{r.get('name')} {_f3(metric(r, key, explainer))}" for r in matched]
        return f"{words.capitalize()}: teacher {_f3(t)}; " + ", ".join(parts) + "."
    n = metric(naive, key, explainer)
    subject = f"Naive {_recipe_words(method)} ({naive.get('name')})"
    ref = "the teacher's own maps 1.000" if key in SELF_AGREEMENT else f"teacher {_f3(t)}"
    if t is None or n is None:
        return f"{subject}: {words} not measured ({ref}, {naive.get('name')} {_f3(n)})."
    if t - n <= NO_GAP:
        return (f"{subject} kept its {words} ({_f3(n)} vs {ref}): no gap to close.")
    parts = []
    n_map = metric(naive, "mAP")
    for r in matched:
        m = metric(r, key, explainer)
        who = f"{_matching_words(r)} ({r.get('name')})"
        if m is None:
            parts.append(f"{who}: not measured")
            continue
        share = gap_closed(t, n, m)
        how = (f"won back {_pct(share)} of it" if share >= 0 else
               f"won none of it back ({_pct(share)}: {n - m:.3f} worse than naive)")
        parts.append(f"{who} {how} ({words} {_f3(m)}; mAP {_f3(metric(r, 'mAP'))} vs "
                     f"{_f3(n_map)})")
    text = f"{subject} lost {t - n:.3f} {words} ({ref}, {naive.get('name')} {_f3(n)})"
    return text + ("; " + "; ".join(parts) if parts else "") + "."


# --------------------------------------------------------------------------------------------
# HTML building blocks
# --------------------------------------------------------------------------------------------

def _f3(v) -> str:
    """3 decimals for floats, thousands separators for ints and big floats, "–" for missing."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if abs(v) >= 10_000:
            return f"{v:,.0f}"
        return f"{v:.2e}" if 0 < abs(v) < 0.001 else f"{v:.3f}"
    return str(v)


def _cell(v) -> str:
    """Any config value as text: lists joined, dicts as JSON, numbers via ``_f3``."""
    if isinstance(v, (list, tuple)):
        return ", ".join(_cell(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, default=str)
    if isinstance(v, float) and math.isfinite(v) and abs(v) < 10_000:
        return f"{v:.6g}"  # settings such as a weight decay of 1e-4 keep their digits
    return _f3(v)


def _table(header: list[str], rows: list[list], caption: str = "", numeric_from: int = 1,
           classes: list[list[str]] | None = None, fmt=_f3) -> str:
    """An escaped HTML table. Cells are formatted with ``fmt`` unless already strings; from
    column ``numeric_from`` on, cells that are not words (numbers, "71%", "–") align right."""
    esc = html.escape
    out = ["<table>"]
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead>")
    out.append("<tbody>")
    for i, row in enumerate(rows):
        cells = []
        for j, v in enumerate(row):
            word = isinstance(v, str) and v[:1].isalpha()
            cls = ["num"] if j >= numeric_from and not word else []
            if classes and classes[i][j]:
                cls.append(classes[i][j])
            attr = f' class="{" ".join(cls)}"' if cls else ""
            text = v if isinstance(v, str) else fmt(v)
            cells.append(f"<td{attr}>{esc(text)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _kv_table(d: dict, caption: str = "") -> str:
    return _table(["setting", "value"], [[str(k), _cell(v)] for k, v in d.items()], caption,
                  numeric_from=2)


def _figure(fig, alt: str, dpi: int = 90) -> str:
    """A matplotlib figure as an inline ``<img>`` (base64 PNG data URI); closes the figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _section(anchor: str, title: str, body: str, intro: str = "") -> str:
    p = f"<p class='note'>{html.escape(intro)}</p>" if intro else ""
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{p}\n{body}</section>'


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;
  max-width:1220px;margin:0 auto;padding:16px 24px;background:#fff}
h1{font-size:24px;margin:4px 0}h2{font-size:19px;border-bottom:2px solid #4e79a7;
  padding-bottom:3px;margin-top:32px}h3{font-size:15px;margin:18px 0 6px}
.sub{color:#555;margin:0 0 8px}nav a{margin-right:12px;color:#4e79a7;text-decoration:none}
.note{color:#555;font-size:13px;margin:4px 0 10px}
.card{border:1px solid #d8dee6;border-left:5px solid #4e79a7;border-radius:4px;
  padding:8px 14px;margin:10px 0;background:#f7f9fc}
.card p{margin:4px 0}.card ul{margin:4px 0 4px 18px;padding:0}.card li{margin:3px 0}
.wrap{overflow-x:auto}
table{border-collapse:collapse;margin:8px 0 14px;font-size:12.5px}
caption{text-align:left;font-weight:600;padding:4px 0;color:#333}
th,td{border:1px solid #d6d6d6;padding:3px 7px;text-align:left;white-space:nowrap}
th{background:#eef2f7;white-space:normal;vertical-align:bottom}
tbody tr:nth-child(even){background:#fafafa}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.good{background:#dcefdc}td.bad{background:#f7dede}
td.tag{color:#777;font-style:italic;text-align:right}
td.text{white-space:normal;min-width:320px;max-width:760px}
.verdict{font-size:15px}
img{max-width:100%;height:auto;display:block;margin:6px 0}
.grid{display:flex;flex-wrap:wrap;gap:0 28px;align-items:flex-start}
details{margin:6px 0}summary{cursor:pointer;color:#4e79a7}
"""


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------

def _headline_html(results: dict, explainers: list[str]) -> str:
    """One card per (explainer, recipe): the summary in bold, then one sentence per metric."""
    if teacher_run(results) is None or not recipe_groups(results):
        return "<p>No teacher and compressed runs to compare.</p>"
    cards = []
    for e in explainers or ["gradcam"]:
        for item in headline(results, e):
            lis = "".join(f"<li>{html.escape(s)}</li>" for s in item["sentences"])
            cards.append(f"<div class='card'><p><b>{html.escape(item['recipe'])} "
                         f"({html.escape(e)}):</b> {html.escape(item['summary'])}</p>"
                         f"<ul>{lis}</ul></div>")
    return "\n".join(cards)


GAP_HEADERS = {"pointing_game": "PG", "auc": "AUC", "spearman": "Spearman"}
QUALITY_COLUMNS = (("mAP", "mAP"), ("F1", "F1"), ("PG", "pointing_game"),
                   ("PG15", "pointing_game_std"), ("AUC", "auc"), ("energy PG", "energy_pg"),
                   ("Spearman", "spearman"), ("top-k IoU", "topk_iou"), ("cosine", "cosine"),
                   ("argmax agree", "argmax_agree"))
COST_COLUMNS = (("params", "params"), ("non-zero params", "nonzero_params"), ("MACs", "macs"),
                ("bytes", "bytes"), ("latency ms", "latency_ms"))


def _ordered_runs(results: dict) -> list[dict]:
    """Teacher first, then the runs recipe by recipe (naive, AT, WCAM)."""
    teacher = teacher_run(results)
    rest = [r for runs in recipe_groups(results).values() for r in runs]
    return ([teacher] if teacher else []) + rest


def _gap_cell(run, teacher, naive, key, explainer) -> tuple[str, str]:
    """Text and CSS class of a run's "gap closed" cell for one metric."""
    if run is teacher or run is naive or naive is None:
        return ("teacher" if run is teacher else "naive" if run is naive else "–"), "tag"
    t, n = _reference(teacher, key, explainer), metric(naive, key, explainer)
    s = gap_closed(t, n, metric(run, key, explainer))
    if s is None:
        no_gap = t is not None and n is not None and t - n <= NO_GAP
        return ("no gap" if no_gap else "–"), "tag"
    return _pct(s), "good" if s >= 0.5 else "bad" if s < 0.1 else ""


def _tables_html(results: dict, explainers: list[str]) -> str:
    """Per explainer: task + attribution metrics with gap-closed columns; then one cost table."""
    teacher = teacher_run(results)
    naive_of = {id(r): _naive(runs) for runs in recipe_groups(results).values() for r in runs}
    runs = _ordered_runs(results)
    parts = []
    for e in explainers or [None]:
        header = ["run", "recipe", "matching"] + [h for h, _ in QUALITY_COLUMNS]
        gap_keys = [k for k, _ in HEADLINE_METRICS]
        header += [f"{GAP_HEADERS[k]} gap closed" for k in gap_keys]
        rows, classes = [], []
        for r in runs:
            row = [str(r.get("name")), _method(r), _matching(r)]
            row += [metric(r, k, e) for _, k in QUALITY_COLUMNS]
            cls = [""] * len(row)
            naive = naive_of.get(id(r))
            for k in gap_keys:
                text, c = _gap_cell(r, teacher, naive, k, e)
                row.append(text)
                cls.append(c)
            rows.append(row)
            classes.append(cls)
        cap = (f"Task and {e} attribution metrics" if e else "Task metrics")
        parts.append(f"<div class='wrap'>{_table(header, rows, cap, 3, classes)}</div>")
    cost_rows = [[str(r.get("name"))] + [metric(r, k) for _, k in COST_COLUMNS]
                 + [(r.get("training") or {}).get("best_epoch"),
                    (r.get("training") or {}).get("best_val_mAP")] for r in runs]
    parts.append(_table(["run"] + [h for h, _ in COST_COLUMNS] + ["best epoch", "best val mAP"],
                        cost_rows, "Cost (measured side by side) and model selection"))
    return "\n".join(parts)


PLOT_METRICS = (("mAP", "mAP"), ("pointing_game", "pointing game"),
                ("pointing_game_std", "pointing game (15 px)"), ("auc", "localisation AUC"),
                ("energy_pg", "energy pointing game"), ("spearman", "Spearman vs teacher"),
                ("topk_iou", "top-k IoU vs teacher"), ("cosine", "cosine vs teacher"))


def _bars_figure(results: dict, explainer: str) -> str:
    """Bar charts per metric: recipes on x, naive / AT / WCAM bars, the teacher as a line."""
    teacher, groups = teacher_run(results), recipe_groups(results)
    fig, axes = plt.subplots(2, 4, figsize=(13, 5.6))
    width = 0.8 / max(len(runs) for runs in groups.values())
    for ax, (key, label) in zip(axes.flat, PLOT_METRICS):
        for gi, runs in enumerate(groups.values()):
            for ri, r in enumerate(runs):
                v = metric(r, key, explainer)
                x = gi - 0.4 + width * (ri + 0.5)
                m = _matching(r)
                ax.bar(x, v if v is not None else 0, width * 0.92,
                       color=MATCHING_COLOURS.get(m, "#76b7b2"), label=MATCHING_WORDS.get(m, m))
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
    return _figure(fig, f"bar charts of each metric per recipe ({explainer})")


def _plots_html(results: dict, explainers: list[str]) -> str:
    if not recipe_groups(results):
        return "<p>No compressed runs.</p>"
    return "\n".join(f"<h3>{html.escape(e)}</h3>" + _bars_figure(results, e)
                     for e in explainers or ["gradcam"])


METRIC_WORDS = dict(PLOT_METRICS)
SWEEP_METRICS = (("mAP", "mAP"), ("pointing_game", "pointing game"), ("auc", "localisation AUC"),
                 ("spearman", "Spearman vs teacher"))


def _short(v: float) -> str:
    """Axis label for a size: 20k, 1.5M."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:g}{unit}"
    return f"{v:g}"


def _sweeps_html(results: dict) -> str:
    """Each metric against model size, one row of panels per recipe, one line per matching."""
    sweeps = [s for s in results.get("sweeps") or [] if isinstance(s, dict)]
    recipes = list(dict.fromkeys(str(s.get("recipe", "?")) for s in sweeps))
    size_key = "size_bytes" if any(_num(s.get("size_bytes")) for s in sweeps) else "params"
    teacher = teacher_run(results)
    explainer = (_explainers(results) or ["gradcam"])[0]
    fig, axes = plt.subplots(len(recipes), len(SWEEP_METRICS), squeeze=False,
                             figsize=(13, 2.9 * len(recipes)))
    for row, recipe in zip(axes, recipes):
        points = [s for s in sweeps if str(s.get("recipe", "?")) == recipe]
        matchings = sorted({str(s.get("matching") or "none") for s in points},
                           key=lambda m: MATCHING_ORDER.get(m, 3))
        # one size for every point (nothing to plot against size): plot against strength
        x_key = size_key if len({s.get(size_key) for s in points}) > 1 else "strength"
        for ax, (key, label) in zip(row, SWEEP_METRICS):
            for m in matchings:
                pts = sorted((_num(s.get(x_key)), _num(s.get(key))) for s in points
                             if str(s.get("matching") or "none") == m
                             and _num(s.get(x_key)) and _num(s.get(key)) is not None)
                if pts:
                    xs, ys = zip(*pts)
                    ax.plot(xs, ys, "o-", color=MATCHING_COLOURS.get(m, "#76b7b2"),
                            label=MATCHING_WORDS.get(m, m), ms=4)
            t = (None if key in SELF_AGREEMENT or teacher is None
                 else metric(teacher, key, explainer))
            if t is not None:
                ax.axhline(t, color="k", ls="--", lw=1, label="teacher")
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
    rows = [[str(s.get("recipe")), str(s.get("matching")), s.get("strength"),
             s.get(size_key)] + [s.get(k) for k, _ in SWEEP_METRICS] for s in sweeps]
    table = _table(["recipe", "matching", "strength", size_key] + [w for _, w in SWEEP_METRICS],
                   rows, numeric_from=2)
    return (_figure(fig, "metrics against model size per recipe")
            + f"<details><summary>sweep numbers</summary>{table}</details>")


# --------------------------------------------------------------------------------------------
# Heatmaps
# --------------------------------------------------------------------------------------------

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
        items = [dataset[i] for i in picked]
        return cls(torch.stack([torch.as_tensor(x[0]).float() for x in items]),
                   torch.stack([torch.as_tensor(x[1]).float() for x in items]),
                   torch.stack([torch.as_tensor(x[2]).long() for x in items]))


def _class_name(class_names: list[str], c: int) -> str:
    return str(class_names[c]) if 0 <= c < len(class_names) else str(c)


def _as_images(images) -> ReportImages:
    if isinstance(images, ReportImages):
        return images
    x, y, m = images
    return ReportImages(torch.as_tensor(x).float(), torch.as_tensor(y).float(),
                        torch.as_tensor(m).long())


def _explain_targets(teacher_logits: torch.Tensor, labels: torch.Tensor,
                     target: str) -> torch.Tensor:
    """Class per image: the teacher's top-1 ("top1"), or the ground-truth class the teacher
    scores highest ("truth"; its top-1 when the image has no label)."""
    if target == "top1":
        return teacher_logits.argmax(1)
    masked = teacher_logits.masked_fill(labels <= 0, float("-inf"))
    has = (labels > 0).any(1)
    return torch.where(has, masked.argmax(1), teacher_logits.argmax(1))


def _heatmap_figure(imgs: ReportImages, names: list[str], maps: dict[str, torch.Tensor],
                    probs: dict[str, torch.Tensor], classes: torch.Tensor,
                    class_names: list[str], explainer: str,
                    row_notes: list[str] | None = None) -> str:
    """Grid: one row per image; columns image | each run's map; the object outlined in white.
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
                _draw_map(ax, maps[names[j - 1]][i].numpy())
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
        label = _class_name(class_names, c) + ("\n(not in image)" if absent else "")
        if row_notes:
            label += "\n" + row_notes[i]
        axes[i][0].set_ylabel(label, fontsize=8.5)
    fig.tight_layout(pad=0.3, w_pad=0.2, h_pad=0.3)
    return _figure(fig, f"{explainer} maps per run", dpi=100)


def _heatmaps_html(results: dict, checkpoints: dict, images, explainers: list[str],
                   target: str) -> str:
    """Compute each checkpoint's maps for the chosen class of each image; one grid per
    explainer. Maps are upsampled to the input size and scaled per map for display."""
    from .attribution import EXPLAINERS, upsample
    from .models import class_probabilities
    from .loading import load_model

    imgs = _as_images(images)
    order = [str(r.get("name")) for r in _ordered_runs(results)]
    names = [n for n in order if n in checkpoints] + [n for n in checkpoints if n not in order]
    models, class_names = {}, list((results.get("dataset") or {}).get("classes") or [])
    skipped = []
    for name in names:
        try:
            models[name], meta = load_model(checkpoints[name])
        except (OSError, ValueError) as exc:  # a report should not die on one bad checkpoint
            skipped.append(f"{name}: {exc}")
            continue
        class_names = class_names or list(meta.get("classes") or [])
    names = [n for n in names if n in models]
    notes = "".join(f"<p class='note'>Not drawn: {html.escape(s)}</p>" for s in skipped)
    if not names:
        return notes or "<p>No checkpoints to draw.</p>"
    with torch.no_grad():
        ref_logits = models[names[0]](imgs.images)
    classes = _explain_targets(ref_logits, imgs.labels, target)
    size = tuple(imgs.images.shape[-2:])
    index = torch.arange(len(imgs.images))
    which = ("the ground-truth class the first model (" + names[0] + ") scores highest"
             if target == "truth" else f"the first model's ({names[0]}) top-1 class")
    parts = [notes + f"<p class='note'>Each row explains {html.escape(which)} (row label), "
             f"the same class in every column. The object of that class is outlined in white; "
             f"p = the model's probability for the class (softmax for single-label models, "
             f"sigmoid for multi-label ones). Maps are upsampled to "
             f"{size[0]}x{size[1]} and scaled to their own maximum (signed maps: blue negative, "
             f"red positive).</p>"]
    for e in explainers:
        if e not in EXPLAINERS:
            parts.append(f"<p>Unknown explainer {html.escape(e)}: skipped.</p>")
            continue
        maps, probs = {}, {}
        for name in names:
            m, logits = EXPLAINERS[e](models[name], imgs.images, index, classes)
            maps[name] = upsample(m.float(), size).cpu()
            probs[name] = class_probabilities(models[name], logits)[index, classes].cpu()
        parts.append(f"<h3>{html.escape(e)}</h3>"
                     + _heatmap_figure(imgs, names, maps, probs, classes, class_names, e))
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# Per-class numbers, training curves, configuration
# --------------------------------------------------------------------------------------------

def _per_class_value(values, c: int):
    """Class ``c`` of a per-class list or dict (JSON turns int keys into strings)."""
    if isinstance(values, (list, tuple)):
        return values[c] if c < len(values) else None
    if isinstance(values, dict):
        return values.get(str(c), values.get(c))
    return None


def _per_class_html(results: dict, explainers: list[str]) -> str:
    """Rows = classes, columns = runs: task.per_class_AP, and each attribution[e].per_class
    metric when present. Empty string when the results carry none."""
    runs = _ordered_runs(results)
    names = list((results.get("dataset") or {}).get("classes") or [])
    tables = []
    entries = [("AP", None, lambda r: (r.get("task") or {}).get("per_class_AP"))]
    for e in explainers:
        keys = []
        for r in runs:
            pc = ((r.get("attribution") or {}).get(e) or {}).get("per_class") or {}
            keys += [k for k in pc if k not in keys]
        entries += [(k, e, (lambda r, e=e, k=k: (((r.get("attribution") or {}).get(e) or {})
                                                 .get("per_class") or {}).get(k)))
                    for k in keys]
    for key, e, get in entries:
        values = {str(r.get("name")): get(r) for r in runs}
        if not any(values.values()):
            continue
        k = max((len(v) for v in values.values() if v), default=0)
        if isinstance(next(v for v in values.values() if v), dict):
            k = 1 + max(int(c) for v in values.values() if v for c in v)
        k = max(k, len(names))
        rows = [[_class_name(names, c)]
                + [_num(_per_class_value(v, c)) if v else None for v in values.values()]
                for c in range(k)]
        cap = f"per-class {METRIC_WORDS.get(key, key)}" + (f" ({e})" if e else "")
        tables.append(f"<div class='wrap'>{_table(['class'] + list(values), rows, cap)}</div>")
    return "\n".join(tables)


def _read_metas(checkpoints: dict) -> dict[str, dict]:
    """Checkpoint sidecars (no weights loaded); unreadable ones are skipped."""
    from .models.checkpoint import SIDECAR

    metas = {}
    for name, d in checkpoints.items():
        try:
            metas[name] = json.loads((Path(d) / SIDECAR).read_text())
        except (OSError, ValueError):
            continue
    return metas


def _training_html(checkpoints: dict) -> str:
    """Loss terms and val mAP per epoch (distillation, teachers) or best val mAP and sparsity
    per round (unstructured pruning), one panel per checkpoint."""
    hist = {n: m.get("history") or {} for n, m in _read_metas(checkpoints).items()}
    hist = {n: h for n, h in hist.items() if h.get("epochs") or h.get("rounds")}
    if not hist:
        return ""
    cols = min(4, len(hist))
    rows = math.ceil(len(hist) / cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(3.3 * cols, 3.0 * rows))
    for ax, (name, h) in zip(axes.flat, hist.items()):
        if h.get("epochs"):
            _plot_epochs(ax, h["epochs"])
        else:
            _plot_rounds(ax, h["rounds"])
        ax.set_title(name, fontsize=10)
    for ax in list(axes.flat)[len(hist):]:
        ax.axis("off")
    fig.tight_layout()
    return _figure(fig, "training curves per checkpoint")


def _plot_epochs(ax, epochs: list[dict]) -> None:
    """Every numeric key but epoch / seconds / val_mAP is a loss term (log axis when all are
    positive); val mAP on a second axis."""
    x = [e.get("epoch", i + 1) for i, e in enumerate(epochs)]
    terms = [k for k in epochs[0] if k not in ("epoch", "seconds", "val_mAP")
             and _num(epochs[0][k]) is not None]
    drawn: list[list] = []
    for k in terms:
        ys = [_num(e.get(k)) for e in epochs]
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
    if any(_num(e.get("val_mAP")) is not None for e in epochs):
        ax2 = ax.twinx()
        ax2.plot(x, [_num(e.get("val_mAP")) or np.nan for e in epochs], "k--", lw=1.2,
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
        ax.plot(x, [_num(r.get(key)) or np.nan for r in rounds], style, ms=3,
                label=key.replace("_", " "))
    ax.set_xlabel("pruning round", fontsize=8)
    ax.set_ylim(0, 1)
    ax.tick_params(labelsize=7)
    _legend_below(ax, *ax.get_legend_handles_labels())


def _config_html(results: dict) -> str:
    """Demo settings, dataset, each run's compression settings, seed and versions as tables."""
    parts = []
    if isinstance(results.get("demo"), dict):
        parts.append(_kv_table(results["demo"], "demo settings"))
    if isinstance(results.get("dataset"), dict):
        parts.append(_kv_table(results["dataset"], "data"))
    runs = _ordered_runs(results)
    keys = list(dict.fromkeys(k for r in runs for k in (r.get("compression") or {})))
    if keys:
        rows = [[str(r.get("name"))] + [(r.get("compression") or {}).get(k) for k in keys]
                for r in runs]
        table = _table(["run"] + keys, rows, "compression settings", fmt=_cell)
        parts.append(f"<div class='wrap'>{table}</div>")
    other = {k: results[k] for k in ("seed", "wall_seconds") if k in results}
    if other:
        parts.append(_kv_table(other, "run"))
    if isinstance(results.get("versions"), dict):
        parts.append(_kv_table(results["versions"], "versions"))
    return "<div class='grid'>" + "\n".join(parts) + "</div>"


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------

def write_report(results: dict, out_html: str | Path,
                 checkpoints: dict[str, str | Path] | None = None,
                 images: ReportImages | tuple | None = None,
                 explainers: list[str] | tuple[str, ...] | None = None,
                 title: str = "attrpreserve report", target: str = "truth") -> Path:
    """Write a self-contained HTML report of a results.json document to ``out_html``.

    Sections: headline sentences, results tables, bar charts, size sweeps (if
    ``results["sweeps"]``), heatmap grids (if ``checkpoints`` name -> dir and ``images``, a
    :class:`ReportImages` or an ``(images, labels, masks)`` tuple, are given), per-class
    tables, training curves (from the checkpoints), configuration and versions.
    ``explainers``: those to report (default: every one in the results, else Grad-CAM).
    ``target``: heatmaps explain the ground-truth class ("truth") or the top-1 class ("top1")
    of the first (teacher) model.
    """
    if target not in ("truth", "top1"):
        raise ValueError(f"target must be 'truth' or 'top1', got {target!r}")
    checkpoints = {str(k): Path(v) for k, v in (checkpoints or {}).items()}
    found = _explainers(results)
    explainers = list(explainers) if explainers else (found or ["gradcam"])
    table_explainers = [e for e in explainers if e in found] or found
    notes = "".join(f"<p class='note'>{html.escape(str(n))}</p>"
                    for n in results.get("notes") or [])
    sections = [("headline", "Did compression move the explanations?",
                 _headline_html(results, table_explainers) + notes,
                 f"Gap = teacher minus naive run; share closed = (matched - naive) / gap. "
                 f"Agreement metrics compare with the teacher's own maps (1 = identical). A "
                 f"naive run within {NO_GAP} of the teacher has no gap to close."),
                ("results", "Results", _tables_html(results, table_explainers),
                 "PG = pointing game (paper mode), PG15 = 15-px pointing game, energy PG = "
                 "share of map energy on the object; Spearman, top-k IoU, cosine and argmax "
                 "agreement compare each run's maps with the teacher's."),
                ("plots", "Metrics per recipe", _plots_html(results, table_explainers),
                 "Bars: naive (grey), AT (orange), WCAM (blue) runs of each recipe; dashed "
                 "line: the teacher.")]
    if results.get("sweeps"):
        sections.append(("sweeps", "Metrics against model size", _sweeps_html(results), ""))
    if checkpoints and images is not None:
        sections.append(("heatmaps", "Attribution maps",
                         _heatmaps_html(results, checkpoints, images, explainers, target), ""))
    per_class = _per_class_html(results, table_explainers)
    if per_class:
        sections.append(("per-class", "Per class", per_class, ""))
    training = _training_html(checkpoints) if checkpoints else ""
    if training:
        sections.append(("training", "Training curves", training,
                         "Loss terms per epoch (left axis) and validation mAP (dashed, right "
                         "axis); pruning runs: best validation mAP and sparsity per round."))
    sections.append(("config", "Configuration and versions", _config_html(results), ""))
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    out_html.write_text(_page(results, title, sections), encoding="utf-8")
    return out_html


def _page(results: dict, title: str, sections: list[tuple[str, str, str, str]]) -> str:
    """The results report's document: data, seed and version in the subtitle."""
    ds = results.get("dataset") or {}
    sub = []
    if ds:
        sub.append(f"data {ds.get('spec', '?')} / {ds.get('split', '?')}, "
                   f"{_f3(ds.get('images'))} images, {len(ds.get('classes') or [])} classes")
    if "seed" in results:
        sub.append(f"seed {results['seed']}")
    version = (results.get("versions") or {}).get("attrpreserve")
    if version:
        sub.append(f"attrpreserve {version}")
    return _document(title, sub, sections)


def _document(title: str, sub: list[str], sections: list[tuple[str, str, str, str]]) -> str:
    """The whole document: head with inline CSS, a subtitle (``sub`` joined), in-page
    navigation, then the ``(anchor, title, body html, intro text)`` sections."""
    esc = html.escape
    nav = " ".join(f'<a href="#{a}">{esc(t)}</a>' for a, t, _, _ in sections)
    body = "\n".join(_section(a, t, b, i) for a, t, b, i in sections)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n"
            f"<h1>{esc(title)}</h1><p class='sub'>{esc(' · '.join(sub))}</p>"
            f"<nav>{nav}</nav>\n{body}\n</body></html>\n")


# --------------------------------------------------------------------------------------------
# The audit page
# --------------------------------------------------------------------------------------------

# (key, words, value when the two models' maps are identical) of the audit's agreement metrics
AUDIT_AGREEMENT = (("spearman", "Spearman", 1.0), ("ssim", "SSIM", 1.0),
                   ("cosine", "cosine", 1.0), ("topk_iou", "top-k IoU", 1.0),
                   ("topk_intersection", "top-k intersection", 1.0),
                   ("argmax_agree", "argmax agreement", 1.0),
                   ("com_shift", "centre-of-mass shift (px)", 0.0))
AUDIT_LOCALIZATION = {"pointing_game": "pointing game", "pointing_game_std": "pointing game "
                      "(15 px)", "auc": "localisation AUC", "energy_pg": "energy pointing game",
                      "relevance_mass": "relevance mass", "relevance_rank": "relevance rank",
                      "deletion_auc": "deletion AUC", "insertion_auc": "insertion AUC"}
LOWER_IS_BETTER = frozenset({"deletion_auc", "com_shift"})
CLOSE_SPEARMAN = 0.9  # mean Spearman from which B's maps "stayed close to" A's
PERFECT_TOL = 1e-6


def _mean(entry) -> float | None:
    return _num((entry or {}).get("mean")) if isinstance(entry, dict) else None


def _d3(v) -> str:
    """A difference with its sign: +0.120, -0.031."""
    v = _num(v)
    return "–" if v is None else f"{v:+.3f}"


def _ci_words(entry: dict | None, conf: float, fmt=_f3) -> str:
    """ "0.912 (95% CI 0.880 to 0.940)" for a ``{mean, ci_low, ci_high}`` entry."""
    entry = entry or {}
    text = fmt(_num(entry.get("mean")))
    lo, hi = _num(entry.get("ci_low")), _num(entry.get("ci_high"))
    if lo is None or hi is None:
        return text
    return f"{text} ({conf:.0%} CI {fmt(lo)} to {fmt(hi)})"


def _audit_confidence(result: dict) -> float:
    return _num((result.get("settings") or {}).get("confidence")) or 0.95


def _audit_explainers(result: dict, explainers) -> list[str]:
    found = list(result.get("explainers") or {})
    if not explainers:
        return found
    return [e for e in explainers if e in found]


def _audit_perfect(agreement: dict) -> bool:
    """Every agreement metric present is at its identical-maps value (and the peaks were
    compared at all)."""
    if _mean(agreement.get("argmax_agree")) is None:
        return False
    for key, _, ideal in AUDIT_AGREEMENT:
        v = _mean(agreement.get(key))
        if v is not None and abs(v - ideal) > PERFECT_TOL:
            return False
    return True


def _thresholds(result: dict) -> tuple[float, float]:
    """The audit's low-agreement Spearman threshold and peak tolerance (px)."""
    s = result.get("settings") or {}
    low, tol = _num(s.get("low_spearman")), _num(s.get("argmax_tolerance_px"))
    return 0.5 if low is None else low, 4.0 if tol is None else tol


def _low_rule(result: dict) -> str:
    low, tol = _thresholds(result)
    return f"Spearman < {low:g} or peaks > {tol:g} px apart"


def audit_headline(result: dict, explainer: str = "gradcam",
                   names: tuple[str, str] = ("reference", "candidate")) -> dict:
    """Plain-sentence answers for one explainer of an :func:`~attrpreserve.evaluate.audit`
    result: ``{"summary": str, "perfect": bool, "sentences": [str]}`` (plain text)."""
    a, b = names
    rep = (result.get("explainers") or {}).get(explainer) or {}
    agr = rep.get("agreement") or {}
    conf = _audit_confidence(result)
    low, tol = _thresholds(result)
    rho, peaks = _mean(agr.get("spearman")), _mean(agr.get("argmax_agree"))
    perfect = _audit_perfect(agr)
    if perfect:
        summary = (f"Perfect agreement: {b}'s {explainer} maps are identical to {a}'s ("
                   + (f"Spearman {_f3(rho)}, " if rho is not None else "")
                   + f"peaks agree on {_pct(peaks)} of pairs).")
    elif rho is None:
        summary = (f"{b}'s {explainer} maps could not be rank-compared with {a}'s (Spearman "
                   f"undefined: constant maps); peaks agree on "
                   f"{_pct(peaks) if peaks is not None else '–'} of pairs.")
    elif rho >= CLOSE_SPEARMAN:
        summary = (f"{b}'s {explainer} explanations stayed close to {a}'s (mean Spearman "
                   f"{_f3(rho)}).")
    elif rho >= low:
        summary = (f"{b}'s {explainer} explanations moved noticeably from {a}'s (mean "
                   f"Spearman {_f3(rho)}).")
    else:
        summary = (f"{b}'s {explainer} explanations moved far from {a}'s (mean Spearman "
                   f"{_f3(rho)}, below the low-agreement threshold {low:g}).")

    sentences = []
    words = []
    for key, label in (("spearman", "mean Spearman"), ("ssim", "SSIM")):
        if _mean(agr.get(key)) is not None:
            words.append(f"{label} {_ci_words(agr.get(key), conf)}")
    if peaks is not None:
        lo, hi = (_num(agr["argmax_agree"].get(k)) for k in ("ci_low", "ci_high"))
        ci = f" ({conf:.0%} CI {_pct(lo)} to {_pct(hi)})" if None not in (lo, hi) else ""
        words.append(f"peaks within {tol:g} px of each other on {_pct(peaks)} of pairs{ci}")
    if words:
        sentences.append(f"Agreement of {b}'s maps with {a}'s over {_f3(result.get('pairs'))} "
                         f"(image, class) pairs on {_f3(result.get('images'))} images: "
                         + "; ".join(words) + ".")

    task = result.get("task") or {}
    pair_dec = _num(task.get("pair_decision_agreement"))
    if pair_dec is not None:
        text = (f"Predictions: both models make the same decision on {_pct(pair_dec)} of the "
                f"ground-truth pairs")
        extra = []
        if _num(task.get("decision_agreement")) is not None:
            extra.append(f"{_pct(task['decision_agreement'])} of all image-class decisions")
        if _num(task.get("label_set_agreement")) is not None:
            extra.append(f"identical predicted label sets on {_pct(task['label_set_agreement'])}"
                         f" of images")
        text += f" ({'; '.join(extra)})" if extra else ""
        ma, mb = (_num((task.get(k) or {}).get("mAP")) for k in ("a", "b"))
        if ma is not None or mb is not None:
            text += f"; mAP {a} {_f3(ma)}, {b} {_f3(mb)}"
        sentences.append(text + ".")

    hidden = rep.get("hidden_disagreement") or {}
    if hidden:
        sentences.append(_hidden_sentence(hidden, conf, _low_rule(result)))

    for group, title in (("localization", "Localisation"), ("faithfulness", "Faithfulness")):
        block = rep.get(group)
        if not block:
            continue
        keys = [k for k in ("pointing_game", "auc", "deletion_auc", "insertion_auc")
                if k in block] or list(block)[:2]
        parts = [_delta_words(k, block[k], a, b, conf) for k in keys]
        sentences.append(f"{title}: " + "; ".join(parts) + ".")
    return {"summary": _capital(summary), "perfect": perfect, "sentences": sentences}


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _pct_or_dash(v) -> str:
    v = _num(v)
    return "–" if v is None else _pct(v)


def _hidden_sentence(hidden: dict, conf: float, rule: str) -> str:
    """Do agreeing decisions hide disagreeing explanations?"""
    n_same = hidden.get("same_decision_pairs") or 0
    n_low = hidden.get("same_decision_low_agreement_pairs") or 0
    if not n_same:
        return ("No pair gets the same decision from both models, so agreeing decisions "
                "cannot hide disagreeing explanations here.")
    if not n_low:
        text = (f"No hidden disagreement: none of the {_f3(n_same)} pairs where both models "
                f"make the same decision has low explanation agreement ({rule}).")
    else:
        share = _ci_words(hidden.get("share_low_among_same_decision"), conf, _pct_or_dash)
        text = (f"Among {_f3(n_same)} pairs where both models make the same decision, {share} "
                f"have low explanation agreement ({rule}): the same answer for a different "
                f"reason.")
    n_diff = hidden.get("different_decision_pairs") or 0
    if n_diff:
        share = _pct_or_dash(_mean(hidden.get("share_low_among_different_decision")))
        text += f" Among the {_f3(n_diff)} pairs where the decisions differ: {share}."
    return text


def _delta_words(key: str, entry: dict, a: str, b: str, conf: float) -> str:
    """E.g. "pointing game reference 0.417 vs candidate 0.103 (difference -0.314, 95% CI
    -0.402 to -0.221: candidate lower)"."""
    words = AUDIT_LOCALIZATION.get(key, key.replace("_", " "))
    d, lo, hi = (_num(entry.get(k)) for k in ("delta", "ci_low", "ci_high"))
    text = (f"{words} {a} {_f3(_num(entry.get('a')))} vs {b} {_f3(_num(entry.get('b')))} "
            f"(difference {_d3(d)}")
    if d == 0 and lo == 0 and hi == 0:
        return text + ": identical)"
    if lo is not None and hi is not None:
        verdict = (f"{b} lower" if hi < 0 else f"{b} higher" if lo > 0
                   else "no clear difference")
        text += f", {conf:.0%} CI {_d3(lo)} to {_d3(hi)}: {verdict}"
    return text + ")"


def _audit_headline_html(result: dict, explainers: list[str], names) -> str:
    """One card per explainer: the verdict in bold, then the supporting sentences."""
    if not explainers:
        return "<p>The audit holds no explainer results.</p>"
    cards = []
    for e in explainers:
        item = audit_headline(result, e, names)
        lis = "".join(f"<li>{html.escape(s)}</li>" for s in item["sentences"])
        cards.append(f"<div class='card'><p class='verdict'><b>{html.escape(e)}:</b> "
                     f"{html.escape(item['summary'])}</p><ul>{lis}</ul></div>")
    return "\n".join(cards)


def _ci_class(entry: dict, lower_is_better: bool = False) -> str:
    """"bad" / "good" when the CI of a B - A difference lies wholly below / above zero."""
    lo, hi = _num(entry.get("ci_low")), _num(entry.get("ci_high"))
    if lo is None or hi is None or lo <= 0 <= hi:
        return ""
    worse = hi < 0 if not lower_is_better else lo > 0
    return "bad" if worse else "good"


def _delta_table(block: dict, names, caption: str) -> str:
    """Rows = metrics; A, B, B - A and its CI; the difference coloured when its CI excludes 0."""
    a, b = names
    rows, classes = [], []
    for key, entry in block.items():
        entry = entry or {}
        rows.append([AUDIT_LOCALIZATION.get(key, key), _num(entry.get("a")),
                     _num(entry.get("b")), _d3(entry.get("delta")), _d3(entry.get("ci_low")),
                     _d3(entry.get("ci_high"))])
        classes.append(["", "", "", _ci_class(entry, key in LOWER_IS_BETTER), "", ""])
    header = ["metric", a, b, f"difference ({b} - {a})", "CI low", "CI high"]
    return f"<div class='wrap'>{_table(header, rows, caption, classes=classes)}</div>"


def _audit_tables_html(result: dict, explainers: list[str], names) -> str:
    """Task agreement; per explainer: agreement, hidden disagreement, localisation and
    faithfulness tables."""
    a, b = names
    conf = _audit_confidence(result)
    task = result.get("task") or {}
    rows = [[k, _num((task.get("a") or {}).get(k)), _num((task.get("b") or {}).get(k))]
            for k in ("mAP", "F1")]
    defs = task.get("definitions") or {}
    agree = [[k.replace("_", " "), _num(task.get(k)), defs.get(k, "")]
             for k in ("pair_decision_agreement", "decision_agreement", "label_set_agreement")
             if k in task]
    parts = ["<div class='grid'>" + _table(["task", a, b], rows, "Task quality")
             + (_table(["prediction agreement", "share", "meaning"], agree,
                       "Do the two models decide alike?", numeric_from=1,
                       classes=[["", "", "text"]] * len(agree)) if agree else "")
             + "</div>"]
    for e in explainers:
        rep = result["explainers"][e]
        agr = rep.get("agreement") or {}
        rows = [[words, _mean(agr.get(k)), _num((agr.get(k) or {}).get("ci_low")),
                 _num((agr.get(k) or {}).get("ci_high")), ideal]
                for k, words, ideal in AUDIT_AGREEMENT if k in agr]
        parts.append(f"<h3>{html.escape(e)}</h3>")
        tables = [_table(["metric", "mean", f"{conf:.0%} CI low", f"{conf:.0%} CI high",
                          "identical maps"], rows,
                         f"Agreement of {b}'s {e} maps with {a}'s (mean over pairs)")]
        hidden = rep.get("hidden_disagreement") or {}
        if hidden:
            groups = (("same decision", "same_decision_pairs", "share_low_among_same_decision"),
                      ("both predict the class", "both_predicted_pairs",
                       "share_low_among_both_predicted"),
                      ("different decisions", "different_decision_pairs",
                       "share_low_among_different_decision"))
            hrows = [[g, hidden.get(n), _pct_or_dash(_mean(hidden.get(s))),
                      _pct_or_dash((hidden.get(s) or {}).get("ci_low")),
                      _pct_or_dash((hidden.get(s) or {}).get("ci_high"))]
                     for g, n, s in groups if n in hidden]
            tables.append(_table(["pairs where", "pairs", "low agreement", "CI low", "CI high"],
                                 hrows, f"Hidden disagreement ({_low_rule(result)})"))
        parts.append("<div class='grid'>" + "".join(tables) + "</div>")
        if rep.get("localization"):
            parts.append(_delta_table(rep["localization"], names,
                                      f"Localisation against the masks ({e})"))
        if rep.get("faithfulness"):
            parts.append(_delta_table(rep["faithfulness"], names,
                                      f"Faithfulness ({e}; deletion AUC: lower is better)"))
    if not result.get("localization"):
        parts.append("<p class='note'>No masks in the audited data: localisation skipped.</p>")
    return "\n".join(parts)


def _audit_per_class_html(result: dict, explainers: list[str], class_names: list[str],
                          names) -> str:
    """Rows = classes: pairs, agreement (Spearman with CI) and localisation differences."""
    conf = _audit_confidence(result)
    parts = []
    for e in explainers:
        pc = result["explainers"][e].get("per_class") or {}
        if not pc:
            continue
        loc = [k for k in ("pointing_game", "pointing_game_std", "auc")
               if any(k in row for row in pc.values())]
        header = (["class", "pairs", "Spearman", f"{conf:.0%} CI", "SSIM", "argmax agree",
                   "CoM shift px"] + [f"{AUDIT_LOCALIZATION[k]} difference" for k in loc])
        rows, classes = [], []
        for c in sorted(pc, key=lambda k: int(k)):
            row = pc[c]
            rho = row.get("spearman") or {}
            ci = (f"{_f3(_num(rho.get('ci_low')))} to {_f3(_num(rho.get('ci_high')))}"
                  if _num(rho.get("ci_low")) is not None else "–")
            rows.append([_class_name(class_names, int(c)), row.get("pairs"), _mean(rho), ci,
                         _mean(row.get("ssim")), _mean(row.get("argmax_agree")),
                         _mean(row.get("com_shift"))]
                        + [_d3((row.get(k) or {}).get("delta")) for k in loc])
            classes.append([""] * 7 + [_ci_class(row.get(k) or {}) for k in loc])
        cap = f"Per class ({e}): agreement of {names[1]} with {names[0]}" + (
            f"; differences {names[1]} - {names[0]} (coloured when the CI excludes 0)"
            if loc else "")
        parts.append(f"<div class='wrap'>{_table(header, rows, cap, classes=classes)}</div>")
    return "\n".join(parts)


def _spearman_histogram(result: dict, explainers: list[str]) -> str:
    """One panel per explainer: per-image mean Spearman, the low-agreement threshold and the
    mean marked."""
    low, _ = _thresholds(result)
    values = {e: [v for v in (_num(r.get("spearman"))
                              for r in result["explainers"][e].get("per_image") or [])
                  if v is not None] for e in explainers}
    values = {e: v for e, v in values.items() if v}
    if not values:
        return "<p>No per-image Spearman values (constant maps or no pairs).</p>"
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
        ax.set_title(f"{e}: {len(arr)} images, {_pct(share)} below {low:g}", fontsize=9.5)
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
    return _figure(fig, "histogram of per-image Spearman agreement")


PER_IMAGE_ROWS = 200  # the per-image table is listed up to this many images


def _audit_distribution_html(result: dict, explainers: list[str], class_names) -> str:
    parts = [_spearman_histogram(result, explainers)]
    for e in explainers:
        rows_in = result["explainers"][e].get("per_image") or []
        if not rows_in or len(rows_in) > PER_IMAGE_ROWS:
            continue
        deltas = [k for k in rows_in[0] if k.startswith("delta_")]
        header = (["image", "classes", "Spearman", "SSIM", "argmax agree",
                   "predictions agree"] + [k[6:].replace("_", " ") + " diff." for k in deltas])
        rows = [[r.get("index"), ", ".join(_class_name(class_names, c)
                                           for c in r.get("classes") or []) or "–",
                 _num(r.get("spearman")), _num(r.get("ssim")), _num(r.get("argmax_agree")),
                 "yes" if r.get("predictions_agreed") else "no"]
                + [_d3(r.get(k)) for k in deltas] for r in rows_in]
        parts.append(f"<details><summary>per-image numbers ({html.escape(e)})</summary>"
                     f"<div class='wrap'>{_table(header, rows, numeric_from=2)}</div>"
                     f"</details>")
    return "\n".join(parts)


def _pick_images(images, indices: list[int]) -> ReportImages:
    """The audit's images ``indices`` (positions in loader order) from a :class:`ReportImages`
    or ``(images, labels, masks)`` tuple holding every image in loader order, a DataLoader (its
    dataset), or any dataset / callable returning ``(image, labels, mask)`` for an index."""
    if isinstance(images, tuple) and len(images) == 3 and torch.is_tensor(images[0]) \
            and images[0].dim() == 4:
        images = _as_images(images)
    if isinstance(images, ReportImages):
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = images.images[idx].float()
        masks = images.masks[idx].long() if images.masks is not None else None
        return ReportImages(x, images.labels[idx].float(), masks if masks is not None else
                            torch.full((len(idx), *x.shape[-2:]), 255, dtype=torch.long))
    if isinstance(images, torch.utils.data.DataLoader):
        images = images.dataset
    get = images.__getitem__ if hasattr(images, "__getitem__") else images
    items = [get(int(i)) for i in indices]
    x = torch.stack([torch.as_tensor(it[0]).float() for it in items])
    labels = torch.stack([torch.as_tensor(it[1]).float() for it in items])
    masks = [it[2] if len(it) > 2 else None for it in items]
    masks = torch.stack([torch.as_tensor(m).long() if m is not None else
                         torch.full(x.shape[-2:], 255, dtype=torch.long) for m in masks])
    return ReportImages(x, labels, masks)


def _explained_pair(entry: dict) -> dict:
    """The pair of a most-moved image whose maps moved most (lowest Spearman, NaN last)."""
    pairs = entry.get("pairs") or [{"class": c} for c in entry.get("classes") or [0]]
    return min(pairs, key=lambda p: (_num(p.get("spearman")) is None,
                                     _num(p.get("spearman")) or 0.0))


def _maps_of(model, explainer: str, x: torch.Tensor, classes: torch.Tensor, layer,
             size) -> tuple[torch.Tensor, torch.Tensor]:
    """One map per image (the given class) upsampled to ``size``, and the model's probability
    of the class (:func:`models.class_probabilities`); the model's train / eval mode is restored
    afterwards."""
    from .attribution import EXPLAINERS, upsample
    from .models import class_probabilities

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


def _audit_gallery_html(result: dict, explainers: list[str], class_names: list[str], names,
                        model_a, model_b, images) -> str:
    """Per explainer: the most-moved images as image | A's map | B's map (when the models and
    images are given), and a table of them."""
    from .attribution import EXPLAINERS

    a, b = names
    cols = (f"{a} (A)", f"{b} (B)")
    layers = (result.get("settings") or {}).get("layers") or {}
    draw = model_a is not None and model_b is not None and images is not None
    parts = ["<p class='note'>The images whose explanations moved most (lowest mean Spearman "
             "over their ground-truth classes), in that order. Each row explains the image's "
             "class whose maps moved most (row label: image index in loader order, class, "
             "that pair's Spearman). The object of that class is outlined in white where "
             "masks exist; p = each model's probability for the class (softmax for single-label "
             "models, sigmoid for multi-label ones). Maps are upsampled "
             "to the image size and scaled to their own maximum.</p>"]
    if not draw:
        parts.append("<p class='note'>Maps not drawn: pass both models and the audited images "
                     "to draw them.</p>")
    for e in explainers:
        moved = result["explainers"][e].get("most_moved") or []
        if not moved:
            continue
        parts.append(f"<h3>{html.escape(e)}</h3>")
        explained = [_explained_pair(m) for m in moved]
        probs = None
        if draw and e in EXPLAINERS:
            try:
                imgs = _pick_images(images, [int(m["index"]) for m in moved])
                classes = torch.tensor([int(p["class"]) for p in explained])
                size = tuple(imgs.masks.shape[-2:])
                maps, probs = {}, {}
                for col, model, side in ((cols[0], model_a, "a"), (cols[1], model_b, "b")):
                    maps[col], probs[col] = _maps_of(model, e, imgs.images, classes,
                                                     layers.get(side), size)
                notes = [f"#{m['index']}  ρ = {_f3(_num(p.get('spearman')))}"
                         for m, p in zip(moved, explained)]
                parts.append(_heatmap_figure(imgs, list(cols), maps, probs, classes,
                                             class_names, e, row_notes=notes))
            except (RuntimeError, IndexError, KeyError, ValueError, TypeError) as exc:
                probs = None  # a page should not die on a gallery it cannot draw
                parts.append(f"<p class='note'>Not drawn ({html.escape(e)}): "
                             f"{html.escape(f'{type(exc).__name__}: {exc}')}</p>")
        elif draw:
            parts.append(f"<p class='note'>Unknown explainer {html.escape(e)}: maps not "
                         f"drawn.</p>")
        header = ["rank", "image", "classes", "explained class", "pair Spearman",
                  "image mean Spearman", "peaks agree", f"{a} predicts", f"{b} predicts"]
        if probs is not None:
            header += [f"{a} p", f"{b} p"]
        header.append("label sets agree")
        rows = []
        for r, (m, p) in enumerate(zip(moved, explained)):
            row = [r + 1, m.get("index"),
                   ", ".join(_class_name(class_names, c) for c in m.get("classes") or []),
                   _class_name(class_names, int(p["class"])), _num(p.get("spearman")),
                   _num(m.get("spearman")), _yes_no(p.get("argmax_agree")),
                   _yes_no(p.get("predicted_a")), _yes_no(p.get("predicted_b"))]
            if probs is not None:
                row += [float(probs[cols[0]][r]), float(probs[cols[1]][r])]
            row.append(_yes_no(m.get("predictions_agreed")))
            rows.append(row)
        table = _table(header, rows, f"Explanation forgotten ({e})", numeric_from=4)
        parts.append(f"<div class='wrap'>{table}</div>")
    return "\n".join(parts)


def _yes_no(v) -> str:
    return "–" if v is None else "yes" if v else "no"


def _audit_settings_html(result: dict, class_names: list[str]) -> str:
    """Audit settings, what was audited, versions, and every metric's definition."""
    parts = []
    if isinstance(result.get("settings"), dict):
        parts.append(_kv_table(result["settings"], "audit settings"))
    data = {k: result[k] for k in ("images", "pairs", "localization") if k in result}
    if class_names:
        data["classes"] = class_names
    if data:
        parts.append(_kv_table(data, "audited data"))
    if isinstance(result.get("versions"), dict):
        parts.append(_kv_table(result["versions"], "versions"))
    out = "<div class='grid'>" + "\n".join(parts) + "</div>"
    defs = result.get("definitions")
    if isinstance(defs, dict) and defs:
        rows = [[str(k), str(v)] for k, v in defs.items()]
        out += ("<details><summary>definitions of the metrics</summary>"
                + _table(["metric", "definition"], rows, numeric_from=2,
                         classes=[["", "text"]] * len(rows)) + "</details>")
    return out


def write_audit_report(result: dict, out_html: str | Path, model_a=None, model_b=None,
                       images=None, names: tuple[str, str] = ("reference", "candidate"),
                       explainers: list[str] | tuple[str, ...] | None = None,
                       title: str = "attrpreserve audit",
                       classes: list[str] | None = None) -> Path:
    """Write a self-contained HTML page of an :func:`attrpreserve.evaluate.audit` result.

    It answers "how far did B's explanations move from A's?": headline sentences per explainer
    (agreement with CIs, prediction agreement, hidden disagreement), tables (task, agreement,
    hidden disagreement, localisation and faithfulness differences when present), a histogram
    of per-image Spearman, per-class tables, the "explanation forgotten" gallery of the most
    moved images, and the settings, versions and metric definitions.

    ``model_a`` / ``model_b`` (the audited models) and ``images`` draw the gallery's maps
    (recomputed with the audit's explainers and ``settings.layers``). ``images`` must give the
    audited images by their audit index (position in loader order): a :class:`ReportImages`
    or ``(images, labels, masks)`` tuple of every image in that order, the (unshuffled)
    DataLoader or its dataset, or any indexable / callable returning ``(image, labels, mask)``;
    masks may be ``None``. ``names``: the words for A and B. ``explainers``: those to report
    (default: all in the result). ``classes``: class names (default: ``result["class_names"]``).
    """
    names = (str(names[0]), str(names[1]))
    explainers = _audit_explainers(result, explainers)
    class_names = [str(c) for c in (classes or result.get("class_names") or [])]
    settings = result.get("settings") or {}
    rule = _low_rule(result)
    sections = [
        ("headline", f"How far did {names[1]}'s explanations move from {names[0]}'s?",
         _audit_headline_html(result, explainers, names),
         f"B = {names[1]} is compared with A = {names[0]} on every (image, ground-truth class) "
         f"pair. Agreement 1 = identical maps; intervals are {_audit_confidence(result):.0%} "
         f"bootstrap CIs over images. Low agreement = {rule}."),
        ("tables", "Numbers", _audit_tables_html(result, explainers, names),
         f"Differences are {names[1]} - {names[0]}; a difference is coloured when its CI "
         f"excludes 0 (red: {names[1]} worse, green: better)."),
        ("distribution", "Per-image agreement",
         _audit_distribution_html(result, explainers, class_names),
         "Mean Spearman over each image's ground-truth classes; the dashed line is the "
         "low-agreement threshold."),
    ]
    per_class = _audit_per_class_html(result, explainers, class_names, names)
    if per_class:
        sections.append(("per-class", "Per class", per_class, ""))
    if any((result["explainers"][e].get("most_moved")) for e in explainers):
        sections.append(("gallery", "Explanation forgotten",
                         _audit_gallery_html(result, explainers, class_names, names, model_a,
                                             model_b, images), ""))
    sections.append(("settings", "Settings and versions",
                     _audit_settings_html(result, class_names), ""))
    sub = [f"A = {names[0]}, B = {names[1]}",
           f"{_f3(result.get('images'))} images, {_f3(result.get('pairs'))} pairs",
           "masks: " + ("yes" if result.get("localization") else "no")]
    if "n_boot" in settings:
        sub.append(f"{settings['n_boot']} bootstrap replicates, seed {settings.get('seed')}")
    version = (result.get("versions") or {}).get("attrpreserve")
    if version:
        sub.append(f"attrpreserve {version}")
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    out_html.write_text(_document(title, sub, sections), encoding="utf-8")
    return out_html
