"""The audit page: ``write_audit_report(audit_result, "audit.html", model_a, model_b, dataset)``.

For an :func:`attrpreserve.evaluate.audit` result: how far did B's explanations move from A's,
with CIs, hidden disagreement, per-image and per-class numbers and an "explanation forgotten"
gallery of the most moved images (vanished explanations first). Every image count on the page
is over the same images: those with at least one (image, class) pair.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..attribution import EXPLAINERS
from ..fileio import atomic_write_text
from ..results_schema import validate_audit
from . import figures
from .html import card, document, escape, kv_table, table, wrapped
from .maps import pick_images, maps_of
from .words import (AUDIT_AGREEMENT, AUDIT_LOCALIZATION, audit_confidence, audit_headline,
                    cells_words, class_name, compared_images, d3, f3, image_label, low_rule,
                    mean_of, num, pct_or_dash, thresholds)

__all__ = ["write_audit_report"]

LOWER_IS_BETTER = frozenset({"deletion_auc", "com_shift"})
PER_IMAGE_ROWS = 200  # the per-image table is listed up to this many images


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
    A result that does not follow :data:`attrpreserve.results_schema.AUDIT` raises
    ``SchemaError`` (a ``ValueError``).
    """
    validate_audit(result)
    names = (str(names[0]), str(names[1]))
    found = list(result["explainers"])
    explainers = [e for e in explainers if e in found] if explainers else found
    class_names = [str(c) for c in (classes or result["class_names"])]
    settings = result["settings"]
    sections = [
        ("headline", f"How far did {names[1]}'s explanations move from {names[0]}'s?",
         _headline_html(result, explainers, names),
         f"B = {names[1]} is compared with A = {names[0]} on every (image, ground-truth class) "
         f"pair. Agreement 1 = identical maps; intervals are {audit_confidence(result):.0%} "
         f"bootstrap CIs over images. Low agreement = {low_rule(result)}, a cell being one "
         f"cell of the explainer's own map (its px in each card)."),
        ("tables", "Numbers", _tables_html(result, explainers, names),
         f"Differences are {names[1]} - {names[0]}; a difference is coloured when its CI "
         f"excludes 0 (red: {names[1]} worse, green: better)."),
        ("distribution", "Per-image agreement",
         _distribution_html(result, explainers, class_names),
         "Mean Spearman over each image's ground-truth classes (a blank map against a "
         "non-blank one scores 0); the dashed line is the low-agreement threshold."),
    ]
    if "gate" in result:  # audit --require: the verdict first
        sections.insert(0, _gate_section(result["gate"]))
    per_class = _per_class_html(result, explainers, class_names, names)
    if per_class:
        sections.append(("per-class", "Per class", per_class, ""))
    if any(result["explainers"][e]["most_moved"] for e in explainers):
        sections.append(("gallery", "Explanation forgotten",
                         _gallery_html(result, explainers, class_names, names, model_a,
                                       model_b, images), ""))
    sections.append(("settings", "Settings and versions",
                     _settings_html(result, class_names), ""))
    sub = [f"A = {names[0]}, B = {names[1]}",
           f"{f3(result['images'])} images, {f3(result['pairs'])} pairs",
           "masks: " + ("yes" if result["localization"] else "no"),
           f"{settings['n_boot']} bootstrap replicates, seed {settings['seed']}"]
    if "versions" in result:
        sub.append(f"attrpreserve {result['versions']['attrpreserve']}")
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_html, document(title, sub, sections))
    return out_html


def _gate_section(verdict: dict) -> tuple[str, str, str, str]:
    """The release gate's section: one row per check, its requirement, value and outcome."""
    rows = [[c["requirement"], c["explainer"] or "task", "–" if c["value"] is None else
             c["value"], "pass" if c["passed"] else "FAIL", c["line"]] for c in verdict["checks"]]
    body = table(["requirement", "explainer", "value", "outcome", "statement"], rows,
                 numeric_from=2)
    failed = sum(not c["passed"] for c in verdict["checks"])
    title = "Release gate: " + ("passed" if verdict["passed"] else f"failed ({failed} of "
                                f"{len(verdict['checks'])} checks)")
    return ("gate", title, body, "The requirements given to audit --require, each checked on "
            "every audited explainer it applies to; a missing or undefined value fails.")


def _headline_html(result: dict, explainers: list[str], names) -> str:
    """One card per explainer: the verdict in bold, then the supporting sentences."""
    if not explainers:
        return "<p>The audit holds no explainer results.</p>"
    cards = []
    for e in explainers:
        item = audit_headline(result, e, names)
        cards.append(card(e, item["summary"], item["sentences"], verdict=True))
    return "\n".join(cards)


def _ci_class(entry: dict, lower_is_better: bool = False) -> str:
    """"bad" / "good" when the CI of a B - A difference lies wholly below / above zero."""
    lo, hi = num(entry["ci_low"]), num(entry["ci_high"])
    if lo is None or hi is None or lo <= 0 <= hi:
        return ""
    worse = hi < 0 if not lower_is_better else lo > 0
    return "bad" if worse else "good"


def _delta_table(block: dict, names, caption: str) -> str:
    """Rows = metrics; A, B, B - A and its CI; the difference coloured when its CI excludes 0."""
    a, b = names
    rows, classes = [], []
    for key, entry in block.items():
        rows.append([AUDIT_LOCALIZATION.get(key, key), num(entry["a"]), num(entry["b"]),
                     d3(entry["delta"]), d3(entry["ci_low"]), d3(entry["ci_high"])])
        classes.append(["", "", "", _ci_class(entry, key in LOWER_IS_BETTER), "", ""])
    header = ["metric", a, b, f"difference ({b} - {a})", "CI low", "CI high"]
    return wrapped(table(header, rows, caption, classes=classes))


HIDDEN_GROUPS = (("same decision", "same_decision_pairs", "share_low_among_same_decision"),
                 ("both predict the class", "both_predicted_pairs",
                  "share_low_among_both_predicted"),
                 ("different decisions", "different_decision_pairs",
                  "share_low_among_different_decision"))
SINGLE_LABEL_GROUPS = ("same top-1", "both top-1 = the class", "different top-1")


def _task_html(task: dict, names) -> str:
    """Each model's task quality and how often their predictions agree: top-1 for a
    single-label (softmax) task, mAP / F1 and sigmoid decisions for a multi-label one."""
    a, b = names
    if task.get("single_label"):
        rows = [["top-1 accuracy", num(task["a"].get("top1")), num(task["b"].get("top1"))]]
        keys = ("top1_agreement",)
    else:
        rows = [[k, num(task["a"].get(k)), num(task["b"].get(k))] for k in ("mAP", "F1")]
        keys = ("pair_decision_agreement", "decision_agreement", "label_set_agreement")
    defs = task.get("definitions", {})
    agree = [[k.replace("_", " ").replace("top1", "top-1"), num(task.get(k)), defs.get(k, "")]
             for k in keys]
    return ("<div class='grid'>" + table(["task", a, b], rows, "Task quality")
            + table(["prediction agreement", "share", "meaning"], agree,
                    "Do the two models decide alike?", numeric_from=1,
                    classes=[["", "", "text"]] * len(agree))
            + "</div>")


def _tables_html(result: dict, explainers: list[str], names) -> str:
    """Task agreement; per explainer: agreement, hidden disagreement, localisation and
    faithfulness tables."""
    a, b = names
    conf = audit_confidence(result)
    _, tol = thresholds(result)
    groups = [(w, n, s) for w, (_, n, s) in zip(SINGLE_LABEL_GROUPS, HIDDEN_GROUPS)] \
        if result["task"].get("single_label") else HIDDEN_GROUPS
    parts = [_task_html(result["task"], names)]
    for e in explainers:
        rep = result["explainers"][e]
        agr = rep["agreement"]
        label = {"argmax_agree": f"peaks within {cells_words(tol, rep)}"}
        rows = [[label.get(k, words), mean_of(agr[k]), num(agr[k]["ci_low"]),
                 num(agr[k]["ci_high"]), ideal] for k, words, ideal in AUDIT_AGREEMENT if k in agr]
        parts.append(f"<h3>{escape(e)}</h3>")
        hidden = rep["hidden_disagreement"]
        hrows = [[g, hidden[n] if n else result["pairs"], pct_or_dash(mean_of(hidden[s])),
                  pct_or_dash(hidden[s]["ci_low"]), pct_or_dash(hidden[s]["ci_high"])]
                 for g, n, s in (("all pairs", None, "share_low"), *groups)]
        parts.append("<div class='grid'>"
                     + table(["metric", "mean", f"{conf:.0%} CI low", f"{conf:.0%} CI high",
                              "identical maps"], rows,
                             f"Agreement of {b}'s {e} maps with {a}'s (mean over pairs)")
                     + table(["pairs where", "pairs", "low agreement", "CI low", "CI high"],
                             hrows, f"Hidden disagreement ({low_rule(result, rep)})")
                     + "</div>")
        if rep["localization"]:
            parts.append(_delta_table(rep["localization"], names,
                                      f"Localisation against the masks ({e})"))
        if rep["faithfulness"]:
            parts.append(_delta_table(rep["faithfulness"], names,
                                      f"Faithfulness ({e}; deletion AUC: lower is better)"))
    if not result["localization"]:
        parts.append("<p class='note'>No masks in the audited data: localisation skipped.</p>")
    return "\n".join(parts)


def _per_class_html(result: dict, explainers: list[str], class_names: list[str],
                    names) -> str:
    """Rows = classes: pairs, agreement (Spearman with CI) and localisation differences."""
    conf = audit_confidence(result)
    parts = []
    for e in explainers:
        pc = result["explainers"][e]["per_class"]
        if not pc:
            continue
        loc = [k for k in ("pointing_game", "pointing_game_std", "auc")
               if any(k in row for row in pc.values())]
        header = (["class", "pairs", "Spearman", f"{conf:.0%} CI", "SSIM", "peaks agree",
                   "CoM shift px"] + [f"{AUDIT_LOCALIZATION[k]} difference" for k in loc])
        rows, classes = [], []
        for c in sorted(pc, key=lambda k: int(k)):
            row = pc[c]
            rho = row["spearman"]
            ci = (f"{f3(num(rho['ci_low']))} to {f3(num(rho['ci_high']))}"
                  if num(rho["ci_low"]) is not None else "–")
            rows.append([class_name(class_names, int(c)), row["pairs"], mean_of(rho), ci,
                         mean_of(row["ssim"]), mean_of(row["argmax_agree"]),
                         mean_of(row["com_shift"])]
                        + [d3(row[k]["delta"]) if k in row else "–" for k in loc])
            classes.append([""] * 7 + [_ci_class(row[k]) if k in row else "" for k in loc])
        cap = f"Per class ({e}): agreement of {names[1]} with {names[0]}" + (
            f"; differences {names[1]} - {names[0]} (coloured when the CI excludes 0)"
            if loc else "")
        parts.append(wrapped(table(header, rows, cap, classes=classes)))
    return "\n".join(parts)


def _distribution_html(result: dict, explainers: list[str], class_names) -> str:
    """The per-image Spearman histograms, then each explainer's per-image table (folded; up to
    :data:`PER_IMAGE_ROWS` images), both over the images with pairs."""
    low, _ = thresholds(result)
    values = {e: [r["spearman"] for r in compared_images(result["explainers"][e])]
              for e in explainers}
    values = {e: v for e, v in values.items() if v}
    parts = [figures.spearman_histograms(values, low) if values else
             "<p>No image with a ground-truth class: nothing to compare.</p>"]
    left_out = result["images"] - max((len(v) for v in values.values()), default=0)
    if left_out:
        parts.append(f"<p class='note'>{left_out} of {result['images']} images have no "
                     f"ground-truth class, so no pair: they are in no count on this page.</p>")
    single = result["task"].get("single_label", False)
    for e in explainers:
        rows_in = compared_images(result["explainers"][e])
        if not rows_in or len(rows_in) > PER_IMAGE_ROWS:
            continue
        deltas = [k for k in rows_in[0] if k.startswith("delta_")]
        header = (["image", "classes", "Spearman", "SSIM", "peaks agree", "blank map"]
                  + (["A top-1", "B top-1", "same top-1"] if single else ["label sets agree"])
                  + [k[6:].replace("_", " ") + " diff." for k in deltas])
        rows = [[r.get("name", r["index"]),
                 ", ".join(class_name(class_names, c) for c in r["classes"]),
                 num(r["spearman"]), num(r["ssim"]), num(r["argmax_agree"]),
                 _blank_words(r["blank"])]
                + ([class_name(class_names, r["top1_a"]), class_name(class_names, r["top1_b"])]
                   if single else [])
                + [_yes_no(r["predictions_agreed"])]
                + [d3(r.get(k)) for k in deltas] for r in rows_in]
        parts.append(f"<details><summary>per-image numbers ({escape(e)}; blank map: the model "
                     f"whose map is constant where the other's is not)</summary>"
                     f"{wrapped(table(header, rows, numeric_from=2))}</details>")
    return "\n".join(parts)


def _blank_words(blank: list[str]) -> str:
    """Which model's map vanished on an image ("A", "B"), or "" when none did."""
    return ", ".join(side.upper() for side in blank)


def _explained_pair(entry: dict) -> dict:
    """The pair of a most-moved image whose maps moved most: a vanished one, else the lowest
    Spearman."""
    return min(entry["pairs"], key=lambda p: (p["blank"] is None, num(p["spearman"])))


def _gallery_html(result: dict, explainers: list[str], class_names: list[str], names,
                  model_a, model_b, images) -> str:
    """Per explainer: the most-moved images as image | A's map | B's map (when the models and
    images are given), and a table of them."""
    a, b = names
    cols = (f"{a} (A)", f"{b} (B)")
    layers = result["settings"]["layers"]
    draw = model_a is not None and model_b is not None and images is not None
    single = result["task"].get("single_label", False)
    parts = ["<p class='note'>The images whose explanations moved most, in that order: those "
             "where one model's map is blank (constant) and the other's is not first, then the "
             "lowest mean Spearman over their ground-truth classes. Each row explains the "
             "image's class whose maps moved most (row label: the image's file name, else its "
             "index in loader order, class, that pair's Spearman). The object of that class is "
             "outlined in white where "
             "masks exist; p = each model's probability for the class (softmax for single-label "
             "models, sigmoid for multi-label ones). Maps are upsampled "
             "to the image size and scaled to their own maximum.</p>"]
    if not draw:
        parts.append("<p class='note'>Maps not drawn: pass both models and the audited images "
                     "to draw them.</p>")
    for e in explainers:
        moved = result["explainers"][e]["most_moved"]
        if not moved:
            continue
        parts.append(f"<h3>{escape(e)}</h3>")
        explained = [_explained_pair(m) for m in moved]
        probs = None
        if draw and e in EXPLAINERS:
            try:
                imgs = pick_images(images, [m["index"] for m in moved])
                classes = torch.tensor([p["class"] for p in explained])
                size = tuple(imgs.masks.shape[-2:])
                maps, probs = {}, {}
                for col, model, side in ((cols[0], model_a, "a"), (cols[1], model_b, "b")):
                    maps[col], probs[col] = maps_of(model, e, imgs.images, classes,
                                                    layers.get(side), size)
                notes = [f"{image_label(m)}  ρ = {f3(num(p['spearman']))}"
                         + (f", {p['blank'].upper()} blank" if p["blank"] else "")
                         for m, p in zip(moved, explained)]
                parts.append(figures.heatmap_grid(imgs, list(cols), maps, probs, classes,
                                                  class_names, e, row_notes=notes))
            except (RuntimeError, IndexError, KeyError, ValueError, TypeError) as exc:
                probs = None  # a page should not die on a gallery it cannot draw
                parts.append(f"<p class='note'>Not drawn ({escape(e)}): "
                             f"{escape(f'{type(exc).__name__}: {exc}')}</p>")
        elif draw:
            parts.append(f"<p class='note'>Unknown explainer {escape(e)}: maps not "
                         f"drawn.</p>")
        header = ["rank", "image", "classes", "explained class", "pair Spearman",
                  "image mean Spearman", "peaks agree", "blank map"]
        header += [f"{a} top-1", f"{b} top-1"] if single else [f"{a} predicts", f"{b} predicts"]
        if probs is not None:
            header += [f"{a} p", f"{b} p"]
        header.append("same top-1" if single else "label sets agree")
        rows = []
        for r, (m, p) in enumerate(zip(moved, explained)):
            row = [r + 1, m.get("name", m["index"]),
                   ", ".join(class_name(class_names, c) for c in m["classes"]),
                   class_name(class_names, p["class"]), num(p["spearman"]), num(m["spearman"]),
                   _yes_no(p["argmax_agree"]), _blank_words(m["blank"])]
            row += ([class_name(class_names, m["top1_a"]), class_name(class_names, m["top1_b"])]
                    if single else [_yes_no(p["predicted_a"]), _yes_no(p["predicted_b"])])
            if probs is not None:
                row += [float(probs[cols[0]][r]), float(probs[cols[1]][r])]
            row.append(_yes_no(m["predictions_agreed"]))
            rows.append(row)
        parts.append(wrapped(table(header, rows, f"Explanation forgotten ({e})",
                                   numeric_from=4)))
    return "\n".join(parts)


def _yes_no(v) -> str:
    return "–" if v is None else "yes" if v else "no"


def _settings_html(result: dict, class_names: list[str]) -> str:
    """Audit settings, what was audited, versions, and every metric's definition."""
    data = {k: result[k] for k in ("images", "pairs", "localization")}
    if class_names:
        data["classes"] = class_names
    parts = [kv_table(result["settings"], "audit settings"), kv_table(data, "audited data")]
    if "versions" in result:
        parts.append(kv_table(result["versions"], "versions"))
    out = "<div class='grid'>" + "\n".join(parts) + "</div>"
    defs = result["definitions"]
    if defs:
        rows = [[str(k), str(v)] for k, v in defs.items()]
        out += ("<details><summary>definitions of the metrics</summary>"
                + table(["metric", "definition"], rows, numeric_from=2,
                        classes=[["", "text"]] * len(rows)) + "</details>")
    return out
