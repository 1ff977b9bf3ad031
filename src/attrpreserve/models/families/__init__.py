"""The model families, one file each (``models.family`` says what a card holds).

Adding a family: write ``models/families/<name>.py`` (its builders and one
``register_family(Family(...))``) and import it below.
"""

# registration order is the order of ``MODELS`` (and of "known: ..." in errors)
from . import vgg, torchvision, efficientnet_lite, timm  # noqa: I001

__all__ = ["efficientnet_lite", "timm", "torchvision", "vgg"]
