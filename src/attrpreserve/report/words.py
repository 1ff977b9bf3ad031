"""The judgement in plain sentences, and the numbers as text.

Reads results documents (``results.json``, ``audit.json``; see
:mod:`attrpreserve.results_schema`, whose required keys it indexes) and says what they mean:
did compression move the explanations, did matching bring them back (:func:`headline`), how far
did B's maps move from A's (:func:`audit_headline`). Imports neither torch nor matplotlib, so
the CLI can print a verdict without loading the plotting stack.
"""

from __future__ import annotations

import math

__all__ = ["audit_headline", "gap_closed", "headline", "recipe_groups", "teacher_run"]

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
COST_KEYS = ("params", "nonzero_params", "macs", "bytes", "latency_ms")

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
CLOSE_SPEARMAN = 0.9  # mean Spearman from which B's maps "stayed close to" A's
PERFECT_TOL = 1e-6


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
    return f"{100 * share:.0f}%"


def pct_or_dash(v) -> str:
    v = num(v)
    return "–" if v is None else pct(v)


def class_name(class_names: list[str], c: int) -> str:
    return str(class_names[c]) if 0 <= c < len(class_names) else str(c)


# --------------------------------------------------------------------------------------------
# Reading a results document
# --------------------------------------------------------------------------------------------

def metric(run: dict, key: str, explainer: str = "gradcam"):
    """One number of a run: a task metric (mAP, F1), an attribution or an agreement metric, a
    cost; ``None`` when the run does not have it."""
    if key in ("mAP", "F1"):
        return num(run["task"][key])
    if key in COST_KEYS:
        return num(run["cost"][key])
    att = run["attribution"].get(explainer, {})
    if key in att and not isinstance(att[key], dict):
        return num(att[key])
    return num(att.get("agreement", {}).get(key))


def matching_of(run: dict) -> str:
    return run["compression"]["matching"]


def method_of(run: dict) -> str:
    return run["compression"]["method"]


def teacher_run(results: dict) -> dict | None:
    """The reference run: role "teacher", else the uncompressed one (method "none")."""
    runs = results["runs"]
    return (next((r for r in runs if r["role"] == "teacher"), None)
            or next((r for r in runs if method_of(r) == "none"), None))


def recipe_groups(results: dict) -> dict[str, list[dict]]:
    """Compressed runs grouped by recipe, naive (matching "none") run first in each group.

    A recipe is the run name before "+" ("kd+wcam" -> "kd", "structured-50+at" ->
    "structured-50"); a matched run without "+" in its name joins its compression method's group.
    Order: groups as they first appear; within one, naive, AT, WCAM, then other matchings.
    """
    teacher = teacher_run(results)
    groups: dict[str, list[dict]] = {}
    for run in results["runs"]:
        if run is teacher:
            continue
        name = run["name"]
        if "+" in name:
            key = name.split("+", 1)[0]
        else:
            key = name if matching_of(run) == "none" else method_of(run)
        groups.setdefault(key, []).append(run)
    for runs in groups.values():
        runs.sort(key=lambda r: MATCHING_ORDER.get(matching_of(r), 3))
    return groups


def ordered_runs(results: dict) -> list[dict]:
    """Teacher first, then the runs recipe by recipe (naive, AT, WCAM)."""
    teacher = teacher_run(results)
    rest = [r for runs in recipe_groups(results).values() for r in runs]
    return ([teacher] if teacher else []) + rest


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
    """Share of the naive run's gap to the teacher that the matched run wins back.

    ``(matched - naive) / (teacher - naive)`` for higher-is-better metrics: 1 = back at the
    teacher, 0 = no better than naive, > 1 = beyond the teacher, < 0 = worse than naive. ``None``
    when a value is missing or the naive run is within ``tol`` of (or above) the teacher.
    """
    if teacher is None or naive is None or matched is None or teacher - naive <= tol:
        return None
    return (matched - naive) / (teacher - naive)


def reference_value(teacher: dict | None, key: str, explainer: str):
    """The teacher's value of ``key`` (1 for agreement metrics: its maps match themselves)."""
    if key in SELF_AGREEMENT:
        return SELF_AGREEMENT[key]
    return metric(teacher, key, explainer) if teacher else None


def naive_run(runs: list[dict]) -> dict | None:
    return next((r for r in runs if matching_of(r) == "none"), None)


def _recipe_words(method: str) -> str:
    return RECIPE_WORDS.get(method, method)


def _matching_words(run: dict) -> str:
    m = matching_of(run)
    return MATCHING_WORDS.get(m, m.upper())


# --------------------------------------------------------------------------------------------
# The results verdict
# --------------------------------------------------------------------------------------------

def headline(results: dict, explainer: str = "gradcam") -> list[dict]:
    """Plain-sentence answers per recipe: did compression move the explanations, and did
    matching bring them back? Returns ``[{recipe, summary, sentences: [str]}]`` (plain text)."""
    teacher = teacher_run(results)
    out = []
    for recipe, runs in recipe_groups(results).items():
        naive = naive_run(runs)
        matched = [r for r in runs if r is not naive]
        method = method_of(runs[0])
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
    gaps = {k: (reference_value(teacher, k, explainer), metric(naive, k, explainer))
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
        text += (f" Best at bringing them back: {_matching_words(r)} ({r['name']}), "
                 f"{pct(s)} of the pointing-game gap closed.")
    return text


def _metric_sentence(teacher, naive, matched, key, words, method, explainer) -> str | None:
    """E.g. "Naive distillation (kd) lost 0.313 pointing game (teacher 0.416, kd 0.103); WCAM
    (kd+wcam) won back 73% of it (mAP 0.489 vs 0.384)."""
    t = reference_value(teacher, key, explainer)
    if naive is None:
        if teacher is None:
            return None
        parts = [f"{r['name']} {f3(metric(r, key, explainer))}" for r in matched]
        return f"{words.capitalize()}: teacher {f3(t)}; " + ", ".join(parts) + "."
    n = metric(naive, key, explainer)
    subject = f"Naive {_recipe_words(method)} ({naive['name']})"
    ref = "the teacher's own maps 1.000" if key in SELF_AGREEMENT else f"teacher {f3(t)}"
    if t is None or n is None:
        return f"{subject}: {words} not measured ({ref}, {naive['name']} {f3(n)})."
    if t - n <= NO_GAP:
        return (f"{subject} kept its {words} ({f3(n)} vs {ref}): no gap to close.")
    parts = []
    n_map = metric(naive, "mAP")
    for r in matched:
        m = metric(r, key, explainer)
        who = f"{_matching_words(r)} ({r['name']})"
        if m is None:
            parts.append(f"{who}: not measured")
            continue
        share = gap_closed(t, n, m)
        how = (f"won back {pct(share)} of it" if share >= 0 else
               f"won none of it back ({pct(share)}: {n - m:.3f} worse than naive)")
        parts.append(f"{who} {how} ({words} {f3(m)}; mAP {f3(metric(r, 'mAP'))} vs "
                     f"{f3(n_map)})")
    text = f"{subject} lost {t - n:.3f} {words} ({ref}, {naive['name']} {f3(n)})"
    return text + ("; " + "; ".join(parts) if parts else "") + "."


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
    """The audit's low-agreement Spearman threshold and peak tolerance (px)."""
    s = result["settings"]
    return s["low_spearman"], s["argmax_tolerance_px"]


def low_rule(result: dict) -> str:
    low, tol = thresholds(result)
    return f"Spearman < {low:g} or peaks > {tol:g} px apart"


def _audit_perfect(agreement: dict) -> bool:
    """Every agreement metric is at its identical-maps value (and the peaks were compared at
    all)."""
    if mean_of(agreement["argmax_agree"]) is None:
        return False
    for key, _, ideal in AUDIT_AGREEMENT:
        v = mean_of(agreement[key])
        if v is not None and abs(v - ideal) > PERFECT_TOL:
            return False
    return True


def audit_headline(result: dict, explainer: str = "gradcam",
                   names: tuple[str, str] = ("reference", "candidate")) -> dict:
    """Plain-sentence answers for one explainer of an :func:`~attrpreserve.evaluate.audit`
    result: ``{"summary": str, "perfect": bool, "sentences": [str]}`` (plain text)."""
    a, b = names
    if explainer not in result["explainers"]:
        raise ValueError(f"the audit has no {explainer!r} explainer; it has: "
                         f"{', '.join(result['explainers']) or 'none'}")
    rep = result["explainers"][explainer]
    agr = rep["agreement"]
    conf = audit_confidence(result)
    low, tol = thresholds(result)
    rho, peaks = mean_of(agr["spearman"]), mean_of(agr["argmax_agree"])
    perfect = _audit_perfect(agr)
    if perfect:
        summary = (f"Perfect agreement: {b}'s {explainer} maps are identical to {a}'s ("
                   + (f"Spearman {f3(rho)}, " if rho is not None else "")
                   + f"peaks agree on {pct(peaks)} of pairs).")
    elif rho is None:
        summary = (f"{b}'s {explainer} maps could not be rank-compared with {a}'s (Spearman "
                   f"undefined: constant maps); peaks agree on "
                   f"{pct(peaks) if peaks is not None else '–'} of pairs.")
    elif rho >= CLOSE_SPEARMAN:
        summary = (f"{b}'s {explainer} explanations stayed close to {a}'s (mean Spearman "
                   f"{f3(rho)}).")
    elif rho >= low:
        summary = (f"{b}'s {explainer} explanations moved noticeably from {a}'s (mean "
                   f"Spearman {f3(rho)}).")
    else:
        summary = (f"{b}'s {explainer} explanations moved far from {a}'s (mean Spearman "
                   f"{f3(rho)}, below the low-agreement threshold {low:g}).")

    sentences = []
    words = []
    for key, label in (("spearman", "mean Spearman"), ("ssim", "SSIM")):
        if mean_of(agr[key]) is not None:
            words.append(f"{label} {ci_words(agr[key], conf)}")
    if peaks is not None:
        lo, hi = (num(agr["argmax_agree"][k]) for k in ("ci_low", "ci_high"))
        ci = f" ({conf:.0%} CI {pct(lo)} to {pct(hi)})" if None not in (lo, hi) else ""
        words.append(f"peaks within {tol:g} px of each other on {pct(peaks)} of pairs{ci}")
    if words:
        sentences.append(f"Agreement of {b}'s maps with {a}'s over {f3(result['pairs'])} "
                         f"(image, class) pairs on {f3(result['images'])} images: "
                         + "; ".join(words) + ".")

    task = result["task"]
    pair_dec = num(task["pair_decision_agreement"])
    if pair_dec is not None:
        text = (f"Predictions: both models make the same decision on {pct(pair_dec)} of the "
                f"ground-truth pairs")
        extra = []
        if num(task["decision_agreement"]) is not None:
            extra.append(f"{pct(task['decision_agreement'])} of all image-class decisions")
        if num(task["label_set_agreement"]) is not None:
            extra.append(f"identical predicted label sets on {pct(task['label_set_agreement'])}"
                         f" of images")
        text += f" ({'; '.join(extra)})" if extra else ""
        ma, mb = (num(task[k]["mAP"]) for k in ("a", "b"))
        if ma is not None or mb is not None:
            text += f"; mAP {a} {f3(ma)}, {b} {f3(mb)}"
        sentences.append(text + ".")

    sentences.append(_hidden_sentence(rep["hidden_disagreement"], conf, low_rule(result)))

    for group, title in (("localization", "Localisation"), ("faithfulness", "Faithfulness")):
        block = rep[group]
        if not block:
            continue
        keys = [k for k in ("pointing_game", "auc", "deletion_auc", "insertion_auc")
                if k in block] or list(block)[:2]
        parts = [_delta_words(k, block[k], a, b, conf) for k in keys]
        sentences.append(f"{title}: " + "; ".join(parts) + ".")
    return {"summary": summary[:1].upper() + summary[1:], "perfect": perfect,
            "sentences": sentences}


def _hidden_sentence(hidden: dict, conf: float, rule: str) -> str:
    """Do agreeing decisions hide disagreeing explanations?"""
    n_same = hidden["same_decision_pairs"]
    n_low = hidden["same_decision_low_agreement_pairs"]
    if not n_same:
        return ("No pair gets the same decision from both models, so agreeing decisions "
                "cannot hide disagreeing explanations here.")
    if not n_low:
        text = (f"No hidden disagreement: none of the {f3(n_same)} pairs where both models "
                f"make the same decision has low explanation agreement ({rule}).")
    else:
        share = ci_words(hidden["share_low_among_same_decision"], conf, pct_or_dash)
        text = (f"Among {f3(n_same)} pairs where both models make the same decision, {share} "
                f"have low explanation agreement ({rule}): the same answer for a different "
                f"reason.")
    n_diff = hidden["different_decision_pairs"]
    if n_diff:
        share = pct_or_dash(mean_of(hidden["share_low_among_different_decision"]))
        text += f" Among the {f3(n_diff)} pairs where the decisions differ: {share}."
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
