"""attrpreserve: compress PyTorch vision models without breaking their explanations, and prove it."""

__version__ = "0.1.0"

__all__ = ["__version__", "audit", "AuditResult", "explain"]


def __getattr__(name):
    """Lazy top-level exports: ``attrpreserve.explain`` / ``audit`` import torch only when first
    used."""
    if name == "explain":
        from .attribution.api import explain
        return explain
    if name in ("audit", "AuditResult"):
        from .pipeline import api
        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
