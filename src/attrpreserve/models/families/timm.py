"""timm's architectures (``timm:NAME[=WEIGHTS]``): builder and card.

Any ``timm.create_model`` name, random init (nothing is downloaded), with the input
normalisation of its pretrained configuration inside (so it takes [0, 1] images like every
model here); weights come from a local file (``timm:NAME=PATH``, ``loading.load_pretrained``).
ImageNet classifiers, so single-label. The matched layer is the last feature stage timm reports
(``feature_info``: ResNet ``layer4``, MobileNetV3 ``blocks.5``); for a Vision Transformer it is
the output of the last block but one, whose patch tokens reach the class token through the last
block's attention (the last block's own patch tokens do not: only its class token feeds the
head; its LayerNorm inside the residual block cannot be tapped with per-pair rows), read as a
``side x side`` map (:func:`prefix_tokens`; ``models.layers.LayerTap`` does the reshaping).
A ViT's card also names its attention maps (attention rollout), the Linear layers magnitude
pruning covers, its structured units (heads per attention, hidden channels per MLP) and QAT
of its block Linear layers (local: the rest stays float). A timm CNN has no eager-mode QAT
(refused by name); LRP uses the default BatchNorm merging.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

import torch
from torch import nn

from ..family import Family, QATSupport, register_family
from ..normalize import with_input_normalization


def _timm():
    try:
        import timm
    except ImportError:
        raise ValueError("timm models need the 'timm' extra: pip install 'attrpreserve[timm]'"
                         ) from None
    return timm


@functools.cache
def pretrained_cfg(arch: str) -> dict:
    """timm's pretrained configuration of ``arch`` (input size, mean, std, classes) as a dict;
    ``ValueError`` for a name timm does not know."""
    timm = _timm()
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:5]
        hint = f" (e.g. {', '.join(close)})" if close else ""
        raise ValueError(f"unknown timm model {arch!r}{hint}")
    cfg = timm.get_pretrained_cfg(arch)
    return cfg.to_dict() if cfg is not None else {}


# Architecture options a spec may pass to timm (a shape, never weights or files): a small
# ViT for 64 px images is ``test_vit`` with ``patch_size=8`` (the ViT demo's teacher).
# ``conv_stem`` (ours, not timm's) replaces the patch embedding's one strided convolution by
# a convolutional stem to the same stride: ViT's "hybrid" (Dosovitskiy et al. 2021, 3.1), which
# a ViT trained from scratch on a few thousand images learns far faster (docs/benchmarks.md).
ARCH_OPTIONS = {"patch_size": int, "embed_dim": int, "depth": int, "num_heads": int,
                "mlp_ratio": (int, float), "qkv_bias": bool, "class_token": bool,
                "conv_stem": bool}


def conv_stem(patch: int, dim: int) -> nn.Sequential:
    """Conv 3x3 - BatchNorm - ReLU - max-pool 2 stages (16, 32, 64, ... channels) down to
    stride ``patch`` (a power of two), then a 1x1 convolution to ``dim`` token channels."""
    stages = patch.bit_length() - 1
    if patch < 2 or 2 ** stages != patch:
        raise ValueError(f"conv_stem needs a power-of-two patch size, got {patch}")
    layers, width = [], 3
    for i in range(stages):
        out = 16 * 2 ** i
        layers += [nn.Conv2d(width, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                   nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        width = out
    return nn.Sequential(*layers, nn.Conv2d(width, dim, 1))


def _check_options(arch: str, options: dict) -> dict:
    for key, value in options.items():
        kind = ARCH_OPTIONS.get(key)
        if kind is None:
            raise ValueError(f"timm model {arch!r}: unknown architecture option {key!r} "
                             f"(known: {', '.join(ARCH_OPTIONS)})")
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
            raise ValueError(f"timm model {arch!r}: option {key!r} has the wrong type: "
                             f"{value!r:.40}")
    return dict(options)


def timm_model(arch: str, num_classes: int = 1000, input_size: int | None = None,
               single_label: bool = True, options: dict | None = None) -> nn.Module:
    """timm's ``arch`` with a ``num_classes`` head, random init, taking [0, 1] images.

    ``input_size`` (default: the architecture's) sizes a Vision Transformer's position
    embedding, which is resampled for images of another size (timm's ``dynamic_img_size``),
    so a ViT takes any size a convolutional model does; those only record it.
    ``single_label``: a softmax classifier (ImageNet weights; the default) or, trained by
    ``attrpreserve train`` on multi-label data, one sigmoid per class (the card reads it back
    from the spec). ``options``: :data:`ARCH_OPTIONS` changing the architecture's shape."""
    timm = _timm()
    cfg = pretrained_cfg(arch)
    kwargs = {**_check_options(arch, options or {}), "pretrained": False,
              "num_classes": int(num_classes)}
    stem = kwargs.pop("conv_stem", False)
    try:
        model = timm.create_model(arch, img_size=int(input_size or native_size(arch)),
                                  dynamic_img_size=True, **kwargs)
    except TypeError:  # not a patch-embedding model: no img_size argument
        if stem:
            raise ValueError(f"timm model {arch!r}: conv_stem applies to Vision Transformers "
                             "only") from None
        model = timm.create_model(arch, **kwargs)
    if stem:
        model.patch_embed.proj = conv_stem(model.patch_embed.patch_size[0], model.embed_dim)
    mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    return with_input_normalization(model, mean, std)


def native_size(arch: str) -> int:
    """The input side ``arch``'s weights were trained at (timm's configuration; else 224)."""
    return int(pretrained_cfg(arch).get("input_size", (3, 224, 224))[-1])


def prefix_tokens(model: nn.Module) -> int | None:
    """Class / distillation tokens before the patch tokens of a token model (its matched
    layer's output is batch x tokens x channels); None for a convolutional model."""
    return getattr(model, "num_prefix_tokens", None) if hasattr(model, "patch_embed") else None


def _matched_layer(model: nn.Module) -> str | None:
    if prefix_tokens(model) is not None:
        return f"blocks.{max(len(model.blocks) - 2, 0)}"
    info = getattr(model, "feature_info", None)
    return info[-1]["module"] if info else None


def _attention(model: nn.Module) -> list[nn.Module]:
    """Each block's attention probabilities pass through ``attn.attn_drop`` (on the unfused
    path: :func:`_exact_attention`)."""
    if prefix_tokens(model) is None:
        return []
    return [block.attn.attn_drop for block in model.blocks if hasattr(block, "attn")]


@contextmanager
def _exact_attention(model: nn.Module):
    """timm's attention unfused inside: the fused kernel (scaled_dot_product_attention) hides
    the attention probabilities rollout reads and has no second derivative on the CPU, which
    matching takes through the student's map; fused (faster) everywhere else."""
    modules = [m for m in model.modules() if hasattr(m, "fused_attn")]
    saved = [m.fused_attn for m in modules]
    for m in modules:
        m.fused_attn = False
    try:
        yield model
    finally:
        for m, flag in zip(modules, saved):
            m.fused_attn = flag


# zennit's composites have no rule for attention (softmax, the q k^T and attn v products) or
# LayerNorm: relevance is not conserved through them, and RAP's chain knows no such layer
_NO_ATTENTION_RULES = "its rules have no attention or LayerNorm rule (relevance is not conserved)"


def _refused_explainers(model: nn.Module) -> dict[str, str]:
    if prefix_tokens(model) is None:
        return {}
    return {"lrp": _NO_ATTENTION_RULES, "lrp_a1b0": _NO_ATTENTION_RULES,
            "ebp": _NO_ATTENTION_RULES, "rap": _NO_ATTENTION_RULES}


def _block_linears(model: nn.Module) -> list[nn.Module]:
    """A ViT's attention (qkv, proj) and MLP Linear layers: magnitude pruning covers them."""
    if prefix_tokens(model) is None:
        return []
    return [m for m in model.blocks.modules() if isinstance(m, nn.Linear)]


# Heads and MLP channels are cut by hand, not through torch-pruning: torch-pruning 1.6.1's
# MetaPruner ties head removal to the ratio of the qkv group's channels and, given a ratio,
# also prunes the embedding dimension every block shares (measured on deit_tiny: 192 -> 96),
# and leaves ``num_heads`` to be fixed by hand. A head is rows of qkv and columns of proj.
def _units(model: nn.Module) -> dict[str, int]:
    """Structured pruning's units of a ViT: heads per attention, hidden channels per MLP."""
    if prefix_tokens(model) is None:
        return {}
    units = {}
    for i, block in enumerate(model.blocks):
        units[f"blocks.{i}.attn"] = block.attn.num_heads
        units[f"blocks.{i}.mlp"] = block.mlp.fc1.out_features
    return units


def _keep_rows(linear: nn.Linear, rows: torch.Tensor) -> None:
    linear.weight = nn.Parameter(linear.weight.detach()[rows].clone())
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.detach()[rows].clone())
    linear.out_features = len(rows)


def _keep_columns(linear: nn.Linear, columns: torch.Tensor) -> None:
    linear.weight = nn.Parameter(linear.weight.detach()[:, columns].clone())
    linear.in_features = len(columns)


def _plain(module: nn.Module, *names: str) -> None:
    for name in names:
        if not isinstance(getattr(module, name, None), (nn.Identity, type(None))):
            raise ValueError(f"head and MLP pruning supports timm's plain attention and MLP; "
                             f"{type(module).__name__}.{name} is {getattr(module, name)}")


@torch.no_grad()
def _keep_heads(attn: nn.Module, n: int) -> None:
    """Keep the ``n`` heads of largest L1 norm (their qkv rows and proj columns together)."""
    h, d = attn.num_heads, attn.head_dim
    _plain(attn, "norm", "gate")
    score = (attn.qkv.weight.abs().reshape(3, h, d, -1).sum((0, 2, 3))
             + attn.proj.weight.abs().reshape(-1, h, d).sum((0, 2)))
    kept = score.argsort(descending=True, stable=True)[:n].sort().values
    dims = (kept[:, None] * d + torch.arange(d)).flatten()
    _keep_rows(attn.qkv, (torch.arange(3)[:, None] * h * d + dims).flatten())
    _keep_columns(attn.proj, dims)
    _sync_heads(attn)


@torch.no_grad()
def _keep_hidden(mlp: nn.Module, n: int) -> None:
    """Keep the ``n`` hidden channels of largest L1 norm (fc1 row and fc2 column together)."""
    _plain(mlp, "norm")
    score = mlp.fc1.weight.abs().sum(1) + mlp.fc2.weight.abs().sum(0)
    kept = score.argsort(descending=True, stable=True)[:n].sort().values
    _keep_rows(mlp.fc1, kept)
    _keep_columns(mlp.fc2, kept)


def _prune_units(model: nn.Module, keep: dict[str, int]) -> None:
    """Keep ``keep[name]`` heads (attention) or hidden channels (MLP) of each named unit."""
    units = _units(model)
    for name, n in keep.items():
        if n < units[name]:
            (_keep_heads if name.endswith(".attn") else _keep_hidden)(model.get_submodule(name), n)


def _sync_heads(attn: nn.Module) -> None:
    attn.num_heads = attn.qkv.out_features // (3 * attn.head_dim)
    if hasattr(attn, "attn_dim"):
        attn.attn_dim = attn.num_heads * attn.head_dim


def _after_pruning(model: nn.Module) -> None:
    """Head counts follow qkv's width (a checkpoint's pruned shapes, replayed)."""
    for block in getattr(model, "blocks", []) if prefix_tokens(model) is not None else []:
        _sync_heads(block.attn)


def _qat_check(model: nn.Module) -> None:
    if prefix_tokens(model) is None:
        raise ValueError("quantization-aware training of timm models covers Vision "
                         "Transformers (their Linear layers) only")


def _qat_surgery(model: nn.Module) -> tuple[list[list[str]], list[str]]:
    """Every block Linear layer (qkv, proj, MLP: nearly all of a ViT's weights and multiply-
    adds) between its own quantize and dequantize; nothing to fuse."""
    from torch.ao.quantization import QuantWrapper

    for name, module in list(model.blocks.named_modules()):
        if isinstance(module, nn.Linear):
            parent, _, child = name.rpartition(".")
            setattr(model.blocks.get_submodule(parent), child, QuantWrapper(module))
    return [], []


@functools.cache
def _qat_class(mixin: type, float_class: type) -> type:
    return type(f"QAT{float_class.__name__}", (mixin, float_class), {})


def _is_timm(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.")


FAMILY = register_family(Family(
    "timm", builders={"timm": timm_model}, label="timm models",
    matches=_is_timm, matched_layer=_matched_layer,
    single_label=lambda m: getattr(m, "spec", {}).get("kwargs", {}).get("single_label", True),
    tokens=prefix_tokens, attention=_attention, exact_attention=_exact_attention,
    refused_explainers=_refused_explainers,
    magnitude_layers=_block_linears,
    units=_units, prune_units=_prune_units, after_pruning=_after_pruning,
    qat=QATSupport(_qat_check, _qat_surgery, _qat_class, local=True)))
