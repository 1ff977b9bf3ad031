"""The results page: ``write_report(results, "report.html", heatmaps=..., histories=...)``.

Turns a results.json document (``pipeline.evaluate``) into one HTML file that opens offline. It
answers, in plain sentences first, whether compression moved the explanations and how much of
that each attribution-matched run won back, then shows the tables, plots, heatmaps, training
curves and configuration behind it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..fileio import atomic_write_text
from ..loading import load_model
from ..models.checkpoint import SIDECAR
from ..results_schema import CENTER_BASELINE, SELF_AGREEMENT, validate_results
from . import figures
from .html import card, cell, document, escape, kv_table, note, omitted, table, wrapped
from .maps import Heatmaps, ReportImages
from .maps import heatmaps as maps_heatmaps
from .words import (PAIR_SET_WORDS, class_name, explainers_in, f3, gap_entry, gap_words,
                    headline, is_control, is_single_label, method_of, metric, naive_run, num,
                    ordered_runs, pair_count, recipe_groups, role_of, teacher_run)

__all__ = ["write_report"]

# (header, words.metric key); a header breaks at "\n" only. Columns without a value in any run
# are left out (mAP / F1 of single-label models, top-1 agreement without a teacher, ...).
TASK_COLUMNS = (("mAP", "mAP"), ("F1\nat 0.5", "F1"),
                ("F1 at val\nthreshold", "F1_at_val_threshold"), ("top-1", "top1"),
                ("top-1\nagreement", "top1_agreement"))
AGREEMENT_COLUMNS = (("Spearman", "spearman"), ("top-10%\nIoU", "topk_iou"),
                     ("peak dist.\n(px)", "peak_distance"), ("cosine", "cosine"),
                     ("argmax\nagree", "argmax_agree"))
# localisation on the fixed pair sets ("SET/KEY"), the same pairs for every run
LOCALIZATION_COLUMNS = (("PG\nall", "all/pointing_game"), ("AUC\nall", "all/auc"),
                        ("energy PG\nall", "all/energy_pg"),
                        ("PG all\n(class-bal.)", "all/balanced:pointing_game"),
                        ("PG\nT-correct", "teacher_correct/pointing_game"),
                        ("AUC\nT-correct", "teacher_correct/auc"),
                        ("P(hit |\nT hit)", "hit_given_teacher_hit"))
# each model's own predicted pairs (the paper's pooling), each beside its centre baseline
PAPER_COLUMNS = (("PG\n(paper)", "pointing_game"), ("AUC\n(paper)", "auc"),
                 ("PG\n15 px", "pointing_game_std"), ("energy\nPG", "energy_pg"))
# (header, metric) of the gap-recovered columns of each table
# (header, metric, against): the gap to the teacher, and the compression-caused gap (control
# minus naive) where the results have a fine-tune-only control
AGREEMENT_GAPS = (("Spearman gap\nrecovered", "spearman", "teacher"),
                  ("Spearman gap\nbeyond control\nrecovered", "spearman", "control"))
LOCALIZATION_GAPS = (("PG gap\nrecovered", "pointing_game", "teacher"),
                     ("AUC gap\nrecovered", "auc", "teacher"),
                     ("AUC gap\nbeyond control\nrecovered", "auc", "control"))
COST_COLUMNS = (("params", "params"), ("non-zero\nparams", "nonzero_params"), ("MACs", "macs"),
                ("bytes", "bytes"), ("latency\nms", "latency_ms"))
METRIC_WORDS = {**dict(figures.PLOT_METRICS), **dict(figures.TABLE_METRICS)}
NO_MASKS = "the evaluated images have no object masks or boxes"


def write_report(results: dict, out_html: str | Path,
                 checkpoints: dict[str, str | Path] | None = None,
                 images: ReportImages | tuple | None = None,
                 explainers: list[str] | tuple[str, ...] | None = None,
                 title: str = "attrpreserve report", target: str = "truth",
                 heatmaps: Heatmaps | None = None,
                 histories: dict[str, dict] | None = None) -> Path:
    """Write a self-contained HTML report of a results.json document to ``out_html``.

    Sections: headline sentences, results tables, bar charts, size sweeps (if
    ``results["sweeps"]``), heatmap grids, per-class tables, training curves, configuration
    and versions. The heatmaps are ``heatmaps`` (:func:`maps.heatmaps` of models already
    loaded, as the pipeline passes them), else computed from ``checkpoints`` name -> dir on
    ``images`` (a :class:`ReportImages` or an ``(images, labels, masks)`` tuple) when both are
    given; training curves are ``histories`` (name -> checkpoint history), else read from the
    checkpoints' sidecars.
    ``explainers``: those to report (default: every one in the results, else Grad-CAM).
    ``target``: heatmaps explain the ground-truth class ("truth") or the top-1 class ("top1")
    of the first (teacher) model. A document that does not follow
    :data:`attrpreserve.results_schema.RESULTS` raises ``SchemaError`` (a ``ValueError``).
    """
    if target not in ("truth", "top1"):
        raise ValueError(f"target must be 'truth' or 'top1', got {target!r}")
    validate_results(results)
    checkpoints = {str(k): Path(v) for k, v in (checkpoints or {}).items()}
    found = explainers_in(results)
    explainers = list(explainers) if explainers else (found or ["gradcam"])
    table_explainers = [e for e in explainers if e in found] or found
    notes = "".join(note(str(n)) for n in results.get("notes", []))
    roles = "; ".join(f"{r['name']}: {role_of(results, r)}" for r in ordered_runs(results))
    sections = [("headline", "Did compression move the explanations?",
                 _headline_html(results, table_explainers) + notes
                 + note(f"Runs by role (reference = the teacher whose maps the others are "
                        f"compared with): {roles}."),
                 "Agreement compares each run's maps with the teacher's on every ground-truth "
                 "pair (1 = identical). Gap = teacher minus naive run on a fixed pair set (the "
                 "same pairs for every model); gap recovered = (matched - naive) / gap, with "
                 "the 95% interval of the ratio from a paired image bootstrap, reported only "
                 "where the gap's own 95% interval excludes 0 (else \"no gap\")."),
                ("results", "Results", _tables_html(results, table_explainers),
                 "Task quality (single-label models: top-1; multi-label ones: mAP, F1 at "
                 "probability 0.5 and at the threshold that maximises F1 on the val split), "
                 "then agreement with the teacher's maps on every ground-truth pair. PG / AUC "
                 "/ energy PG all = pointing game / localisation AUC / energy pointing game on "
                 "all ground-truth pairs, T-correct = on the pairs the teacher predicts "
                 "correctly (pooled; class-bal. = mean of per-class means); P(hit | T hit) = "
                 "the run's pointing-game hits among the pairs where the teacher's map hits. "
                 "The centre baseline scores a map that ignores the image (a Gaussian at the "
                 "image centre) on the same pairs. The paper-comparable table pools each "
                 "model's own predicted pairs, so its models are scored on different pairs: "
                 "compare it with the paper, not across runs.")]
    if recipe_groups(results):
        sections.append(("plots", "Metrics per recipe", _plots_html(results, table_explainers),
                         "Bars: naive (grey), AT (orange), WCAM (blue) runs of each recipe; "
                         "dashed line: the teacher; dotted: the centre baseline."))
    else:
        sections.append(("plots", "Metrics per recipe", None, "no compressed runs to compare"))
    if results.get("sweeps"):
        sections.append(("sweeps", "Metrics against model size", _sweeps_html(results), ""))
    if heatmaps is None and checkpoints and images is not None:
        models, _, failures = load_checkpoints(column_order(results, checkpoints), checkpoints)
        heatmaps = maps_heatmaps(models, images, explainers, target, failures)
    sections.append(("heatmaps", "Attribution maps", _heatmaps_html(results, heatmaps), "")
                    if heatmaps is not None else
                    ("heatmaps", "Attribution maps", None, "no models were given to draw them"))
    per_class = _per_class_html(results, table_explainers)
    sections.append(("per-class", "Per class", per_class or None,
                     "" if per_class else "the results hold no per-class numbers"))
    if histories is None:
        histories = sidecar_histories(checkpoints)
    training = _training_html(histories)
    sections.append(("training", "Training curves", training or None,
                     "Loss terms per epoch (left axis) and validation mAP (dashed, right "
                     "axis); pruning runs: best validation mAP and sparsity per round."
                     if training else "no run has a training history (pretrained models)"))
    sections.append(("config", "Configuration and versions", _config_html(results), ""))
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_html, document(title, _subtitle(results), sections))
    return out_html


def _subtitle(results: dict) -> list[str]:
    """Data, seed and version."""
    ds = results["dataset"]
    return [f"data {ds['spec']} / {ds['split']}, {f3(ds['images'])} images, "
            f"{len(ds['classes'])} classes", f"seed {results['seed']}",
            f"attrpreserve {results['versions']['attrpreserve']}"]


def _headline_html(results: dict, explainers: list[str]) -> str:
    """One card per (explainer, recipe): the summary in bold, then one sentence per metric."""
    if teacher_run(results) is None:
        return "<p>No teacher run: nothing to compare the maps with.</p>"
    if not recipe_groups(results):
        return ("<p>No compressed runs to compare with the teacher: the tables below score "
                "each model on its own.</p>")
    return "\n".join(card(f"{item['recipe']} ({e})", item["summary"], item["sentences"])
                     for e in explainers or ["gradcam"] for item in headline(results, e))


def _gap_cell(run, naive, key, explainer, against="teacher") -> tuple[str, str]:
    """Text and CSS class of a run's "gap recovered" cell for one metric (all pairs, pooled),
    ``against`` the teacher or the control: empty for the runs without a gap of their own
    (reference, control, uncompressed, naive), "–" for a matched run without a naive run or an
    entry."""
    if run is naive or method_of(run) == "none" or is_control(run):
        return "", ""
    e = None if naive is None else gap_entry(run, key, explainer, against=against)
    text = gap_words(e).replace(" (95% CI ", " (").replace(" to ", "–")
    if e is None or e["status"] != "ok":
        return text, "tag"
    lo, hi = num(e["ci_low"]), num(e["ci_high"])
    return text, ("good" if lo is not None and lo >= 0.5 else
                  "bad" if hi is not None and hi < 0.1 else "")


def _present(runs: list[dict], columns, explainer) -> list[tuple[str, str]]:
    """The ``(header, key)`` columns that some run has a value of."""
    return [(h, k) for h, k in columns if any(metric(r, k, explainer) is not None for r in runs)]


def _run_table(results, runs, columns, gaps, explainer, caption, extra_rows=()) -> str:
    """One row per run: name, role, recipe, the ``columns`` present and, where some matched
    run has them, the ``gaps`` columns; ``extra_rows`` (e.g. the centre baseline) below."""
    naive_of = {id(r): naive_run(group) for group in recipe_groups(results).values()
                for r in group}
    gaps = [(h, k, a) for h, k, a in gaps
            if any(gap_entry(r, k, explainer, against=a) for r in runs)]
    rows, classes = [], []
    for r in runs:
        row = [r["name"], role_of(results, r),
               "–" if method_of(r) == "none" else r.get("recipe_label") or method_of(r)]
        row += [metric(r, k, explainer) for _, k in columns]
        cls = [""] * len(row)
        for _, k, a in gaps:
            text, c = _gap_cell(r, naive_of.get(id(r)), k, explainer, a)
            row.append(text)
            cls.append(c)
        rows.append(row)
        classes.append(cls)
    for label, values in extra_rows:
        rows.append([label, "no model", ""] + values + [""] * len(gaps))
        classes.append(["base"] * len(rows[-1]))
    header = ["run", "role", "recipe"] + [h for h, _ in columns] + [h for h, *_ in gaps]
    return wrapped(table(header, rows, caption, 3, classes))


def _localized(results: dict, explainer: str) -> bool:
    """Whether some run has a localisation number (the data had masks or boxes)."""
    return bool(_present(results["runs"], LOCALIZATION_COLUMNS + PAPER_COLUMNS, explainer))


def _tables_html(results: dict, explainers: list[str]) -> str:
    """Per explainer: task and agreement with the teacher; localisation on the fixed pair sets
    with the centre baseline; the paper-comparable numbers; then one cost table. A table
    without data is one line saying why."""
    runs = ordered_runs(results)
    parts = []
    for e in explainers or [None]:
        n_all, n_tc = (pair_count(runs, s, e) for s in PAIR_SET_WORDS)
        columns = _present(runs, TASK_COLUMNS + AGREEMENT_COLUMNS, e)
        parts.append(_run_table(
            results, runs, columns, AGREEMENT_GAPS, e,
            f"Task and agreement with the teacher's {e} maps on all {f3(n_all)} ground-truth "
            f"pairs (gap recovered: pooled, with 95% CI)" if e else "Task metrics"))
        if any(is_single_label(r) for r in runs) and not _present(runs, TASK_COLUMNS[:3], e):
            parts.append(omitted("mAP and F1", "single-label (softmax) models are scored by "
                                               "top-1 against the labels"))
        if e is None:
            continue
        if not _localized(results, e):
            parts.append(omitted(f"Localisation ({e})", NO_MASKS))
            continue
        columns = _present(runs, LOCALIZATION_COLUMNS, e)
        baseline = [figures.center_baseline(results, k, e) for _, k in columns]
        parts.append(_run_table(
            results, runs, columns, LOCALIZATION_GAPS, e,
            f"{e} localisation on fixed pairs ({f3(n_all)} ground-truth pairs, {f3(n_tc)} "
            f"teacher-correct; gap recovered on all pairs, pooled, with 95% CI)",
            [("centre baseline", baseline)] if any(v is not None for v in baseline) else ()))
        header, paper = ["run", "predicted\npairs"], []
        for h, _ in PAPER_COLUMNS:
            header += [h, "centre\nbaseline"]
        for r in runs:
            row = [r["name"], metric(r, "predicted_pairs", e)]
            for _, k in PAPER_COLUMNS:
                row += [metric(r, k, e), metric(r, k + CENTER_BASELINE, e)]
            paper.append(row)
        parts.append(wrapped(table(header, paper,
                                   f"Paper-comparable {e} numbers: pooled over each model's own "
                                   f"predicted pairs (not comparable across runs), each beside "
                                   f"the centre baseline on the same pairs")))
    costs = _present(runs, COST_COLUMNS, None)
    training = [(h, k) for h, k in (("best\nepoch", "best_epoch"), ("best\nval mAP",
                                                                   "best_val_mAP"))
                if any(num(r["training"][k]) is not None for r in runs)]
    cost_rows = [[r["name"]] + [metric(r, k) for _, k in costs]
                 + [r["training"][k] for _, k in training] for r in runs]
    parts.append(wrapped(table(["run"] + [h for h, _ in costs + training], cost_rows,
                               "Cost (measured side by side)"
                               + (" and model selection" if training else ""))))
    return "\n".join(parts)


def _plots_html(results: dict, explainers: list[str]) -> str:
    parts = []
    for e in explainers or ["gradcam"]:
        parts.append(f"<h3>{escape(e)}</h3>" + figures.metric_bars(results, e))
        if not _localized(results, e):
            parts.append(omitted("Localisation charts", NO_MASKS))
    return "\n".join(parts)


def _sweeps_html(results: dict) -> str:
    """Each metric against model size, one row of panels per recipe, one line per matching;
    the numbers in a folded table."""
    sweeps = results["sweeps"]
    size_key = "size_bytes" if any(num(s.get("size_bytes")) for s in sweeps) else "params"
    teacher = teacher_run(results)
    explainer = (explainers_in(results) or ["gradcam"])[0]
    teacher_values = {key: None if key in SELF_AGREEMENT or teacher is None
                      else metric(teacher, key, explainer) for key, _ in figures.SWEEP_METRICS}
    rows = [[s["recipe"], s["matching"], s["strength"], s.get(size_key)]
            + [s.get(k) for k, _ in figures.SWEEP_METRICS] for s in sweeps]
    numbers = table(["recipe", "matching", "strength", size_key]
                    + [w for _, w in figures.SWEEP_METRICS], rows, numeric_from=2)
    return (figures.sweep_curves(sweeps, size_key, teacher_values)
            + f"<details><summary>sweep numbers</summary>{numbers}</details>")


# --------------------------------------------------------------------------------------------
# Heatmaps
# --------------------------------------------------------------------------------------------

def load_checkpoints(names: list[str], checkpoints: dict[str, Path]
                     ) -> tuple[dict[str, torch.nn.Module], dict[str, dict], list[str]]:
    """Models of checkpoint folders, for a page drawn from files alone (the pipeline passes
    :class:`Heatmaps` of the models it loaded instead): ``(models, sidecars, failures)``; one
    that cannot be read is listed in ``failures`` ("name: why"), not fatal."""
    models, metas, failures = {}, {}, []
    for name in names:
        try:
            models[name], metas[name] = load_model(checkpoints[name])
        except (OSError, ValueError) as exc:  # a report should not die on one bad checkpoint
            failures.append(f"{name}: {exc}")
    return models, metas, failures


def column_order(results: dict, names) -> list[str]:
    """Models in the page's column order: the results' runs first (teacher, then each recipe's
    naive and matched runs), then any others."""
    order = [r["name"] for r in ordered_runs(results)]
    names = list(names)
    return [n for n in order if n in names] + [n for n in names if n not in order]


def _heatmaps_html(results: dict, hm: Heatmaps) -> str:
    """One grid per explainer of the maps in ``hm`` (upsampled to the input size, scaled per
    map for display)."""
    notes = "".join(note(f"Not drawn: {s}") for s in hm.skipped)
    if not hm.names:
        return notes or "<p>No checkpoints to draw.</p>"
    class_names = list(results["dataset"]["classes"])
    size = tuple(hm.images.images.shape[-2:])
    first = hm.names[0]
    which = ("the ground-truth class the first model (" + first + ") scores highest"
             if hm.target == "truth" else f"the first model's ({first}) top-1 class")
    parts = [notes + f"<p class='note'>Each row explains {escape(which)} (row label), "
             f"the same class in every column. The object of that class is outlined in white; "
             f"p = the model's probability for the class (softmax for single-label models, "
             f"sigmoid for multi-label ones). Maps are upsampled to "
             f"{size[0]}x{size[1]} and scaled to their own maximum (signed maps: blue negative, "
             f"red positive).</p>"]
    runs = {r["name"]: r for r in results["runs"]}
    titles = [f"{n} ({role_of(results, runs[n])})" if n in runs else n for n in hm.names]
    for e, maps in hm.maps.items():
        parts.append(f"<h3>{escape(e)}</h3>"
                     + figures.heatmap_grid(hm.images, hm.names, maps, hm.probs[e], hm.classes,
                                            class_names, e, titles=titles))
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
    """Rows = classes with a value, columns = runs: task.per_class_AP (multi-label) and
    per_class_top1 (single-label), and each attribution[e].per_class metric with a value.
    Empty string when the results carry none."""
    runs = ordered_runs(results)
    names = list(results["dataset"]["classes"])
    tables = []

    def per_class(r, e):
        return r["attribution"].get(e, {}).get("per_class", {})

    entries = [("AP", None, lambda r: r["task"]["per_class_AP"]),
               ("top-1", None, lambda r: r["task"].get("per_class_top1"))]
    for e in explainers:
        keys = []
        for r in runs:
            keys += [k for k in per_class(r, e) if k not in keys]
        entries += [(k, e, (lambda r, e=e, k=k: per_class(r, e).get(k))) for k in keys]
    for key, e, get in entries:
        values = {r["name"]: get(r) for r in runs}
        listed = [v for v in values.values() if v]
        k = max([len(names)] + [len(v) if isinstance(v, (list, tuple)) else
                                1 + max(int(c) for c in v) for v in listed])
        rows = [[class_name(names, c)]
                + [num(_per_class_value(v, c)) if v else None for v in values.values()]
                for c in range(k)]
        rows = [row for row in rows if any(v is not None for v in row[1:])]
        if not rows:
            continue
        cap = f"per-class {METRIC_WORDS.get(key, key)}" + (f" ({e})" if e else "")
        tables.append(wrapped(table(["class"] + list(values), rows, cap)))
    return "\n".join(tables)


def sidecar_histories(checkpoints: dict) -> dict[str, dict]:
    """Training histories from the checkpoints' sidecars (read without the weights;
    unreadable ones skipped)."""
    hist = {}
    for name, d in checkpoints.items():
        try:
            hist[name] = json.loads((Path(d) / SIDECAR).read_text()).get("history") or {}
        except (OSError, ValueError):
            continue
    return hist


def _training_html(histories: dict[str, dict]) -> str:
    """Training curves of the runs whose history holds epochs or pruning rounds."""
    hist = {n: h for n, h in histories.items() if h.get("epochs") or h.get("rounds")}
    return figures.training_curves(hist) if hist else ""


def _config_html(results: dict) -> str:
    """Demo settings, dataset, each run's compression settings, seed and versions as tables."""
    parts = []
    if "demo" in results:
        parts.append(kv_table(results["demo"], "demo settings"))
    parts.append(kv_table(results["dataset"], "data"))
    runs = ordered_runs(results)
    keys = list(dict.fromkeys(k for r in runs for k in r["compression"]))
    if keys:
        rows = [[r["name"]] + [r["compression"].get(k) for k in keys] for r in runs]
        parts.append(wrapped(table(["run"] + keys, rows, "compression settings", fmt=cell)))
    parts.append(kv_table({k: results[k] for k in ("seed", "wall_seconds") if k in results},
                          "run"))
    parts.append(kv_table(results["versions"], "versions"))
    return "<div class='grid'>" + "\n".join(parts) + "</div>"
