"""Model families (one file each in ``models/families/``, their cards in ``models.family``), the
matched-layer contract and checkpoint files.

Loading a checkpoint or a ``pretrained:`` spec is ``attrpreserve.loading`` (it needs the
structural rebuild steps of ``compress/``, which sits above this package)."""

from . import families
from .checkpoint import save_checkpoint
from .families.vgg import VGG
from .family import FAMILIES, Family, family_of, is_single_label, register_family
from .layers import LayerTap, class_probabilities, default_layer, get_layer
from .registry import MODELS, create_model, register_model

__all__ = ["FAMILIES", "MODELS", "VGG", "Family", "LayerTap", "class_probabilities",
           "create_model", "default_layer", "families", "family_of", "get_layer",
           "is_single_label", "register_family", "register_model", "save_checkpoint"]
