"""The judgement in plain sentences, and the numbers as text.

Reads results documents (``results.json``, ``audit.json``; see
:mod:`attrpreserve.results_schema`, whose required keys it indexes) and says what they mean:
did compression move the explanations, did matching bring them back (:func:`headline`), how far
did B's maps move from A's (:func:`audit_headline`). Imports neither torch nor matplotlib, so
the CLI can print a verdict without loading the plotting stack.
"""

from __future__ import annotations

import math

__all__ = ["audit_headline", "gap_closed", "gap_entry", "headline", "naive_baselines",
           "recipe_groups", "set_entry", "teacher_run"]

NO_GAP = 0.02  # gap_closed's point-estimate rule (the headline uses the interval rule instead)

# The fixed pair sets of results' pair_sets / gap_recovered, in words
PAIR_SET_WORDS = {"all": "all ground-truth pairs",
                  "teacher_correct": "the pairs the teacher predicts correctly"}

# Agreement with the teacher, first in the headline and the tables: (key, words, format)
HEADLINE_AGREEMENT = (("spearman", "Spearman"), ("topk_iou", "top-10% IoU"),
                      ("peak_distance", "peak distance"),
                      ("hit_given_teacher_hit", "P(hit | teacher hit)"))

# Gap recovered in the headline: (key, words), on fixed pair sets
HEADLINE_GAPS = (("pointing_game", "pointing game"), ("auc", "localisation AUC"),
                 ("spearman", "Spearman agreement"))

COST_KEYS = ("params", "nonzero_params", "macs", "bytes", "latency_ms")
TASK_KEYS = ("mAP", "F1", "F1_at_val_threshold", "top1", "top1_agreement")

# (key, words, value when the two models' maps are identical) of the audit's agreement metrics
AUDIT_AGREEMENT = (("spearman", "Spearman", 1.0), ("ssim", "SSIM", 1.0),
                   ("cosine", "cosine", 1.0), ("topk_iou", "top-k IoU", 1.0),
                   ("topk_intersection", "top-k intersection", 1.0),
                   ("argmax_agree", "peaks agree", 1.0),
                   ("peak_cells", "peak distance (cells)", 0.0),
                   ("peak_distance", "peak distance (px)", 0.0),
                   ("com_shift", "centre-of-mass shift (px)", 0.0))
AUDIT_LOCALIZATION = {"pointing_game": "pointing game", "pointing_game_std": "pointing game "
                      "(15 px)", "auc": "localisation AUC", "energy_pg": "energy pointing game",
                      "relevance_mass": "relevance mass", "relevance_rank": "relevance rank",
                      "deletion_auc": "deletion AUC", "insertion_auc": "insertion AUC"}
CLOSE_SPEARMAN = 0.9  # mean Spearman from which B's maps "stayed close to" A's ...
CLOSE_LOW_SHARE = 0.1  # ... when at most this share of pairs has low agreement and none vanished
PERFECT_TOL = 1e-6
NAMES_SHOWN = 10  # vanished images named in a headline, then "and N more"


# --------------------------------------------------------------------------------------------
# Numbers as text
# --------------------------------------------------------------------------------------------

def num(v):
    """``v`` as a finite float (or int), else ``None`` (JSON nulls, NaN, strings)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return v if math.isfinite(v) else None


def f3(v) -> str:
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


def d3(v) -> str:
    """A difference with its sign: +0.120, -0.031."""
    v = num(v)
    return "–" if v is None else f"{v:+.3f}"


def pct(share: float) -> str:
    return f"{round(100 * share)}%"  # an int: no "-0%"


def pct_or_dash(v) -> str:
    v = num(v)
    return "–" if v is None else pct(v)


def class_name(class_names: list[str], c: int) -> str:
    return str(class_names[c]) if 0 <= c < len(class_names) else str(c)


# --------------------------------------------------------------------------------------------
# Reading a results document
# --------------------------------------------------------------------------------------------

def metric(run: dict, key: str, explainer: str = "gradcam"):
    """One number of a run: a task metric (:data:`TASK_KEYS`), an attribution or an agreement
    metric, a cost, or ``"SET/KEY"``: the pooled mean of a metric on a fixed pair set ("all/auc",
    "teacher_correct/pointing_game"; "all/balanced:auc" for the class-balanced mean);
    ``None`` when the run does not have it."""
    if "/" in key:
        pair_set, key = key.split("/", 1)
        how, _, key = key.rpartition(":")
        entry = set_entry(run, pair_set, key, explainer,
                          "class_balanced" if how == "balanced" else "pooled")
        return num(entry["mean"]) if entry else None
    if key in TASK_KEYS:
        return num(run["task"].get(key))
    if key in COST_KEYS:
        return num(run["cost"][key])
    att = run["attribution"].get(explainer, {})
    if key in att and not isinstance(att[key], dict):
        return num(att[key])
    return num(att.get("agreement", {}).get(key))


def set_entry(run: dict, pair_set: str, key: str, explainer: str = "gradcam",
              how: str = "pooled") -> dict | None:
    """``{"mean", "ci_low", "ci_high"}`` of ``key`` on a fixed pair set ("all",
    "teacher_correct"), pooled or class-balanced (``how``), or ``None``. Documents written
    before pair sets existed still answer agreement on "all", pooled: the same definition
    (``agreement`` with ``agreement_ci``)."""
    att = run["attribution"].get(explainer, {})
    entry = att.get("pair_sets", {}).get(pair_set, {}).get(how, {}).get(key)
    if entry is not None or "pair_sets" in att:
        return entry
    if pair_set == "all" and how == "pooled" and key in att.get("agreement", {}):
        ci = att.get("agreement_ci", {}).get(key, {})
        return {"mean": att["agreement"][key], "ci_low": ci.get("ci_low"),
                "ci_high": ci.get("ci_high")}
    return None


def gap_entry(run: dict, key: str, explainer: str = "gradcam", pair_set: str = "all",
              how: str = "pooled", against: str = "teacher") -> dict | None:
    """A matched run's gap recovered of ``key`` (``evaluate.stats.gaps_recovered``'s entry:
    status, teacher, naive, matched, gap and ratio with intervals), or ``None``; ``against``
    "control": of the compression-caused gap (control minus naive)."""
    field = "gap_recovered" if against == "teacher" else "gap_recovered_vs_control"
    gaps = run["attribution"].get(explainer, {}).get(field, {})
    return gaps.get(pair_set, {}).get(how, {}).get(key)


def pair_count(runs: list[dict], pair_set: str, explainer: str) -> int | None:
    """How many pairs a fixed pair set holds (the same for every run), or ``None``."""
    for run in runs:
        n = run["attribution"].get(explainer, {}).get("pair_sets", {}).get(pair_set, {})
        if "pairs" in n:
            return n["pairs"]
    return None


def matching_of(run: dict) -> str:
    return run["compression"]["matching"]


def method_of(run: dict) -> str:
    return run["compression"]["method"]


def teacher_run(results: dict) -> dict | None:
    """The reference run: role "teacher", else the uncompressed one (method "none")."""
    runs = results["runs"]
    return (next((r for r in runs if r["role"] == "teacher"), None)
            or next((r for r in runs if method_of(r) == "none"), None))


def is_single_label(run: dict) -> bool:
    """Whether the run was scored as a single-label (softmax) model: top-1, no mAP / F1."""
    return run["task"].get("scoring") == "single-label"


def accuracy_of(run: dict) -> tuple[str, str]:
    """The task metric a run is judged by: ``("top1", "top-1")`` for a single-label model,
    ``("mAP", "mAP")`` otherwise."""
    return ("top1", "top-1") if is_single_label(run) else ("mAP", "mAP")


def is_control(run: dict) -> bool:
    """The fine-tune-only control: the teacher fine-tuned like the others, nothing compressed."""
    return run.get("role") == "control"


def role_of(results: dict, run: dict) -> str:
    """How the pages name a run's role: "reference" (the teacher run), "control" (fine-tuned,
    nothing compressed), "uncompressed" (another model compressed by nothing), "naive"
    (compressed without matching) or "matched (WCAM)"."""
    if run is teacher_run(results):
        return "reference"
    if is_control(run):
        return "control (fine-tuned only)"
    if method_of(run) == "none":
        return "uncompressed"
    m = matching_of(run)
    return "naive" if m == "none" else f"matched ({matching_words(m)})"


def recipe_groups(results: dict) -> dict[str, list[dict]]:
    """Compressed runs grouped by recipe, naive (matching "none") run first in each group;
    uncompressed runs (method "none") other than the teacher, and the control, belong to no
    recipe.

    A recipe is the run name before "+" ("kd+wcam" -> "kd", "structured-50+at" ->
    "structured-50"); a matched run without "+" in its name joins its compression method's group.
    Order: groups as they first appear; within one, naive, AT, WCAM, then other matchings.
    """
    teacher = teacher_run(results)
    groups: dict[str, list[dict]] = {}
    for run in results["runs"]:
        if run is teacher or method_of(run) == "none" or is_control(run):
            continue
        name = run["name"]
        if "+" in name:
            key = name.split("+", 1)[0]
        else:
            key = name if matching_of(run) == "none" else method_of(run)
        groups.setdefault(key, []).append(run)
    for runs in groups.values():
        runs.sort(key=lambda r: matching_of(r) != "none")  # naive first, then as evaluated
    return groups


def naive_baselines(results: dict) -> dict[str, str]:
    """Each matched run's name -> the name of its recipe's naive run (matching "none"), for
    the groups of :func:`recipe_groups` that have one: what gap recovered is measured
    against."""
    out = {}
    for runs in recipe_groups(results).values():
        naive = naive_run(runs)
        out.update({r["name"]: naive["name"] for r in runs if naive and r is not naive})
    return out


def ordered_runs(results: dict) -> list[dict]:
    """Teacher first, then the other uncompressed runs, then the runs recipe by recipe (naive,
    AT, WCAM)."""
    teacher = teacher_run(results)
    plain = [r for r in results["runs"] if r is not teacher
             and (method_of(r) == "none" or is_control(r))]
    rest = [r for runs in recipe_groups(results).values() for r in runs]
    return ([teacher] if teacher else []) + plain + rest


def explainers_in(results: dict) -> list[str]:
    """Explainers that any run reports, in first-seen order."""
    seen: list[str] = []
    for run in results["runs"]:
        for e in run["attribution"]:
            if e not in seen:
                seen.append(e)
    return seen


def gap_closed(teacher: float | None, naive: float | None, matched: float | None,
               tol: float = NO_GAP) -> float | None:
    """Share of the naive run's gap to the teacher that the matched run wins back, as a bare
    point estimate (no interval; the pages use results' ``gap_recovered`` instead, which
    has the interval and the "no gap" rule).

    ``(matched - naive) / (teacher - naive)`` for higher-is-better metrics: 1 = back at the
    teacher, 0 = no better than naive, > 1 = beyond the teacher, < 0 = worse than naive. ``None``
    when a value is missing or the naive run is within ``tol`` of (or above) the teacher.
    """
    if teacher is None or naive is None or matched is None or teacher - naive <= tol:
        return None
    return (matched - naive) / (teacher - naive)


def naive_run(runs: list[dict]) -> dict | None:
    return next((r for r in runs if matching_of(r) == "none"), None)


def _recipe_words(run: dict) -> str:
    """The recipe's label (written by the evaluation from the recipe registry), else its name."""
    return run.get("recipe_label") or method_of(run)


def matching_words(matching: str) -> str:
    """How a matching is named: "naive" for none, else its name in capitals (AT, WCAM, LRP)."""
    return "naive" if matching == "none" else matching.upper()


def _matching_words(run: dict) -> str:
    return matching_words(matching_of(run))


# --------------------------------------------------------------------------------------------
# The results verdict
# --------------------------------------------------------------------------------------------

def headline(results: dict, explainer: str = "gradcam") -> list[dict]:
    """Plain-sentence answers per recipe: how far do the compressed runs' maps agree with the
    teacher's, and how much of the naive run's gap did matching bring back? Returns
    ``[{recipe, summary, sentences: [str]}]`` (plain text).

    Agreement comes first; gaps are read from each matched run's ``gap_recovered`` (fixed pair
    sets, 95% intervals, "no gap" unless the gap's interval excludes 0). The paper-mode
    numbers (each model's own predicted pairs) are never used here.
    """
    teacher = teacher_run(results)
    out = []
    for recipe, runs in recipe_groups(results).items():
        naive = naive_run(runs)
        matched = [r for r in runs if r is not naive]
        what = _recipe_words(runs[0])
        sentences = [_agreement_sentence(runs, explainer),
                     _premise_sentence(teacher, naive, matched, explainer, what)]
        if naive is not None and matched and teacher is not None:
            if any(gap_entry(r, k, explainer) for r in matched for k, _ in HEADLINE_GAPS):
                sentences += [_gap_sentence(naive, matched, key, words, explainer)
                              for key, words in HEADLINE_GAPS]
                sentences.append(_teacher_correct_sentence(matched, explainer))
            else:
                sentences.append("Gap recovered is not in these results (written before "
                                 "fixed pair sets existed): evaluate them again.")
        out.append({"recipe": recipe,
                    "summary": _summary(teacher, naive, matched, explainer, what),
                    "sentences": [s for s in sentences if s]})
    return out


RESULTS_CONFIDENCE = 0.95  # the evaluator's interval level (docs/metrics.md)


def value_words(key: str, v) -> str:
    """A metric's value: px for distances, 3 decimals otherwise."""
    v = num(v)
    if v is not None and key in ("peak_distance", "com_shift"):
        return f"{v:.1f} px"
    return f3(v)


def interval_words(entry: dict | None, key: str = "") -> str:
    """ "0.412 (95% CI 0.400 to 0.430)" for a ``{mean, ci_low, ci_high}`` entry."""
    if entry is None:
        return "–"
    return ci_words(entry, RESULTS_CONFIDENCE, lambda v: value_words(key, v))


def gap_words(entry: dict | None) -> str:
    """A gap-recovered entry in words: "80% (95% CI 69% to 92%)", "no gap", or "–"."""
    if entry is None or entry["status"] == "undefined":
        return "–"
    if entry["status"] == "no gap":
        return "no gap"
    lo, hi = num(entry["ci_low"]), num(entry["ci_high"])
    ci = f" ({RESULTS_CONFIDENCE:.0%} CI {pct(lo)} to {pct(hi)})" if None not in (lo, hi) else ""
    return pct_or_dash(entry["recovered"]) + ci


def _first_gap(matched: list[dict], key: str, explainer: str, pair_set: str = "all"):
    """The gap entry of ``key`` of the first matched run that has one (teacher, naive and the
    gap are the same in every matched run's entry)."""
    return next((e for e in (gap_entry(r, key, explainer, pair_set) for r in matched)
                 if e is not None), None)


def _gap_state(entry: dict, words: str) -> str:
    """Where the naive run stands against the teacher (``words``: a higher-is-better metric):
    lost, above, or no gap."""
    t, n, gap = (num(entry[k]) for k in ("teacher", "naive", "gap"))
    lo, hi = num(entry["gap_ci_low"]), num(entry["gap_ci_high"])
    ci = (f"{RESULTS_CONFIDENCE:.0%} CI of the gap {d3(lo)} to {d3(hi)}"
          if None not in (lo, hi) else "no interval")
    if entry["status"] == "undefined" or gap is None:
        return f"{words} gap undefined (teacher {f3(t)}, naive {f3(n)})"
    if entry["status"] == "no gap":
        return (f"no gap in {words}: naive {f3(n)} vs teacher {f3(t)} ({ci}, which includes "
                f"0), so nothing to recover")
    if gap > 0:
        return f"naive lost {gap:.3f} {words} (teacher {f3(t)}, naive {f3(n)}; {ci})"
    return (f"naive scores {-gap:.3f} more {words} than the teacher (teacher {f3(t)}, naive "
            f"{f3(n)}; {ci}); recovered = share of the way back to the teacher")


PREMISE_MAP_POINTS = 0.02  # "keeps its accuracy": naive mAP / top-1 within 2 points of the teacher


def _premise_sentence(teacher, naive, matched, explainer, what) -> str | None:
    """Whether this recipe shows the paper's premise: the naive run keeps its accuracy (mAP, or
    top-1 for single-label models, within 2 points of the teacher) while its maps move (a
    Spearman-agreement or pointing-game gap whose 95% interval lies above 0)."""
    if teacher is None or naive is None:
        return None
    key, words = accuracy_of(naive)
    t, n = metric(teacher, key), metric(naive, key)
    moved = [w for key, w in (("spearman", "Spearman agreement"), ("pointing_game",
                                                                     "pointing game"))
             for e in [_first_gap(matched, key, explainer)]
             if e and e["status"] == "ok" and (num(e["gap_ci_low"]) or 0) > 0]
    if t is None or n is None or not matched:
        return None
    kept = n >= t - PREMISE_MAP_POINTS
    acc = f"{words} {f3(n)} vs the teacher's {f3(t)}"
    if kept and moved:
        return (f"The paper's premise holds for naive {what}: it kept its accuracy ({acc}) "
                f"while its {explainer} maps moved ({' and '.join(moved)} gap above 0).")
    why = [f"it lost accuracy ({acc}, more than {PREMISE_MAP_POINTS * 100:.0f} points)"] \
        if not kept else []
    if not moved:
        why.append(f"its {explainer} maps did not move measurably (no Spearman or "
                   f"pointing-game gap whose interval lies above 0)")
    return f"The paper's premise does not hold for naive {what} here: " + " and ".join(why) + "."


def _summary(teacher, naive, matched, explainer, what) -> str:
    """One line per recipe: agreement of the naive run, its pointing-game gap, and the best
    recovery."""
    if teacher is None:
        return f"{what.capitalize()}: no teacher run to compare with."
    if naive is None:
        return (f"{what.capitalize()}: no naive run, so the effect of matching cannot be "
                f"separated from compression itself.")
    parts = []
    rho = set_entry(naive, "all", "spearman", explainer)
    if rho is not None and num(rho["mean"]) is not None:
        parts.append(f"its {explainer} maps agree with the teacher's at Spearman "
                     f"{interval_words(rho)} on {PAIR_SET_WORDS['all']}")
    pg = _first_gap(matched, "pointing_game", explainer)
    if pg is not None:
        parts.append(_gap_state(pg, "pointing game"))
    subject = f"Naive {what} ({naive['name']})"
    text = (f"{subject}: " + "; ".join(parts) + "." if parts
            else f"{subject}: no {explainer} agreement or gap to judge by.")
    shares = [(num(e["recovered"]), r, e) for r in matched
              for e in [gap_entry(r, "pointing_game", explainer)] if e and e["status"] == "ok"]
    shares = [x for x in shares if x[0] is not None]
    if shares:
        _, r, e = max(shares, key=lambda x: x[0])
        text += (f" Best at bringing it back: {_matching_words(r)} ({r['name']}), "
                 f"{gap_words(e)} of the pointing-game gap.")
    return text


def _agreement_sentence(runs: list[dict], explainer: str) -> str | None:
    """E.g. "Agreement with the teacher's maps on all ground-truth pairs (1,093): kd Spearman
    0.412 (95% CI ...), top-10% IoU 0.301, peak distance 6.1 px, P(hit | teacher hit) 0.550;
    kd+wcam ..."."""
    parts = []
    for r in runs:
        values = [(key, words, set_entry(r, "all", key, explainer))
                  for key, words in HEADLINE_AGREEMENT]
        values = [(k, w, e) for k, w, e in values if e is not None and num(e["mean"]) is not None]
        if not values:
            continue
        (k0, w0, e0), rest = values[0], values[1:]
        parts.append(f"{r['name']} {w0} {interval_words(e0, k0)}"
                     + "".join(f", {w} {value_words(k, e['mean'])}" for k, w, e in rest))
    if not parts:
        return None
    n = pair_count(runs, "all", explainer)
    return (f"Agreement with the teacher's {explainer} maps on {PAIR_SET_WORDS['all']}"
            + (f" ({f3(n)}; " if n is not None else " (") + "1 = identical, 0 px = same peak): "
            + "; ".join(parts) + ".")


def _gap_sentence(naive, matched, key, words, explainer, pair_set: str = "all") -> str | None:
    """E.g. "Pointing game on all ground-truth pairs (1,093): naive lost 0.070 pointing game
    (teacher 0.250, naive 0.180; 95% CI of the gap +0.040 to +0.100); WCAM (kd+wcam) 0.240,
    recovered 86% (95% CI 70% to 98%), mAP 0.490 vs naive 0.380."."""
    first = _first_gap(matched, key, explainer, pair_set)
    if first is None:
        return None
    n = pair_count([naive, *matched], pair_set, explainer)
    head = (f"{words[:1].upper() + words[1:]} on {PAIR_SET_WORDS[pair_set]}"
            + (f" ({f3(n)})" if n is not None else "") + f": {_gap_state(first, words)}")
    parts = []
    for r in matched:
        e = gap_entry(r, key, explainer, pair_set)
        who = f"{_matching_words(r)} ({r['name']})"
        if e is None:
            parts.append(f"{who}: not measured")
        elif e["status"] == "ok":
            acc, acc_words = accuracy_of(r)
            parts.append(f"{who} {f3(num(e['matched']))}, recovered {gap_words(e)}, "
                         f"{acc_words} {f3(metric(r, acc))} vs naive {f3(metric(naive, acc))}")
        else:
            parts.append(f"{who} {f3(num(e['matched']))}")
    return head + ("; " + "; ".join(parts) if parts else "") + "."


def _teacher_correct_sentence(matched: list[dict], explainer: str) -> str | None:
    """Gap recovered on the teacher's correct pairs, compactly."""
    parts = []
    for key, words in HEADLINE_GAPS[:2]:
        first = _first_gap(matched, key, explainer, "teacher_correct")
        if first is None:
            continue
        if first["status"] != "ok":
            parts.append(f"{words}: {gap_words(first)}")
            continue
        parts.append(f"{words}: " + ", ".join(
            f"{_matching_words(r)} {gap_words(gap_entry(r, key, explainer, 'teacher_correct'))}"
            for r in matched))
    if not parts:
        return None
    n = pair_count(matched, "teacher_correct", explainer)
    return (f"Gap recovered on {PAIR_SET_WORDS['teacher_correct']}"
            + (f" ({f3(n)})" if n is not None else "") + ": " + "; ".join(parts) + ".")


# --------------------------------------------------------------------------------------------
# The audit verdict
# --------------------------------------------------------------------------------------------

def mean_of(entry: dict):
    """The mean of a ``{mean, ci_low, ci_high}`` entry, ``None`` when undefined."""
    return num(entry["mean"])


def ci_words(entry: dict, conf: float, fmt=f3) -> str:
    """ "0.912 (95% CI 0.880 to 0.940)" for a ``{mean, ci_low, ci_high}`` entry."""
    text = fmt(num(entry["mean"]))
    lo, hi = num(entry["ci_low"]), num(entry["ci_high"])
    if lo is None or hi is None:
        return text
    return f"{text} ({conf:.0%} CI {fmt(lo)} to {fmt(hi)})"


def audit_confidence(result: dict) -> float:
    """The audit's bootstrap confidence level (0.95: 95% intervals)."""
    return result["settings"]["confidence"]


def thresholds(result: dict) -> tuple[float, float]:
    """The audit's low-agreement Spearman threshold and peak tolerance (native map cells)."""
    s = result["settings"]
    return s["low_spearman"], s["peak_tolerance_cells"]


def cells_words(cells, rep: dict | None = None) -> str:
    """A distance in native map cells, with px beside when the explainer's ``rep`` (its
    ``cell_px``) is given: "1.5 cells (48 px)"."""
    px = num(rep["cell_px"]) if rep else None
    text = f"{cells:g} cell{'' if cells == 1 else 's'}"
    return text + (f" ({cells * px:.3g} px)" if px is not None and px != 1 else "")


def low_rule(result: dict, rep: dict | None = None) -> str:
    """The low-agreement rule in words (px beside the cells for one explainer's ``rep``)."""
    low, tol = thresholds(result)
    return f"Spearman < {low:g} or peaks more than {cells_words(tol, rep)} apart"


def grid_words(rep: dict) -> str:
    """The explainer's native map grid: "7 x 7" (both models), or "7 x 7 / 14 x 14"."""
    grids = [f"{g[0]} x {g[1]}" for g in (rep["grid"].get(k) for k in ("a", "b")) if g]
    return " / ".join(dict.fromkeys(grids)) or "–"


def image_label(row: dict) -> str:
    """An audited image by file name where the dataset has files, else by loader index."""
    return row.get("name") or f"#{row['index']}"


def compared_images(rep: dict) -> list[dict]:
    """The per-image rows of the images with at least one (image, class) pair: every image
    count of the audit's page and headline."""
    return [r for r in rep["per_image"] if r["classes"]]


def vanished_words(rep: dict, explainer: str, names: tuple[str, str]) -> list[str]:
    """One sentence per model whose maps vanished (blank where the other's is not), naming the
    images: "1 of 50 images: candidate's gradcam map is blank (constant) where reference's is
    not: IMG_0042.jpg."."""
    rows = compared_images(rep)
    out = []
    for side, (who, other) in (("b", names[::-1]), ("a", names)):
        hit = [image_label(r) for r in rows if side in r["blank"]]
        if hit:
            shown = ", ".join(hit[:NAMES_SHOWN]) + (
                f" and {len(hit) - NAMES_SHOWN} more" if len(hit) > NAMES_SHOWN else "")
            out.append(f"{len(hit)} of {len(rows)} images: {who}'s {explainer} map is blank "
                       f"(constant) where {other}'s is not: {shown}.")
    return out


def _audit_perfect(agreement: dict) -> bool:
    """Every agreement metric is at its identical-maps value (and the peaks were compared at
    all)."""
    if mean_of(agreement["argmax_agree"]) is None:
        return False
    for key, _, ideal in AUDIT_AGREEMENT:
        v = mean_of(agreement.get(key, {"mean": None}))
        if v is not None and abs(v - ideal) > PERFECT_TOL:
            return False
    return True


def _verdict(rho, share_low, vanished: bool, low: float, a: str, b: str, explainer: str) -> str:
    """The one verdict on how far B's maps moved, from mean Spearman, the share of
    low-agreement pairs and whether any explanation vanished."""
    low_words = f"low agreement on {pct_or_dash(share_low)} of pairs"
    if rho >= CLOSE_SPEARMAN and not vanished and share_low <= CLOSE_LOW_SHARE:
        return (f"{b}'s {explainer} explanations stayed close to {a}'s (mean Spearman "
                f"{f3(rho)}; {low_words}).")
    if rho >= CLOSE_SPEARMAN:
        reasons = ([low_words] if share_low > CLOSE_LOW_SHARE else []) + \
            (["blank maps (named next)"] if vanished else [])
        return (f"{b}'s {explainer} explanations moved on some images: mean Spearman "
                f"{f3(rho)}, but " + " and ".join(reasons) + ".")
    if rho >= low:
        return (f"{b}'s {explainer} explanations moved noticeably from {a}'s (mean "
                f"Spearman {f3(rho)}; {low_words}).")
    return (f"{b}'s {explainer} explanations moved far from {a}'s (mean Spearman {f3(rho)}, "
            f"below the low-agreement threshold {low:g}; {low_words}).")


def audit_headline(result: dict, explainer: str = "gradcam",
                   names: tuple[str, str] = ("reference", "candidate")) -> dict:
    """Plain-sentence answers for one explainer of an :func:`~attrpreserve.evaluate.audit`
    result: ``{"summary": str, "perfect": bool, "sentences": [str]}`` (plain text).

    One verdict (:func:`_verdict`) in the summary, with any vanished explanation named after
    it; the sentences state the numbers behind it as facts."""
    a, b = names
    if explainer not in result["explainers"]:
        raise ValueError(f"the audit has no {explainer!r} explainer; it has: "
                         f"{', '.join(result['explainers']) or 'none'}")
    rep = result["explainers"][explainer]
    agr = rep["agreement"]
    conf = audit_confidence(result)
    low, tol = thresholds(result)
    rho, peaks = mean_of(agr["spearman"]), mean_of(agr["argmax_agree"])
    vanished = vanished_words(rep, explainer, names)
    perfect = _audit_perfect(agr) and not vanished
    if perfect:
        summary = (f"Perfect agreement: {b}'s {explainer} maps are identical to {a}'s "
                   f"(Spearman {f3(rho)}, peaks agree on {pct(peaks)} of pairs).")
    elif rho is None:
        summary = f"No (image, class) pair to compare {b}'s {explainer} maps with {a}'s."
    else:
        summary = _verdict(rho, mean_of(rep["hidden_disagreement"]["share_low"]),
                           bool(vanished), low, a, b, explainer)
    summary = " ".join([summary[:1].upper() + summary[1:], *vanished])

    sentences = []
    words = []
    for key, label in (("spearman", "mean Spearman"), ("ssim", "SSIM")):
        if mean_of(agr[key]) is not None:
            words.append(f"{label} {ci_words(agr[key], conf)}")
    if peaks is not None:
        lo, hi = (num(agr["argmax_agree"][k]) for k in ("ci_low", "ci_high"))
        ci = f" ({conf:.0%} CI {pct(lo)} to {pct(hi)})" if None not in (lo, hi) else ""
        words.append(f"peaks within {cells_words(tol, rep)} of each other on {pct(peaks)} of "
                     f"pairs{ci}, one cell of the {grid_words(rep)} map being "
                     f"{rep['cell_px']:.3g} px")
    if words:
        sentences.append(f"Agreement of {b}'s maps with {a}'s over {f3(result['pairs'])} "
                         f"(image, class) pairs on {f3(len(compared_images(rep)))} images: "
                         + "; ".join(words) + ".")
    sentences.append(_predictions_sentence(result["task"], a, b))
    sentences.append(_hidden_sentence(rep["hidden_disagreement"], conf, low_rule(result, rep),
                                      result["task"].get("single_label", False)))

    for group, title in (("localization", "Localisation"), ("faithfulness", "Faithfulness")):
        block = rep[group]
        if not block:
            continue
        keys = [k for k in ("pointing_game", "auc", "deletion_auc", "insertion_auc")
                if k in block] or list(block)[:2]
        parts = [_delta_words(k, block[k], a, b, conf) for k in keys]
        sentences.append(f"{title}: " + "; ".join(parts) + ".")
    return {"summary": summary, "perfect": perfect,
            "sentences": [t for t in sentences if t]}


def _predictions_sentence(task: dict, a: str, b: str) -> str | None:
    """Single-label: both models' top-1 accuracy and top-1 agreement; multi-label: how often
    their sigmoid decisions agree, and their mAP."""
    if task.get("single_label"):
        t1a, t1b = (num(task[k].get("top1")) for k in ("a", "b"))
        return (f"Predictions: top-1 accuracy {a} {f3(t1a)}, {b} {f3(t1b)}; the same top-1 "
                f"class on {pct_or_dash(task.get('top1_agreement'))} of images.")
    pair_dec = num(task.get("pair_decision_agreement"))
    if pair_dec is None:
        return None
    text = (f"Predictions: both models make the same decision on {pct(pair_dec)} of the "
            f"ground-truth pairs")
    extra = []
    if num(task.get("decision_agreement")) is not None:
        extra.append(f"{pct(task['decision_agreement'])} of all image-class decisions")
    if num(task.get("label_set_agreement")) is not None:
        extra.append(f"identical predicted label sets on {pct(task['label_set_agreement'])}"
                     f" of images")
    text += f" ({'; '.join(extra)})" if extra else ""
    ma, mb = (num(task[k].get("mAP")) for k in ("a", "b"))
    if ma is not None or mb is not None:
        text += f"; mAP {a} {f3(ma)}, {b} {f3(mb)}"
    return text + "."


def _hidden_sentence(hidden: dict, conf: float, rule: str, single: bool = False) -> str:
    """How many pairs with the same answer from both models have low explanation agreement
    (facts: the verdict is the summary's)."""
    same = "give the same top-1 class" if single else "make the same decision"
    n_same = hidden["same_decision_pairs"]
    n_low = hidden["same_decision_low_agreement_pairs"]
    if not n_same:
        return (f"No pair where both models {same}, so agreeing decisions cannot hide "
                f"disagreeing explanations here.")
    if not n_low:
        text = (f"No hidden disagreement: none of the {f3(n_same)} pairs where both models "
                f"{same} has low explanation agreement ({rule}).")
    else:
        share = ci_words(hidden["share_low_among_same_decision"], conf, pct_or_dash)
        text = (f"Among {f3(n_same)} pairs where both models {same}, {share} have low "
                f"explanation agreement ({rule}).")
    n_diff = hidden["different_decision_pairs"]
    if n_diff:
        share = pct_or_dash(mean_of(hidden["share_low_among_different_decision"]))
        text += f" Among the {f3(n_diff)} pairs where they differ: {share}."
    return text


def _delta_words(key: str, entry: dict, a: str, b: str, conf: float) -> str:
    """E.g. "pointing game reference 0.417 vs candidate 0.103 (difference -0.314, 95% CI
    -0.402 to -0.221: candidate lower)"."""
    words = AUDIT_LOCALIZATION.get(key, key.replace("_", " "))
    d, lo, hi = (num(entry[k]) for k in ("delta", "ci_low", "ci_high"))
    text = (f"{words} {a} {f3(num(entry['a']))} vs {b} {f3(num(entry['b']))} "
            f"(difference {d3(d)}")
    if d == 0 and lo == 0 and hi == 0:
        return text + ": identical)"
    if lo is not None and hi is not None:
        verdict = (f"{b} lower" if hi < 0 else f"{b} higher" if lo > 0
                   else "no clear difference")
        text += f", {conf:.0%} CI {d3(lo)} to {d3(hi)}: {verdict}"
    return text + ")"
