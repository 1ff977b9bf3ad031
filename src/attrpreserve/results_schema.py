"""The two result documents, written down once: ``results.json`` and ``audit.json``.

``RESULTS`` is what :func:`attrpreserve.pipeline.evaluate` returns and ``write_results`` saves
(``demo`` adds ``demo``, ``notes``, ``sweeps``, ``wall_seconds``; ``sweep`` adds ``sweeps``).
``AUDIT`` is what :func:`attrpreserve.evaluate.audit` returns (``pipeline.audit`` adds
``reference``, ``candidate``, ``split``, ``versions``). :func:`validate_results` and
:func:`validate_audit` check a document and raise :class:`SchemaError` naming the first bad
place, e.g. ``results.runs[1].cost: missing required key 'latency_ms'``.

The module sits at the package root, not in ``report/``: the documents are written by
``pipeline`` and ``evaluate`` and read by the report pages, the CLI and ``pipeline`` itself, so
no one of them owns the contract. It uses the standard library alone, so the report's prose
(``report.words``) and the CLI can import it without torch or matplotlib.

How to read a document: a *required* key is always there (readers index it: ``run["cost"]``);
an *optional* key may be missing (readers use ``.get``): it belongs to some documents only
(the teacher run has no ``agreement``, only the demo has ``notes``) or the readers can do
without it, so older files that lack it stay readable. Either may hold ``null`` only where
its spec says "or null": metrics are null when undefined (NaN is written as null). Keys not
named here are allowed: recipes add their own settings, documents grow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

__all__ = ["AUDIT", "RESULTS", "SchemaError", "validate", "validate_audit", "validate_results"]


class SchemaError(ValueError):
    """A document does not follow its schema; the message says where and why."""


@dataclass(frozen=True)
class Value:
    """A JSON scalar of one of ``types`` (``bool`` is never a number)."""

    types: tuple[type, ...]
    words: str


@dataclass(frozen=True)
class OrNull:
    """``spec``, or ``null``."""

    spec: Spec


@dataclass(frozen=True)
class ListOf:
    """A JSON array whose items follow ``item``."""

    item: Spec


@dataclass(frozen=True)
class MapOf:
    """A JSON object with any keys, whose values follow ``value``."""

    value: Spec


@dataclass(frozen=True)
class Record:
    """A JSON object: ``required`` keys, ``optional`` ones, and any others (following ``rest``
    when given)."""

    required: dict[str, Spec]
    optional: dict[str, Spec] = field(default_factory=dict)
    rest: Spec | None = None


@dataclass(frozen=True)
class Choice:
    """One of the strings ``values``."""

    values: tuple[str, ...]


Spec = Union[Value, OrNull, ListOf, MapOf, Record, Choice]

ANY = OrNull(Value((object, bool), "anything"))
STR = Value((str,), "a string")
BOOL = Value((bool,), "true or false")
INT = Value((int,), "an integer")
NUMBER = Value((int, float), "a number")
METRIC = OrNull(NUMBER)  # undefined metrics (NaN) are written as null

# --------------------------------------------------------------------------------------------
# results.json
# --------------------------------------------------------------------------------------------

AGREEMENT_KEYS = ("spearman", "topk_iou", "topk_intersection", "cosine", "ssim", "argmax_agree",
                  "com_shift")
# added later (issue 15): optional, so that documents written before stay valid
LATER_AGREEMENT_KEYS = ("peak_distance", "hit_given_teacher_hit")
# what a model's maps score against themselves: the reference run's value of each agreement
# metric (it has no "agreement" entry of its own)
SELF_AGREEMENT = {"spearman": 1.0, "topk_iou": 1.0, "topk_intersection": 1.0, "cosine": 1.0,
                  "ssim": 1.0, "argmax_agree": 1.0, "com_shift": 0.0, "peak_distance": 0.0,
                  "hit_given_teacher_hit": 1.0}

# the localisation metrics (evaluate.runner.LOCALIZATION), each with a centre baseline: the
# metric's key + CENTER_BASELINE (docs/metrics.md, "The centre baseline")
LOCALIZATION_KEYS = ("pointing_game", "pointing_game_std", "auc", "energy_pg", "relevance_mass",
                     "relevance_rank")
CENTER_BASELINE = "_center_baseline"

CI = Record({"mean": METRIC, "ci_low": METRIC, "ci_high": METRIC})

# one fixed pair set (evaluate.runner.PAIR_SETS): its size, then metric -> mean and interval
PAIR_SET = Record({"pairs": INT, "pooled": MapOf(CI), "class_balanced": MapOf(CI)})

# gap recovered of one metric on one pair set (evaluate.stats.gaps_recovered)
GAP = Record({"status": Choice(("ok", "no gap", "undefined")),
              **{k: METRIC for k in ("teacher", "naive", "matched", "gap", "gap_ci_low",
                                     "gap_ci_high", "gain", "gain_ci_low", "gain_ci_high",
                                     "recovered", "ci_low", "ci_high")}})
GAP_RECOVERED = Record(
    {"naive": STR},  # the naive run of the same recipe
    # the run whose values the gap is measured from: the teacher, or the control
    optional={"level": STR},
    rest=Record({"pooled": MapOf(GAP), "class_balanced": MapOf(GAP)}))  # pair set -> ...

ATTRIBUTION = Record(
    # one explainer's scores of one run (evaluate.runner)
    required={"pointing_game": METRIC, "pointing_game_std": METRIC, "auc": METRIC,
              "energy_pg": METRIC},
    optional={
        # the reference (teacher) run has no agreement with itself
        "agreement": Record({k: METRIC for k in ("spearman", "topk_iou", "cosine",
                                                 "argmax_agree")}, rest=METRIC),
        "agreement_ci": MapOf(Record({"ci_low": METRIC, "ci_high": METRIC})),
        "delta": MapOf(MapOf(METRIC)),  # metric -> {a, b, delta, ci_low, ci_high}
        "per_class": MapOf(MapOf(METRIC)),  # metric (and "pairs") -> class index (str) -> mean
        "per_image": MapOf(ListOf(METRIC)),
        # each localisation metric of a centred map, on the same pairs (docs/metrics.md)
        **{k + CENTER_BASELINE: METRIC for k in LOCALIZATION_KEYS},
        "relevance_mass": METRIC, "relevance_rank": METRIC, "deletion_auc": METRIC,
        "insertion_auc": METRIC,
        "pairs": INT, "predicted_pairs": INT,
        "pair_sets": MapOf(PAIR_SET),  # "all", "teacher_correct" (with a teacher)
        "gap_recovered": GAP_RECOVERED,  # matched runs with a naive run of their recipe
        # the share of the compression-caused gap (control minus naive) recovered
        "gap_recovered_vs_control": GAP_RECOVERED},
    rest=ANY)

RUN = Record({
    "name": STR,
    "role": OrNull(STR),  # "teacher", "compressed", "control"; null for a checkpoint that names none
    "checkpoint": STR,
    # the checkpoint's settings; each recipe adds its own (lambda, rate, bits, ...)
    "compression": Record({"method": STR, "matching": STR}),
    "cost": Record({"params": INT, "nonzero_params": INT, "macs": INT,
                    "bytes": OrNull(INT), "latency_ms": NUMBER}),
    # mAP / F1 are null for a single-label model (scoring "single-label": top-1 instead)
    "task": Record({"mAP": METRIC, "F1": METRIC, "per_class_AP": ListOf(METRIC)},
                   optional={"scoring": Choice(("single-label", "multi-label")),
                             "top1": METRIC, "top1_agreement": METRIC,
                             "per_class_top1": ListOf(METRIC), "F1_val_threshold": METRIC,
                             "F1_at_val_threshold": METRIC}),
    "attribution": MapOf(ATTRIBUTION),  # explainer -> scores
    "training": Record({"best_epoch": OrNull(INT), "best_val_mAP": METRIC}),
}, optional={"recipe_label": STR})  # the recipe's display label (recipes.RECIPES), if known

SWEEP_ROW = Record(
    # one compressed point of a strength sweep (pipeline.sweep_rows)
    {"recipe": STR, "matching": STR, "strength": NUMBER},
    optional={"params": INT, "nonzero_params": INT, "bytes": OrNull(INT),
              "size_bytes": OrNull(NUMBER), "mAP": METRIC, "pointing_game": METRIC,
              "auc": METRIC, "spearman": METRIC})

VERSIONS = Record({"attrpreserve": STR}, rest=STR)

RESULTS = Record(
    {"runs": ListOf(RUN),
     # the evaluated data: DataConfig's fields, the split and what it held
     "dataset": Record({"spec": STR, "size": INT, "seed": INT, "n_train": OrNull(INT),
                        "n_val": OrNull(INT), "n_test": OrNull(INT), "batch_size": INT,
                        "split": STR, "images": INT, "classes": ListOf(STR)},
                       optional={"preprocess": STR, "workers": INT, "labels": STR,
                                 "device": STR}),
     "seed": INT,
     "versions": VERSIONS},
    optional={"demo": MapOf(ANY),  # DemoConfig's settings (demo only)
              "notes": ListOf(STR),  # sentences the report prints under its headline
              "sweeps": ListOf(SWEEP_ROW),
              "wall_seconds": NUMBER,
              # the photo presets (pipeline.photos): settings, throughput, unseen-photo top-1
              "photos": MapOf(ANY)})

# --------------------------------------------------------------------------------------------
# audit.json
# --------------------------------------------------------------------------------------------

DELTA = Record({"a": METRIC, "b": METRIC, "delta": METRIC, "ci_low": METRIC, "ci_high": METRIC})

# the audit's agreement: the evaluator's keys, and the peak distance in native map cells
AUDIT_AGREEMENT_CI = {k: CI for k in (*AGREEMENT_KEYS, "peak_cells")}
LATER_CI = {k: CI for k in LATER_AGREEMENT_KEYS}
BLANK = ListOf(Choice(("a", "b")))  # the models whose map is blank where the other's is not

AUDIT_EXPLAINER = Record({
    "grid": MapOf(ListOf(INT)),  # model ("a", "b") -> its native map's (h, w)
    "cell_px": METRIC,  # px per native map cell at the compared size (the coarser model's)
    "vanished_pairs": INT,
    "agreement": Record(AUDIT_AGREEMENT_CI, LATER_CI),
    "localization": OrNull(MapOf(DELTA)),  # null without masks
    "faithfulness": OrNull(MapOf(DELTA)),  # null unless asked for
    # class index (str) -> pairs, agreement CIs and (other keys) localisation deltas
    "per_class": MapOf(Record({"pairs": INT, **AUDIT_AGREEMENT_CI}, LATER_CI, rest=DELTA)),
    # one row per image in loader order; delta_<metric> keys with masks; name where the
    # dataset has files; top1_a / top1_b for single-label models
    "per_image": ListOf(Record({"index": INT, "classes": ListOf(INT), "spearman": METRIC,
                                "ssim": METRIC, "argmax_agree": METRIC,
                                "predictions_agreed": BOOL, "vanished": BOOL, "blank": BLANK},
                               {"name": STR, "top1_a": INT, "top1_b": INT}, rest=METRIC)),
    "most_moved": ListOf(Record({
        "index": INT, "classes": ListOf(INT), "spearman": METRIC, "predictions_agreed": BOOL,
        "vanished": BOOL, "blank": BLANK,
        "pairs": ListOf(Record({"class": INT, "spearman": METRIC, "argmax_agree": BOOL,
                                "peak_cells": METRIC, "predicted_a": BOOL,
                                "predicted_b": BOOL, "blank": OrNull(Choice(("a", "b")))}))},
        {"name": STR, "top1_a": INT, "top1_b": INT})),
    "hidden_disagreement": Record(
        {"low_agreement_pairs": INT, "share_low": CI,
         "same_decision_pairs": INT, "same_decision_low_agreement_pairs": INT,
         "share_low_among_same_decision": CI, "both_predicted_pairs": INT,
         "share_low_among_both_predicted": CI, "different_decision_pairs": INT,
         "share_low_among_different_decision": CI},
        optional={"rule": STR}),
})

# single-label (softmax) models: top1 per model and top1_agreement; multi-label: mAP / F1 and
# the sigmoid decisions' agreement
TASK_SIDE = Record({}, {"mAP": METRIC, "F1": METRIC, "top1": METRIC})
AUDIT_TASK = Record({"a": TASK_SIDE, "b": TASK_SIDE, "single_label": BOOL},
                    optional={"decision_agreement": METRIC, "label_set_agreement": METRIC,
                              "pair_decision_agreement": METRIC, "top1_agreement": METRIC,
                              "definitions": MapOf(STR)})

# an ONNX candidate's PyTorch source (its export sidecar names it) audited against the same
# reference, data and explainers: the candidate's measures, side by side (pipeline.onnx_export)
SOURCE_CANDIDATE = Record({"candidate": STR, "task": AUDIT_TASK, "explainers": MapOf(
    Record({"agreement": Record(AUDIT_AGREEMENT_CI, LATER_CI)}))})

# the verdict of ``audit --require`` (evaluate.gate): the requirements as parsed, and one check
# per requirement and audited explainer (explainer null for a task measure); value null when
# the audit lacks the measure or it is undefined, which fails
GATE = Record({"passed": BOOL, "requirements": ListOf(STR), "checks": ListOf(Record({
    "requirement": STR, "explainer": OrNull(STR), "measure": STR,
    "bound": Choice(("estimate", "low", "high")), "op": Choice((">=", ">", "<=", "<")),
    "threshold": NUMBER, "value": METRIC, "passed": BOOL, "line": STR}))})

AUDIT = Record(
    {"images": INT, "pairs": INT,
     "localization": BOOL,  # whether the data had masks
     "class_names": ListOf(STR),
     "task": AUDIT_TASK,
     "definitions": MapOf(STR),  # metric -> definition
     "settings": Record({"n_boot": INT, "seed": INT, "confidence": NUMBER,
                         "low_spearman": NUMBER, "peak_tolerance_cells": NUMBER,
                         "explainers": ListOf(STR), "layers": MapOf(OrNull(STR))}),
     "explainers": MapOf(AUDIT_EXPLAINER)},
    optional={"reference": STR, "candidate": STR, "split": STR,  # pipeline.audit's additions
              "versions": VERSIONS, "source_candidate": SOURCE_CANDIDATE,
              "gate": GATE})  # audit --require


# --------------------------------------------------------------------------------------------
# Checking
# --------------------------------------------------------------------------------------------

def validate(document: Any, schema: Spec, where: str = "document") -> Any:
    """``document`` itself if it follows ``schema``; else :class:`SchemaError` naming the first
    bad place (``where`` is the document's name in the message)."""
    _check(document, schema, where)
    return document


def validate_results(document: Any) -> dict:
    """A results.json document (:data:`RESULTS`), checked."""
    return validate(document, RESULTS, "results")


def validate_audit(document: Any) -> dict:
    """An audit.json document (:data:`AUDIT`), checked."""
    return validate(document, AUDIT, "audit")


def _check(value: Any, spec: Spec, where: str, nullable: bool = False) -> None:
    if isinstance(spec, OrNull):
        if value is not None:
            _check(value, spec.spec, where, nullable=True)
        return
    expected = "" if not nullable else " or null"
    if isinstance(spec, Choice):
        if value not in spec.values:
            _fail(where, f"expected one of {', '.join(map(repr, spec.values))}{expected}, "
                         f"got {_shown(value)}")
        return
    if isinstance(spec, Value):
        if value is None or not isinstance(value, spec.types) or \
                (isinstance(value, bool) and bool not in spec.types):
            _fail(where, f"expected {spec.words}{expected}, got {_shown(value)}")
        return
    if isinstance(spec, ListOf):
        if not isinstance(value, (list, tuple)):
            _fail(where, f"expected a list{expected}, got {_shown(value)}")
        for i, item in enumerate(value):
            _check(item, spec.item, f"{where}[{i}]")
        return
    if not isinstance(value, dict):
        _fail(where, f"expected an object{expected}, got {_shown(value)}")
    if isinstance(spec, MapOf):
        for key, item in value.items():
            _check(item, spec.value, f"{where}.{key}")
        return
    missing = [k for k in spec.required if k not in value]
    if missing:
        _fail(where, f"missing required key {missing[0]!r}")
    for key, item in value.items():
        sub = spec.required.get(key) or spec.optional.get(key) or spec.rest
        if sub is not None:
            _check(item, sub, f"{where}.{key}")


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _fail(where: str, why: str):
    raise SchemaError(f"{where}: {why}")
