"""A release gate on an audit: requirements such as ``spearman>=0.8,top1_agreement>=0.98``,
checked against an :func:`~attrpreserve.evaluate.audit` result.

The grammar (``attrpreserve audit --require SPEC``, ``attrpreserve.audit(require=...)``)::

    SPEC        := REQUIREMENT ("," REQUIREMENT)*
    REQUIREMENT := [EXPLAINER ":"] MEASURE ["." BOUND] OP NUMBER
    BOUND       := "low" | "high"          the bootstrap interval's lower / upper end
    OP          := ">=" | ">" | "<=" | "<"

A plain measure name is its point estimate (an agreement's mean over pairs, a localisation
difference B - A); ``spearman.low>=0.7`` requires the lower end of its interval to be at least
0.7 (only measures with an interval have bounds). Without an explainer prefix an explainer
measure is required of every audited explainer (one check each); ``gradcam:spearman>=0.8`` of
Grad-CAM only. Task measures (``top1_agreement``, ...) belong to no explainer and are checked
once. :data:`MEASURES` lists every measure with what it is.

:func:`parse` turns a spec into :class:`Requirement` objects and raises ``ValueError`` for a bad
one (an unknown measure names the closest known one), before any model work;
:func:`check` evaluates them against an audit result into a :class:`Verdict`. A measure the
audit did not measure (localisation without masks, a task measure of the other label kind) or
measured as undefined (null) fails its requirement: a gate never passes on a missing number.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Iterable

from ..attribution import EXPLAINERS
from .runner import AGREEMENT, FAITHFULNESS, LOCALIZATION

__all__ = ["MEASURES", "Check", "Measure", "Requirement", "Verdict", "check", "parse",
           "require_explainers"]

OPS = {">=": float.__ge__, ">": float.__gt__, "<=": float.__le__, "<": float.__lt__}
BOUNDS = {"low": "ci_low", "high": "ci_high"}


@dataclass(frozen=True)
class Measure:
    """Where an audit keeps one measure: under each explainer's report (``scope="explainer"``)
    or in ``result["task"]``, at ``path``; ``point`` is the key of its estimate inside a record
    with an interval (``ci_low`` / ``ci_high``), ``None`` for a plain number."""

    scope: str
    path: tuple[str, ...]
    point: str | None
    words: str

    @property
    def interval(self) -> bool:
        return self.point is not None


def _measures() -> dict[str, Measure]:
    out = {k: Measure("explainer", ("agreement", k), "mean", f"mean {k} agreement of B's maps "
                      "with A's over pairs") for k in (*AGREEMENT, "peak_cells")}
    out["spearman"] = Measure("explainer", ("agreement", "spearman"), "mean",
                              "mean Spearman rank correlation of B's maps with A's over pairs")
    for k in ("share_low", "share_low_among_same_decision", "share_low_among_both_predicted",
              "share_low_among_different_decision"):
        out[k] = Measure("explainer", ("hidden_disagreement", k), "mean",
                         "share of pairs with low agreement" + k[len("share_low"):]
                         .replace("_", " "))
    out["vanished_pairs"] = Measure("explainer", ("vanished_pairs",), None,
                                    "pairs whose map is blank for exactly one model")
    for group, specs, why in (("localization", LOCALIZATION, "needs masks"),
                              ("faithfulness", FAITHFULNESS, "needs --faithfulness")):
        for name, *_ in specs:
            out[f"delta_{name}"] = Measure("explainer", (group, name), "delta",
                                           f"{name} of B minus A ({why})")
    for k in ("top1_agreement", "decision_agreement", "label_set_agreement",
              "pair_decision_agreement"):
        out[k] = Measure("task", (k,), None, f"{k.replace('_', ' ')} of the two models' "
                         "predictions")
    for side, who in (("a", "reference"), ("b", "candidate")):
        for k in ("top1", "mAP", "F1"):
            out[f"{who}_{k}"] = Measure("task", (side, k), None, f"the {who}'s {k}")
    return out


MEASURES: dict[str, Measure] = _measures()
"""Every measure a requirement may name: explainer measures (agreement, hidden disagreement,
vanished pairs, localisation / faithfulness differences ``delta_<metric>``) and task
measures (prediction agreement, each model's top-1 / mAP / F1)."""

_REQUIREMENT = re.compile(r"^\s*(?:(?P<explainer>[\w-]+)\s*:\s*)?(?P<measure>\w+)"
                          r"(?:\.(?P<bound>\w+))?\s*(?P<op>>=|<=|>|<)\s*(?P<value>\S+?)\s*$")


@dataclass(frozen=True)
class Requirement:
    """One requirement: ``explainer`` (``None``: every audited one), ``measure``, ``bound``
    (``None`` for the estimate, ``"low"`` / ``"high"``), ``op`` and ``threshold``."""

    measure: str
    op: str
    threshold: float
    bound: str | None = None
    explainer: str | None = None

    @property
    def text(self) -> str:
        """The requirement as written in a spec (normalised)."""
        prefix = f"{self.explainer}:" if self.explainer else ""
        bound = f".{self.bound}" if self.bound else ""
        return f"{prefix}{self.measure}{bound}{self.op}{_number(self.threshold)}"

    def holds(self, value: float) -> bool:
        return OPS[self.op](float(value), self.threshold)


@dataclass(frozen=True)
class Check:
    """One requirement checked on one explainer (``None`` for a task measure): the measured
    ``value`` (``None`` when missing or undefined), whether it ``passed``, and ``line``, the
    one-line statement of it."""

    requirement: Requirement
    explainer: str | None
    value: float | None
    passed: bool
    line: str

    def to_dict(self) -> dict:
        r = self.requirement
        return {"requirement": r.text, "explainer": self.explainer, "measure": r.measure,
                "bound": r.bound or "estimate", "op": r.op, "threshold": r.threshold,
                "value": self.value, "passed": self.passed, "line": self.line}

    @classmethod
    def from_dict(cls, d: dict) -> Check:
        return cls(_parse_one(d["requirement"]), d["explainer"], d["value"], bool(d["passed"]),
                   d["line"])


@dataclass(frozen=True)
class Verdict:
    """Every requirement's checks; ``passed`` when all passed (vacuously without any)."""

    requirements: tuple[Requirement, ...]
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def to_dict(self) -> dict:
        """audit.json's ``gate`` (``results_schema.GATE``)."""
        return {"passed": self.passed, "requirements": [r.text for r in self.requirements],
                "checks": [c.to_dict() for c in self.checks]}

    @classmethod
    def from_dict(cls, d: dict) -> Verdict:
        return cls(tuple(r for text in d["requirements"] for r in parse(text)),
                   tuple(Check.from_dict(c) for c in d["checks"]))


def parse(spec: str | Iterable[str] | None) -> tuple[Requirement, ...]:
    """The requirements of a spec (``"spearman>=0.8,gradcam:ssim.low>0.5"``; several specs in
    a list are joined). ``ValueError`` naming the bad requirement and, for an unknown measure,
    the known ones and the closest match."""
    if spec is None:
        return ()
    specs = [spec] if isinstance(spec, str) else list(spec)
    out = []
    for text in (part for s in specs for part in str(s).split(",")):
        out.append(_parse_one(text))
    return tuple(out)


def _parse_one(text: str) -> Requirement:
    m = _REQUIREMENT.match(text)
    if not m:
        raise ValueError(f"bad requirement {text.strip()!r}: write [EXPLAINER:]MEASURE[.low|"
                         ".high] OP NUMBER with OP one of >=, >, <=, <, e.g. "
                         "'gradcam:spearman.low>=0.8'")
    name, bound, explainer = m["measure"], m["bound"], m["explainer"]
    if name not in MEASURES:
        close = difflib.get_close_matches(name, list(MEASURES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown measure {name!r} in requirement {text.strip()!r}{hint}; "
                         f"known: {', '.join(MEASURES)}")
    measure = MEASURES[name]
    if bound is not None and bound not in BOUNDS:
        raise ValueError(f"bad bound {bound!r} in requirement {text.strip()!r}: "
                         f"{name}.low or {name}.high (the interval's ends), or {name} alone")
    if bound is not None and not measure.interval:
        raise ValueError(f"{name} has no interval (requirement {text.strip()!r}); require "
                         f"{name} itself")
    if explainer is not None:
        if measure.scope == "task":
            raise ValueError(f"{name} is a task measure, the same for every explainer "
                             f"(requirement {text.strip()!r}); drop '{explainer}:'")
        EXPLAINERS.check(explainer, f" in requirement {text.strip()!r}")
    try:
        threshold = float(m["value"])
    except ValueError:
        threshold = math.nan
    if not math.isfinite(threshold):
        raise ValueError(f"bad threshold {m['value']!r} in requirement {text.strip()!r}: "
                         "a finite number")
    return Requirement(name, m["op"], threshold, bound, explainer)


def require_explainers(requirements: Iterable[Requirement], explainers: Iterable[str]) -> None:
    """``ValueError`` when a requirement names an explainer the audit will not run (checked
    with the flags, before any model work)."""
    explainers = list(explainers)
    for r in requirements:
        if r.explainer is not None and r.explainer not in explainers:
            raise ValueError(f"requirement {r.text!r} names {r.explainer}, which is not "
                             f"audited (explainers: {', '.join(explainers)})")


def check(result: dict, requirements: str | Iterable[Requirement | str] | None) -> Verdict:
    """Each requirement evaluated on an audit ``result`` (the audit.json document): one
    :class:`Check` per audited explainer it applies to (one for a task measure). Missing and
    undefined (null, NaN) values fail."""
    if isinstance(requirements, str) or requirements is None:
        requirements = parse(requirements)
    requirements = tuple(r if isinstance(r, Requirement) else _parse_one(r)
                         for r in requirements)
    checks = []
    no_boot = result.get("settings", {}).get("n_boot") == 0
    for r in requirements:
        measure = MEASURES[r.measure]
        if measure.scope == "task":
            checks.append(_check(r, None, result.get("task", {}), no_boot))
            continue
        for e in [r.explainer] if r.explainer else list(result["explainers"]):
            report = result["explainers"].get(e)
            checks.append(_check(r, e, report, no_boot) if report is not None else
                          _fail(r, e, "was not audited"))
    return Verdict(requirements, tuple(checks))


def _check(r: Requirement, explainer: str | None, block: dict, no_boot: bool = False) -> Check:
    value, why = _lookup(block, MEASURES[r.measure], r.bound)
    if why and r.bound and no_boot:
        why += " (the audit ran with --n-boot 0: no intervals)"
    if why:
        return _fail(r, explainer, why)
    passed = r.holds(value)
    shown = _shown(r, explainer)
    line = (f"{shown} {value:.3g} {r.op} {_number(r.threshold)}" if passed else
            f"{shown} {value:.3g}, required {r.op} {_number(r.threshold)}")
    return Check(r, explainer, value, passed, line)


_MISSING = {"localization": "not measured (the data has no masks)",
            "faithfulness": "not measured (audited without faithfulness)",
            "a": "not measured for these models (top1: single-label; mAP, F1: multi-label)",
            "b": "not measured for these models (top1: single-label; mAP, F1: multi-label)"}


def _lookup(block: dict, measure: Measure, bound: str | None) -> tuple[float | None, str]:
    """The measure's value in ``block`` (an explainer's report or the task block), or
    ``None`` and why it is missing."""
    value = block
    for key in (*measure.path, *((BOUNDS[bound] if bound else measure.point,)
                                 if measure.interval else ())):
        if not isinstance(value, dict) or key not in value:  # a block absent or null
            return None, _MISSING.get(measure.path[0], "not measured by this audit")
        value = value[key]
    if value is None or math.isnan(float(value)):
        return None, "undefined (null)"
    return float(value), ""


def _shown(r: Requirement, explainer: str | None) -> str:
    name = f"{r.measure}.{r.bound}" if r.bound else r.measure
    return f"{explainer} {name}" if explainer else name


def _fail(r: Requirement, explainer: str | None, why: str) -> Check:
    return Check(r, explainer, None, False,
                 f"{_shown(r, explainer)} {why}, required {r.op} {_number(r.threshold)}")


def _number(x: float) -> str:
    """A threshold as written: short (0.8, 1) where that is exact, else every digit."""
    return f"{x:g}" if float(f"{x:g}") == x else repr(x)
