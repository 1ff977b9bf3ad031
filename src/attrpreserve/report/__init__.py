"""Figures and self-contained HTML pages of results documents, one module per concern:

- ``words``: the judgement in plain sentences (:func:`headline`, :func:`audit_headline`,
  :func:`gap_closed`, :func:`recipe_groups`) and numbers as text; no torch, no matplotlib.
- ``html``: escaping, tables, cards, sections, inline PNGs and the document shell (inline CSS,
  no script, no external URL).
- ``figures``: every matplotlib figure: overlays (:func:`save_overlay`,
  :func:`save_overlays`), bar charts, sweep curves, heatmap grids, training curves, histograms.
- ``maps``: what the heatmaps show: :class:`ReportImages`, the class each row explains, and
  the models' maps and probabilities (:func:`maps.heatmaps`, run where the models are loaded:
  the pipeline passes them to the page; the one place explainers run for a page).
- ``results_page``: :func:`write_report`, the page of a results.json document; it draws the
  :class:`maps.Heatmaps` it receives (or loads checkpoint folders itself when only paths are
  given, ``load_checkpoints``).
- ``audit_page``: :func:`write_audit_report`, the page of an audit.json document.

The documents themselves are defined in :mod:`attrpreserve.results_schema`; both pages check
their input against it. Names are imported on first use, so ``attrpreserve.report.words`` (and
the CLI) load neither matplotlib nor torch.
"""

from __future__ import annotations

import importlib

__all__ = ["ReportImages", "audit_headline", "gap_closed", "headline", "recipe_groups",
           "save_overlay", "save_overlays", "write_audit_report", "write_report"]

# public name -> (module, name there)
_HOMES = {
    "ReportImages": ("maps", "ReportImages"),
    "audit_headline": ("words", "audit_headline"),
    "gap_closed": ("words", "gap_closed"),
    "headline": ("words", "headline"),
    "recipe_groups": ("words", "recipe_groups"),
    "save_overlay": ("figures", "save_overlay"),
    "save_overlays": ("figures", "save_overlays"),
    "write_audit_report": ("audit_page", "write_audit_report"),
    "write_report": ("results_page", "write_report"),
    "_maps_of": ("maps", "maps_of"),  # the old private name, used by tests/test_int8_kernels.py
}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _HOMES[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attr)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
