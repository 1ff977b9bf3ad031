"""One card per model family: everything the toolkit needs to know about an architecture.

A family lives in one file of ``models/families/`` that defines its builders and declares a
:class:`Family` card (in the spirit of timm's ``PretrainedCfg`` and zennit's canonizers), then
calls :func:`register_family` once: the builders join ``models.registry.MODELS`` and the card
answers every family question asked elsewhere (the matched layer, the head type, students, LRP
canonizers, QAT surgery, attributes to keep in step after filter pruning). Nobody else checks
a model's class or name: they call :func:`family_of` and read the card.

A model built outside the registry (a user's own classifier) has no card unless a family's
``matches`` recognises it; then the defaults apply (the probed layer, a multi-label head).
Attributes set on an instance (``model.matched_layer``, ``model.single_label``) override the
card, so a user can describe their own model in two lines.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Mapping

from torch import nn

from ..registry import Registry

__all__ = ["FAMILIES", "Family", "QATSupport", "exact_attention", "family_of", "has_attention",
           "is_single_label", "label", "register_family"]


@dataclass(frozen=True)
class QATSupport:
    """What eager-mode quantization-aware training needs (``compress.quantize``).

    ``check(model)`` raises ``ValueError`` for variants the surgery cannot handle;
    ``surgery(model)`` edits the float model in place into a fusable form computing the same
    function and returns the groups to fuse and the modules whose output is ReLU6's (quantized
    on the fixed range [0, 6]); ``qat_class(mixin, float class)`` is the class the prepared
    model takes, built on the quantizer's mixin; ``backend``: the default quantized engine;
    ``narrow_weights``: symmetric weights without the most negative level; ``local``: only the
    layers the surgery wraps in ``torch.ao.quantization.QuantWrapper`` are quantized, each
    between its own quantize / dequantize, the rest stays float (a ViT's Linear layers: its
    LayerNorm, softmax and GELU have no int8 kernels worth having)."""

    check: Callable[[nn.Module], None]
    surgery: Callable[[nn.Module], tuple[list[list[str]], list[str]]]
    qat_class: Callable[[type, type], type]
    backend: str = "x86"
    narrow_weights: bool = False
    local: bool = False


def _never(_model: nn.Module) -> bool:
    return False


@dataclass(frozen=True)
class Family:
    """A model family's card.

    ``builders``: registry name -> builder (``num_classes`` and keyword arguments -> a model
    taking [0, 1] images, its weights' mean / std inside); ``label``: the family for users, in
    messages (default ``name``); ``matches(model)``: recognises the family's models built
    elsewhere (by class); ``matched_layer(model)``: the layer Grad-CAM and matching use by
    default (the last feature block's output; None, or a function answering None: probed,
    ``models.layers.probe_layer``); ``single_label(model)``: a softmax head (True) or one
    sigmoid per class; ``students``: student name
    -> (registry name, fixed keyword arguments) for distillation across families;
    ``canonizers(model)``: zennit canonizers for LRP (None: BatchNorm merged into the preceding
    layer); ``qat``: eager-mode QAT support (None: not quantizable); ``after_pruning(model)``:
    brings attributes that mirror channel counts in step after filter pruning;
    ``foreign_state(model, state)``: another library's state dict layout mapped onto the
    family's (``(state, keys it may leave missing)``, None for a layout it does not know);
    ``tokens(model)``: for token models (Vision Transformers), the class / distillation tokens
    before the square grid of patch tokens that layer outputs (batch x tokens x channels) hold,
    so ``models.layers.LayerTap`` reads them as maps; None for convolutional models;
    ``attention(model)``: the modules whose outputs are the attention probabilities (batch x
    heads x tokens x tokens) of each block in order, for attention rollout (empty: none);
    ``exact_attention(model)``: a context in which attention runs unfused (its probabilities
    pass through ``attention``'s modules, and it has a second derivative: matching
    differentiates the student's map), fused elsewhere; ``refused_explainers(model)``:
    explainer name -> why its maps mean nothing for this model (a ViT's LRP rules);
    ``magnitude_layers(model)``: layers magnitude pruning covers besides the convolutions (a
    ViT's block Linear layers; never the classifier); ``units(model)`` and
    ``prune_units(model, keep)``: the family's own structured pruning instead of conv filters
    (a ViT's heads per attention and hidden channels per MLP, by name; ``keep`` the count each
    keeps, the lowest-L1 ones removed)."""

    name: str
    builders: Mapping[str, Callable[..., nn.Module]]
    label: str = ""
    matches: Callable[[nn.Module], bool] = _never
    matched_layer: Callable[[nn.Module], str | None] | None = None
    single_label: Callable[[nn.Module], bool] = _never
    students: Mapping[str, tuple[str, dict]] = field(default_factory=dict)
    canonizers: Callable[[nn.Module], list] | None = None
    qat: QATSupport | None = None
    after_pruning: Callable[[nn.Module], None] | None = None
    foreign_state: Callable[[nn.Module, dict], tuple[dict, set] | None] | None = None
    tokens: Callable[[nn.Module], int | None] | None = None
    attention: Callable[[nn.Module], list[nn.Module]] | None = None
    magnitude_layers: Callable[[nn.Module], list[nn.Module]] | None = None
    exact_attention: Callable[[nn.Module], ContextManager] | None = None
    refused_explainers: Callable[[nn.Module], Mapping[str, str]] | None = None
    units: Callable[[nn.Module], dict[str, int]] | None = None
    prune_units: Callable[[nn.Module, dict[str, int]], None] | None = None


FAMILIES: Registry[Family] = Registry("model family")


def label(family: Family) -> str:
    """How messages name ``family``."""
    return family.label or family.name


def register_family(family: Family) -> Family:
    """Register ``family``'s card and add its builders to ``models.registry.MODELS``."""
    from .registry import MODELS

    for name, builder in family.builders.items():
        MODELS.register(name, builder)
    return FAMILIES.register(family.name, family)


def unregister_family(name: str) -> None:
    """Remove a family and its builders (tests and plugins that register temporarily)."""
    from .registry import MODELS

    for builder in FAMILIES[name].builders:
        MODELS.unregister(builder)
    FAMILIES.unregister(name)


def family_of(model: nn.Module) -> Family | None:
    """The card of ``model``'s family: by the registry name its spec records, else the first
    family whose ``matches`` recognises it, else None (a model of no known family)."""
    spec = getattr(model, "spec", None)
    name = spec.get("name") if isinstance(spec, dict) else None
    for family in FAMILIES.values():
        if name in family.builders:
            return family
    return next((f for f in FAMILIES.values() if f.matches(model)), None)


def is_single_label(model: nn.Module) -> bool:
    """Whether ``model`` is a single-label classifier (softmax over its classes): its own
    ``single_label`` attribute when set, else its family's card, else False (multi-label)."""
    own = getattr(model, "single_label", None)
    if own is not None:
        return bool(own)
    family = family_of(model)
    return bool(family is not None and family.single_label(model))


def has_attention(model: nn.Module) -> bool:
    """Whether ``model``'s family card names attention maps for it (a Vision Transformer:
    attention rollout applies)."""
    family = family_of(model)
    return bool(family and family.attention and family.attention(model))


def exact_attention(model: nn.Module) -> ContextManager:
    """The family card's unfused-attention context for ``model`` (rollout reads attention
    probabilities; matching takes a second derivative), a no-op for models without one."""
    family = family_of(model)
    if family is None or family.exact_attention is None:
        return nullcontext()
    return family.exact_attention(model)
