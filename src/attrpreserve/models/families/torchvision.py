"""torchvision classifiers (ResNet, MobileNet, VGG-BN, ConvNeXt, ...): builders and card.

``torchvision_imagenet`` builds any ``torchvision.models`` classifier by name with ImageNet
normalisation inside (single-label: a softmax head; weights from ``pretrained:ARCH=PATH``);
``resnet18`` and ``mobilenet_v3_small`` are the same architectures as multi-label models of the
built-in scenes. Matched at the last feature block's output (:data:`MATCHED_LAYERS`, by
torchvision class), LRP through zennit's ResNet canonizer for ResNets. No eager-mode QAT:
int8 would need per-architecture surgery (fusable blocks, quantized residual adds).
"""

from __future__ import annotations

from torch import nn

from ..family import Family, register_family
from ..normalize import with_input_normalization

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET = "torchvision_imagenet"


def _torchvision(builder: str, num_classes: int, **kwargs) -> nn.Module:
    """A torchvision classifier with random weights (nothing is downloaded)."""
    import torchvision

    return getattr(torchvision.models, builder)(weights=None, num_classes=num_classes, **kwargs)


def resnet18(num_classes: int, input_size: int = 224) -> nn.Module:
    """torchvision ResNet-18, random init; ``input_size`` is recorded for the data pipeline."""
    return _torchvision("resnet18", num_classes)


def mobilenet_v3_small(num_classes: int, input_size: int = 224, dropout: float = 0.2) -> nn.Module:
    """torchvision MobileNetV3-Small, random init."""
    return _torchvision("mobilenet_v3_small", num_classes, dropout=dropout)


def torchvision_imagenet(arch: str, num_classes: int = 1000, input_size: int = 224) -> nn.Module:
    """A ``torchvision.models`` classifier, random init, taking [0, 1] images (ImageNet
    normalisation inside); ``input_size`` is recorded for the data pipeline."""
    import torchvision

    builder = getattr(torchvision.models, arch, None)
    if not callable(builder) or arch.startswith("_") or arch[:1].isupper():
        raise ValueError(f"unknown torchvision model {arch!r}")
    model = builder(weights=None, num_classes=num_classes)
    return with_input_normalization(model, IMAGENET_MEAN, IMAGENET_STD)


def _last_relu(model: nn.Module) -> str:
    return f"features.{max(i for i, m in enumerate(model.features) if isinstance(m, nn.ReLU))}"


def _last_feature_block(model: nn.Module) -> str:
    return f"features.{len(model.features) - 1}"


# By torchvision class name: the last feature block's output (after its residual add and
# activation), Grad-CAM's usual layer; other classes are probed (``models.layers.probe_layer``)
MATCHED_LAYERS = {
    "ResNet": lambda m: "layer4", "VGG": _last_relu, "AlexNet": _last_relu,
    "MobileNetV2": _last_feature_block, "MobileNetV3": _last_feature_block,
    "EfficientNet": _last_feature_block, "ConvNeXt": _last_feature_block,
    "DenseNet": lambda m: "features", "SqueezeNet": lambda m: "features",
    "RegNet": lambda m: "trunk_output", "ShuffleNetV2": lambda m: "conv5",
    "MNASNet": lambda m: "layers",
}


def _matched_layer(model: nn.Module) -> str | None:
    rule = MATCHED_LAYERS.get(type(model).__name__)
    return rule(model) if rule is not None else None


def _is_torchvision(model: nn.Module) -> bool:
    return type(model).__module__.startswith("torchvision.models")


def _canonizers(model: nn.Module) -> list:
    """zennit's ResNet canonizer (BatchNorm merged, the residual add made explicit) for ResNets,
    BatchNorm merged into the preceding layer otherwise."""
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer

    return [ResNetCanonizer() if type(model).__name__ == "ResNet" else SequentialMergeBatchNorm()]


FAMILY = register_family(Family(
    "torchvision", label="the torchvision models (ResNet, MobileNet, ...)",
    builders={"resnet18": resnet18, "mobilenet_v3_small": mobilenet_v3_small,
              IMAGENET: torchvision_imagenet},
    matches=_is_torchvision, matched_layer=_matched_layer,
    single_label=lambda m: getattr(m, "spec", {}).get("name") == IMAGENET,
    students={"resnet18": (IMAGENET, {"arch": "resnet18"}),
              "mobilenet_v3_small": (IMAGENET, {"arch": "mobilenet_v3_small"})},
    canonizers=_canonizers))
