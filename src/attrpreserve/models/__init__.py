"""Model families, the matched-layer contract and checkpoint IO."""

from .checkpoint import load_checkpoint, register_rebuild_step, save_checkpoint
from . import pretrained  # noqa: F401  (registers the ImageNet families)
from .layers import LayerTap, class_probabilities, default_layer, get_layer
from .registry import MODELS, create_model, register_model
from .vgg import VGG

__all__ = ["MODELS", "VGG", "LayerTap", "class_probabilities", "create_model", "default_layer", "get_layer",
           "load_checkpoint", "register_model", "register_rebuild_step", "save_checkpoint"]
