"""Explainers: batched, multi-target attribution maps, registered by name."""

from .gradcam import frozen, gradcam, pair_gradcam, upsample, weighted_map

EXPLAINERS = {"gradcam": gradcam}

__all__ = ["EXPLAINERS", "frozen", "gradcam", "pair_gradcam", "upsample", "weighted_map"]
