"""Attribution-matching losses: WCAM (the paper's method), activation attention transfer (AT) and
LRP matching (AlphaBeta(1, 0) relevance at the matched layer, differentiable).

Each loss compares one map per sample (or per (image, class) pair) of a frozen teacher with the
student's, after L2-normalising each flattened map: mean over batch and pixels of
``(M_T/||M_T|| - M_S/||M_S||)^2``, i.e. ``(2 - 2 cos) / (H W)``. The L2 distance of normalised
maps and their cosine are therefore one loss (lambda x H W apart), not two variants. Several
matched layers (``"a,b"``) average their losses. On a Vision Transformer WCAM may add one more
such distance (``rollout``): the teacher's attention or gradient-weighted rollout against the
student's, differentiable through the student's attention probabilities (and their gradients).
"""

from __future__ import annotations

from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..attribution.gradcam import frozen, pair_gradcam, weighted_map
from ..attribution.gradients import INPUT_MAP_FORMULAS, pair_input_grads
from ..attribution.lrp import a1b0_layer_relevance
from ..attribution.rollout import (grad_rollout, grad_rollout_maps, recorded_attention, rollout,
                                   rollout_maps)
from ..attribution.chain import ChainRecorder
from ..models.family import exact_attention
from ..models.layers import LayerTap
from ..options import option, require
from ..registry import Registry

EPS = 1e-12
TARGETS = ("top1", "labels")  # the teacher's top-1 class per image (the paper's) or every label
RESOLUTIONS = ("layer", "input")
ROLLOUTS = ("none", "attention", "gradient")
FORMS = ("cosine", "rank")
INPUT_MAPS = ("none",) + tuple(INPUT_MAP_FORMULAS)
SOFT_RANK_TEMPERATURE = 0.1  # in standard deviations of a map's values
TARGET_HELP = ("matched classes: the teacher's top-1 (the paper's) or every positive label (WCAM; "
               "LRP matching takes top1 only)")


@dataclass(frozen=True)
class NoOptions:
    """A matcher without settings (AT; plain compression)."""


@dataclass(frozen=True)
class WCAMOptions:
    """WCAM's settings; their ``attrpreserve compress`` flags are generated from the fields."""

    drop: float = option(0.3, "WCAM: fraction of the teacher's channels dropped per step")
    target: str = option("top1", TARGET_HELP, choices=TARGETS)
    resolution: str = option("layer", "WCAM: compare the maps at the matched layer's size "
                             "(layer) or upsampled to the images' (input)", choices=RESOLUTIONS)
    rollout: str = option("none", "WCAM on a Vision Transformer: also match the attention "
                          "rollout (attention) or the gradient-weighted rollout (gradient) of "
                          "every block, beside the matched layer's Grad-CAM", choices=ROLLOUTS)
    form: str = option("cosine", "WCAM: compare the maps' values (cosine: the paper's L2 of "
                       "normalised maps) or their soft ranks (rank: a differentiable Spearman, "
                       "so the weak cells count as much as the peak)", choices=FORMS)
    input_map: str = option("none", "WCAM: also match an input-level map of the teacher's "
                            "top-1 class (gradient, input_x_gradient: the explainers of those "
                            "names), differentiable through the student's input gradient; it "
                            "weighs like one matched layer", choices=INPUT_MAPS)

    def __post_init__(self):
        require(0 <= self.drop < 1, f"drop must be in [0, 1), got {self.drop}")
        require(self.rollout in ROLLOUTS,
                f"rollout must be one of {', '.join(ROLLOUTS)}, got {self.rollout!r}")
        require(self.rollout == "none" or self.target == "top1",
                "rollout matching explains the teacher's top-1 class: target='top1'")
        require(self.form in FORMS, f"form must be 'cosine' or 'rank', got {self.form!r}")
        require(self.form == "cosine" or self.resolution == "layer",
                "form='rank' compares every pair of cells: resolution='layer' only")
        require(self.input_map in INPUT_MAPS,
                f"input_map must be one of {', '.join(INPUT_MAPS)}, got {self.input_map!r}")
        require(self.input_map == "none" or (self.target == "top1" and self.form == "cosine"),
                "input_map matching explains the teacher's top-1 class with the cosine form: "
                "target='top1', form='cosine'")
        require(self.target in TARGETS, f"target must be 'top1' or 'labels', got {self.target!r}")
        require(self.resolution in RESOLUTIONS,
                f"resolution must be 'layer' or 'input', got {self.resolution!r}")


@dataclass(frozen=True)
class LRPOptions:
    """LRP matching's settings: its relevance starts at the teacher's top-1 class only."""

    target: str = option("top1", TARGET_HELP, choices=TARGETS)

    def __post_init__(self):
        require(self.target == "top1",
                f"LRP matching supports target='top1' only, got {self.target!r}")


def normalized_distance(teacher_maps: torch.Tensor, student_maps: torch.Tensor,
                        size: tuple[int, int] | None = None) -> torch.Tensor:
    """Mean squared difference of per-map L2-normalised maps; finite for all-zero maps. Both
    maps are resized bilinearly to ``size`` first when given, else the student's to the
    teacher's."""
    size = tuple(size) if size is not None else tuple(teacher_maps.shape[-2:])
    t, s = (_resized(m, size).flatten(1) for m in (teacher_maps, student_maps))
    # sqrt(sum + eps), not norm().clamp: the norm's gradient at an all-zero map is 0/0.
    t = t * torch.rsqrt((t * t).sum(1, keepdim=True) + EPS)
    s = s * torch.rsqrt((s * s).sum(1, keepdim=True) + EPS)
    return ((t - s) ** 2).mean()


def _resized(maps: torch.Tensor, size: tuple) -> torch.Tensor:
    if tuple(maps.shape[-2:]) == size:
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def soft_ranks(maps: torch.Tensor, temperature: float = SOFT_RANK_TEMPERATURE) -> torch.Tensor:
    """Per flattened map, each cell's rank made differentiable: ``sum_j sigmoid((z_i - z_j) /
    temperature)`` of the map's standardised values ``z`` (ties share rank, as in Spearman's
    average ranks). Written here because the maintained soft-sort packages (torchsort) build a
    C++ extension; for maps of a few hundred cells the pairwise form is exact enough and cheap."""
    x = maps.flatten(1)
    centred = x - x.mean(1, keepdim=True)
    z = centred * torch.rsqrt(centred.pow(2).mean(1, keepdim=True) + EPS)
    return torch.sigmoid((z[:, :, None] - z[:, None, :]) / temperature).sum(2)


def rank_distance(teacher_maps: torch.Tensor, student_maps: torch.Tensor,
                  size: tuple[int, int] | None = None) -> torch.Tensor:
    """:func:`normalized_distance` of the maps' centred soft ranks: ``(2 - 2 rho) / (H W)``
    with ``rho`` a differentiable Spearman correlation, on the same scale as the cosine form."""
    size = tuple(size) if size is not None else tuple(teacher_maps.shape[-2:])
    t, s = (soft_ranks(_resized(m, size)) for m in (teacher_maps, student_maps))
    t, s = (r - r.mean(1, keepdim=True) for r in (t, s))
    return normalized_distance(t[:, :, None], s[:, :, None])


DISTANCES = {"cosine": normalized_distance, "rank": rank_distance}


def drop_mask(channels: int, fraction: float, generator: torch.Generator | None = None,
              device=None) -> torch.Tensor:
    """1/0 mask over ``channels`` with exactly ``round(fraction * channels)`` zeros, at random."""
    keep = torch.ones(channels, device=device)
    n_drop = int(round(fraction * channels))
    if n_drop:
        keep[torch.randperm(channels, generator=generator)[:n_drop].to(keep.device)] = 0
    return keep


class MatchingLoss(nn.Module):
    """Base: ``forward(teacher_tap, teacher_out, student_tap, student_out, classes)``.

    ``needs_pairs`` says whether the taps must carry per-(image, class) rows; ``target`` picks the
    classes: ``"top1"`` (the teacher's top logit per image, as in the paper's code) or
    ``"labels"`` (every ground-truth positive label). ``resolution``: ``"layer"`` compares the
    maps at the matched layer's size, ``"input"`` upsampled to the images' (the matcher then
    passes ``size=``).
    """

    needs_pairs = False
    records_chain = False  # True: forward also gets ``chains=(teacher calls, student calls)``
    target = "top1"
    resolution = "layer"
    Options = NoOptions  # its settings (``attrpreserve compress`` flags)
    random = False  # True: the constructor takes the run's ``generator`` (WCAM's channel drop)
    records_attention = False  # True: also matches a ViT's rollout (``rollout_distance``)
    records_input = False  # True: also matches an input-level map (``input_distance``)


class AttentionTransfer(MatchingLoss):
    """Activation-based attention transfer (Zagoruyko & Komodakis 2017): ``M = mean_k A_k^2``."""

    def forward(self, t_tap: LayerTap, t_out, s_tap: LayerTap, s_out, classes=None, size=None):
        t_map = t_tap.activation.detach().pow(2).mean(1)
        s_map = s_tap.activation.pow(2).mean(1)
        return normalized_distance(t_map, s_map, size)


class WCAM(MatchingLoss):
    """Weighted collapsed attribution matching (Park et al., NeurIPS 2020).

    The teacher map is a constant; the student map stays differentiable through its channel
    weights (``create_graph=True``), and only the layers after the matched activation are
    differentiated twice. ``drop`` zeroes that fraction of the teacher's channels (one random set
    per step, the student is never dropped) before the teacher map is formed.
    """

    needs_pairs = True
    random = True
    Options = WCAMOptions

    def __init__(self, drop: float = WCAMOptions.drop, target: str = WCAMOptions.target,
                 generator=None, resolution: str = WCAMOptions.resolution,
                 rollout: str = WCAMOptions.rollout, form: str = WCAMOptions.form,
                 input_map: str = WCAMOptions.input_map):
        super().__init__()
        WCAMOptions(drop, target, resolution, rollout, form, input_map)  # checked
        self.drop, self.target, self.generator = drop, target, generator
        self.resolution, self.rollout, self.form = resolution, rollout, form
        self.input_map = input_map
        self.distance = DISTANCES[form]
        self.records_attention = rollout != "none"
        self.records_input = input_map != "none"

    def teacher_maps(self, tap: LayerTap, out: torch.Tensor, classes: torch.Tensor):
        rows = tap.pair_rows(out.device)
        # retain_graph: with several matched layers one teacher graph serves every tap
        (grads,) = torch.autograd.grad(out[rows, classes].sum(), tap.pair_activation,
                                       retain_graph=True)
        act = tap.pair_activation.detach()
        if self.training and self.drop > 0:
            keep = drop_mask(act.shape[1], self.drop, self.generator, act.device)
            act = act * keep[None, :, None, None]
        return weighted_map(act, grads)

    def forward(self, t_tap, t_out, s_tap, s_out, classes, size=None):
        if len(classes) == 0:
            return s_out.sum() * 0.0
        t_map = self.teacher_maps(t_tap, t_out, classes)
        s_map = pair_gradcam(s_tap, s_out, classes, create_graph=True)
        return self.distance(t_map, s_map, size)

    def rollout_distance(self, teacher: nn.Module, images: torch.Tensor, s_attn: list,
                         prefix: int, s_out: torch.Tensor, classes: torch.Tensor
                         ) -> torch.Tensor:
        """The rollout term: the teacher's (attention or gradient-weighted) rollout for its
        top-1 class against the student's, computed from the attention probabilities its
        forward pass recorded (``s_attn``), differentiable through them and, for the gradient
        kind, through their gradients (``create_graph``)."""
        rows = torch.arange(len(images), device=images.device)
        explain = grad_rollout if self.rollout == "gradient" else rollout
        t_map, _ = explain(teacher, images, rows, classes)
        if self.rollout == "gradient":
            grads = torch.autograd.grad(s_out[rows, classes].sum(), s_attn, create_graph=True)
            s_map = grad_rollout_maps(s_attn, grads, prefix)
        else:
            s_map = rollout_maps(s_attn, prefix)
        return self.distance(t_map.detach(), s_map)

    def input_distance(self, teacher: nn.Module, images: torch.Tensor, x: torch.Tensor,
                       s_out: torch.Tensor, classes: torch.Tensor, cells: int) -> torch.Tensor:
        """The input-map term: the teacher's ``input_map`` for its top-1 class against the
        student's, whose forward ran on ``x`` (``images`` requiring grad), differentiable
        through the student's input gradient (``create_graph``). ``normalized_distance`` averages
        over the map's cells, so the term is scaled by pixels / ``cells`` (the matched layer's)
        to weigh like one matched layer's (2 - 2 cos)."""
        rows = torch.arange(len(images), device=images.device)
        formula = INPUT_MAP_FORMULAS[self.input_map]
        t_x, t_grads, _ = pair_input_grads(teacher, images, rows, classes)
        (s_grads,) = torch.autograd.grad(s_out[rows, classes].sum(), x, create_graph=True)
        t_map, s_map = formula(t_x, t_grads), formula(x, s_grads)
        return normalized_distance(t_map, s_map) * t_map[0].numel() / cells


class LRPMatching(MatchingLoss):
    """LRP matching: the teacher's and the student's LRP-AlphaBeta(1, 0) relevance at the matched
    layer (summed over channels, one map per image for the teacher's top-1 class) are compared
    like WCAM's maps.

    The paper's LRP as a matching loss (beyond the paper, which matches Grad-CAM only). Its
    rules are written by hand in attribution.lrp so the student's map is differentiable w.r.t. its
    weights; relevance starts from a one-hot at the class, so a negative logit does not flip the
    map. The layers after the matched one must be a chain RAP supports with eval-mode BatchNorm
    (the VGG family at its default layer: pools and the classifier only). Costs one more
    backward-like pass through those layers, differentiated twice.
    """

    records_chain = True
    Options = LRPOptions

    def __init__(self, target: str = "top1", epsilon: float = 1e-6):
        super().__init__()
        LRPOptions(target)  # checked
        self.epsilon = epsilon

    def forward(self, t_tap, t_out, s_tap, s_out, classes, chains, size=None):
        t_calls, s_calls = chains
        rows = torch.arange(len(classes), device=classes.device)
        t_map = a1b0_layer_relevance(t_calls, t_tap.module, rows, classes, self.epsilon).detach()
        s_map = a1b0_layer_relevance(s_calls, s_tap.module, rows, classes, self.epsilon)
        return normalized_distance(t_map, s_map, size)


def _recording(model: nn.Module, on: bool):
    return ChainRecorder(model) if on else nullcontext()


def _attention_recorded(model: nn.Module, on: bool):
    """``rollout.recorded_attention`` when ``on``; else an empty recording."""
    return recorded_attention(model) if on else nullcontext(([], 0))


def layer_names(layer: str | list | tuple | None) -> tuple:
    """``"a,b"`` (or a sequence) as a tuple of layer names; ``(None,)`` for the default layer."""
    if layer is None:
        return (None,)
    names = tuple(n.strip() for n in (layer.split(",") if isinstance(layer, str) else layer))
    if not names or not all(names):
        raise ValueError(f"layer {layer!r}: give layer names separated by commas")
    return names


def matched_layers(loss: MatchingLoss | None, teacher_layer, student_layer) -> tuple[tuple, tuple]:
    """The (teacher, student) layer names a matcher taps, paired in order; a ``ValueError``
    for pairings it cannot run (checked once a run is configured, before any training)."""
    teacher_layers = layer_names(teacher_layer)
    student_layers = (layer_names(student_layer) if student_layer is not None
                      else (None,) * len(teacher_layers))
    if len(student_layers) != len(teacher_layers):
        raise ValueError(f"{len(teacher_layers)} teacher layers but {len(student_layers)} "
                         "student layers")
    if len(teacher_layers) > 1 and loss is not None and (
            loss.records_chain or (loss.needs_pairs and loss.target == "labels")):
        raise ValueError("several matched layers need a top1-target Grad-CAM or AT loss")
    return teacher_layers, student_layers


class AttributionMatcher:
    """Runs a frozen teacher and a student on a batch and returns the matching loss.

    The drop-in piece for an existing training loop::

        matcher = AttributionMatcher(teacher, student, WCAM(drop=0.3))
        s_logits, t_logits, match = matcher(images, labels)
        loss = task_or_kd_loss(s_logits, t_logits, labels) + lam * match

    The teacher is put in eval mode on every call (its BatchNorm statistics never drift) and its
    parameters get no gradient. ``loss=None`` gives plain outputs and a zero matching term.
    ``teacher_layer``/``student_layer`` may name several layers (``"a,b"``, paired in order):
    one forward pass taps them all and the loss is the mean of the layers' losses.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, loss: MatchingLoss | None,
                 teacher_layer: str | None = None, student_layer: str | None = None):
        self.teacher, self.student, self.loss = teacher, student, loss
        self.teacher_layers, self.student_layers = matched_layers(loss, teacher_layer,
                                                                  student_layer)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor | None = None):
        self.teacher.eval()
        if self.loss is None:
            with torch.no_grad():
                t_out = self.teacher(images)
            s_out = self.student(images)
            return s_out, t_out, s_out.new_zeros(())
        index = classes = None
        if self.loss.needs_pairs and self.loss.target == "labels":
            if labels is None:
                raise ValueError("target='labels' needs the batch's labels")
            index, classes = labels.nonzero(as_tuple=True)
        grad_mode = torch.enable_grad() if self.loss.needs_pairs else torch.no_grad()
        chain = self.loss.records_chain
        with grad_mode, frozen(self.teacher), ExitStack() as stack:
            tts = [stack.enter_context(LayerTap(self.teacher, layer, index=index,
                                                detach=self.loss.needs_pairs))
                   for layer in self.teacher_layers]
            t_rec = stack.enter_context(_recording(self.teacher, chain))
            t_out = self.teacher(images)
        batch = len(images)
        if classes is None:
            classes = t_out[:batch].detach().argmax(1)
        with ExitStack() as stack:
            if self.loss.needs_pairs:  # the loss differentiates the student's map again
                stack.enter_context(exact_attention(self.student))
            sts = [stack.enter_context(LayerTap(self.student, layer, index=index))
                   for layer in self.student_layers]
            s_rec = stack.enter_context(_recording(self.student, chain))
            s_attn, prefix = stack.enter_context(
                _attention_recorded(self.student, self.loss.records_attention))
            x = images.detach().requires_grad_(True) if self.loss.records_input else images
            s_out = self.student(x)
        extra = {"chains": (t_rec.calls, s_rec.calls)} if chain else {}
        if self.loss.resolution == "input":
            extra["size"] = images.shape[-2:]
        match = sum(self.loss(tt, t_out, st, s_out, classes, **extra)
                    for tt, st in zip(tts, sts)) / len(tts)
        if self.loss.records_attention:
            match = match + self.loss.rollout_distance(self.teacher, images, s_attn, prefix,
                                                       s_out[:batch], classes)
        if self.loss.records_input:
            cells = tts[0].pair_activation.shape[-2:].numel()
            match = match + self.loss.input_distance(self.teacher, images, x, s_out[:batch],
                                                     classes, cells)
        return s_out[:batch], t_out[:batch].detach(), match


# Matchers by name; each class's ``Options`` declares the settings its constructor takes from
# the CLI / configs (``create_matcher`` passes only those); "none" is plain compression.
MATCHERS: Registry = Registry("matching")
MATCHERS.register("none", None)
MATCHERS.register("at", AttentionTransfer)
MATCHERS.register("wcam", WCAM)
MATCHERS.register("lrp", LRPMatching)


def matcher_options(name: str, **values):
    """The ``Options`` of matcher ``name`` from ``values`` (those it declares; the others are
    ignored), checked: ``ValueError`` for a value it refuses."""
    cls = MATCHERS[name]
    options = cls.Options if cls is not None else NoOptions
    return options(**{f.name: values[f.name] for f in fields(options) if f.name in values})


def create_matcher(name: str, generator: torch.Generator | None = None, **values
                   ) -> MatchingLoss | None:
    """Build a registered matching loss (``None`` for ``"none"``) with the options it declares
    from ``values``; ``generator`` drives WCAM's random channel drop."""
    cls = MATCHERS[name]
    if cls is None:
        return None
    options = vars(matcher_options(name, **values))
    return cls(**options, generator=generator) if cls.random else cls(**options)
