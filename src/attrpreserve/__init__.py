"""attrpreserve: compress PyTorch vision models without breaking their explanations, and prove it."""

__version__ = "0.1.0"
