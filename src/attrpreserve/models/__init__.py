"""Model families, the matched-layer contract and checkpoint files.

Loading a checkpoint or a ``pretrained:`` spec is ``attrpreserve.loading`` (it needs the
structural rebuild steps of ``compress/``, which sits above this package)."""

from .checkpoint import save_checkpoint
from .layers import LayerTap, class_probabilities, default_layer, get_layer
from .registry import MODELS, create_model, register_model
from .vgg import VGG

__all__ = ["MODELS", "VGG", "LayerTap", "class_probabilities", "create_model", "default_layer", "get_layer",
           "register_model", "save_checkpoint"]
