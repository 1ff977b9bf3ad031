"""``attrpreserve.audit``: the audit and its release gate from Python, as a typed result.

The CLI's ``attrpreserve audit --require SPEC`` and this function run the same stage
(:func:`.stages.audit`); this one also takes models and data already in memory and returns an
:class:`AuditResult` instead of the audit.json dict.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from ..attribution import EXPLAINERS
from ..evaluate.gate import Check, Requirement, Verdict, parse, require_explainers
from ..report.words import audit_headline
from ..results_schema import validate_audit
from . import stages
from .configs import DataConfig, labels_for, resolve_data

__all__ = ["AuditResult", "Estimate", "audit"]


@dataclass(frozen=True)
class Estimate:
    """A measure's point estimate with its bootstrap interval (``None`` where undefined)."""

    value: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True)
class AuditResult:
    """What :func:`audit` found: the gate's :class:`~attrpreserve.evaluate.gate.Verdict`, typed
    accessors of the headline numbers, and the whole audit.json document (:meth:`to_dict`)."""

    verdict: Verdict
    document: dict = field(repr=False, compare=False)

    @property
    def passed(self) -> bool:
        """Whether every requirement held (``True`` when none was given)."""
        return self.verdict.passed

    @property
    def failures(self) -> tuple[Check, ...]:
        """The failed checks; each one's ``line`` says what was measured and required."""
        return self.verdict.failures

    @property
    def requirements(self) -> tuple[Requirement, ...]:
        return self.verdict.requirements

    @property
    def explainers(self) -> tuple[str, ...]:
        return tuple(self.document["explainers"])

    @property
    def reference(self) -> str:
        return self.document.get("reference", "")

    @property
    def candidate(self) -> str:
        return self.document.get("candidate", "")

    @property
    def top1_agreement(self) -> float | None:
        """Share of images on which both models' top-scored classes agree."""
        return self.document["task"].get("top1_agreement")

    def agreement(self, measure: str = "spearman", explainer: str | None = None) -> Estimate:
        """One agreement measure (``spearman``, ``ssim``, ``argmax_agree``, ...) of
        ``explainer`` (default: the first audited) with its interval."""
        entry = self._report(explainer)["agreement"].get(measure)
        if entry is None:
            raise ValueError(f"no agreement measure {measure!r}; the audit has: "
                             f"{', '.join(self._report(explainer)['agreement'])}")
        return Estimate(entry["mean"], entry["ci_low"], entry["ci_high"])

    def headline(self, explainer: str | None = None) -> str:
        """The one-sentence verdict on how far ``explainer``'s maps moved (the CLI's line)."""
        return audit_headline(self.document, explainer or self.explainers[0])["summary"]

    def __repr__(self) -> str:
        return (f"AuditResult(passed={self.passed}, failures={len(self.failures)}, "
                f"explainers={self.explainers}, reference={self.reference!r}, "
                f"candidate={self.candidate!r})")

    def to_dict(self) -> dict:
        """The audit.json document (a copy)."""
        return copy.deepcopy(self.document)

    def write(self, folder: str | Path) -> Path:
        """Write FOLDER/audit.json (the page needs the models: pass ``out=`` to :func:`audit`
        for it); returns the file's path."""
        path = Path(folder) / "audit.json"
        stages.write_results(validate_audit(self.to_dict()), path)
        return path

    def _report(self, explainer: str | None) -> dict:
        name = explainer or self.explainers[0]
        if name not in self.document["explainers"]:
            raise ValueError(f"the audit has no {name!r} explainer; it has: "
                             f"{', '.join(self.explainers)}")
        return self.document["explainers"][name]


def audit(reference, candidate, data=None, *, split: str = "test",
          explainers=("gradcam",), require=None, out: str | Path | None = None,
          n_boot: int = 1000, top: int = 12, seed: int = 0, faithfulness: bool = False,
          progress: bool = False, device: str = "cpu") -> AuditResult:
    """How far ``candidate``'s explanations moved from ``reference``'s, and whether that passes
    the requirements ``require``.

    ``reference`` / ``candidate``: a model reference (checkpoint folder, ``pretrained:`` spec,
    as on the command line) or an ``nn.Module`` taking [0, 1] images (moved to ``device``).
    ``data``: ``None`` for the reference checkpoint's own data; a dataset spec string
    (``"scenes"``, ``"images:FOLDER"``) or a dict of ``DataConfig`` fields overriding the
    checkpoint's (a module reference has none: then they override the defaults); a
    ``DataConfig``; or a DataLoader (any iterable of ``(images, multi-hot labels, masks or
    None)`` batches in a fixed order), used as is. ``split``: which split of the data config.
    ``require``: a gate spec (``"spearman>=0.8,top1_agreement>=0.98"``; grammar in
    :mod:`attrpreserve.evaluate.gate`) or a list of them, parsed (``ValueError``) before any
    model is loaded. ``out``: a folder for audit.json and audit.html (default: nothing
    written). The remaining options are the audit's (:func:`attrpreserve.evaluate.audit`).

    For example ``attrpreserve.audit("runs/teacher", "runs/int8", require="top1_agreement>=0.95,
    spearman.low>=0.9")``, then ``result.passed`` and ``[f.line for f in result.failures]``.
    """
    requirements = parse(require)
    explainers = (explainers,) if isinstance(explainers, str) else tuple(explainers)
    for e in explainers:
        EXPLAINERS.check(e)
    require_explainers(requirements, explainers)
    if isinstance(data, str):
        data = {"spec": data}
    models = {}
    for role, model in (("reference", reference), ("candidate", candidate)):
        if isinstance(model, nn.Module):  # a stand-in for a checkpoint: the data's defaults
            meta = {"classes": getattr(model, "classes", None), "data": asdict(DataConfig())}
            model = stages.Loaded(model, meta, f"{type(model).__name__} (nn.Module)")
        models[role] = model
    ref = models["reference"]
    if isinstance(ref, stages.Loaded) and (data is None or isinstance(data, (DataConfig, dict))):
        if data is None:
            raise ValueError("data: a module reference has no data of its own; give a spec "
                             "such as 'scenes', a DataConfig or a DataLoader")
        # photo folders are labeled in the module's classes when it names them (.classes)
        classes = ref.meta["classes"]
        data = resolve_data(data, ref.meta).loader(
            split, adapt=labels_for(ref.model, classes) if classes else None)
    document = stages.audit(models["reference"], models["candidate"], out, data, split,
                            explainers, n_boot=n_boot, top=top, seed=seed,
                            faithfulness=faithfulness, progress=progress, device=device,
                            require=requirements or None)
    verdict = Verdict.from_dict(document["gate"]) if "gate" in document else Verdict((), ())
    return AuditResult(verdict, document)
