"""The VGG family, as in the paper (BatchNorm, Dropout + Linear head): builders and card.

A config is a list of ints (3x3 conv + BatchNorm + ReLU with that many channels) and "M" (2x2
max-pool). The head flattens the last block channel-major and applies Dropout + Linear, like the
paper's VGG16-BN with its 512*7*7 -> classes head. Registered as ``vgg`` (small, 64 px scenes)
and ``vgg16``; multi-label (one sigmoid per class); matched at the last ReLU; quantizable.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..family import Family, QATSupport, register_family

M = "M"
# The paper's VGG16 layout (13 convs, 5 pools).
VGG16 = [64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M]
# A small layout for 64 px inputs: six convs, four pools; widths scale with `width`.
SMALL = [1, M, 2, M, 4, 4, M, 8, 8, M]


class VGG(nn.Module):
    """VGG-BN network: ``features`` (convs, pools) then ``classifier`` (Dropout + Linear).

    Parameters
    ----------
    cfg : list of channel counts and "M" for max-pool.
    num_classes : outputs of the Linear head.
    input_size : square input size, used to size the flattened head.
    dropout : dropout probability before the Linear head.
    head : "flatten" (the paper's: Linear on the channel-major flattened last block) or "max"
        (global max-pool, then Linear). On 64 px scenes the flatten head sat at chance level for
        the first ~750 steps while the max head was at 0.77 mAP after 500 (docs/benchmarks.md),
        so the small layout uses "max" to fit a CPU budget.
    """

    def __init__(self, cfg: list, num_classes: int, input_size: int = 64, dropout: float = 0.5,
                 head: str = "flatten"):
        super().__init__()
        self.cfg = list(cfg)
        layers: list[nn.Module] = []
        in_ch, side = 3, input_size
        for v in cfg:
            if v == M:
                layers.append(nn.MaxPool2d(2, 2))
                side //= 2
            else:
                layers += [nn.Conv2d(in_ch, int(v), 3, padding=1, bias=False),
                           nn.BatchNorm2d(int(v)), nn.ReLU(inplace=False)]
                in_ch = int(v)
        if side < 1:
            raise ValueError(f"input_size {input_size} is too small for {cfg.count(M)} max-pools")
        self.features = nn.Sequential(*layers)
        if head == "flatten":
            pool, n_in = nn.Identity(), in_ch * side * side
        elif head == "max":
            pool, n_in = nn.AdaptiveMaxPool2d(1), in_ch
        else:
            raise ValueError(f"head must be 'flatten' or 'max', got {head!r}")
        self.classifier = nn.Sequential(pool, nn.Flatten(1), nn.Dropout(dropout),
                                        nn.Linear(n_in, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def last_relu_name(self) -> str:
        """Name of the last conv block's ReLU output (Grad-CAM's usual layer)."""
        idx = max(i for i, m in enumerate(self.features) if isinstance(m, nn.ReLU))
        return f"features.{idx}"

    def last_pool_name(self) -> str:
        """Name of the final max-pool (the paper's matched layer, pool5)."""
        return f"features.{len(self.features) - 1}"


def scaled(cfg: list, divisor: float = 1.0, width: int | None = None) -> list:
    """Channel config with every width divided by ``divisor`` (or multiplied by ``width``)."""
    mult = width if width is not None else 1
    return [v if v == M else max(1, int(round(v * mult / divisor))) for v in cfg]


def vgg_small(num_classes: int, width: int = 32, width_divisor: float = 1.0,
              input_size: int = 64, dropout: float = 0.5, cfg: list | None = None,
              head: str = "max") -> VGG:
    """Small VGG-BN for 64 px inputs: channels ``width * [1, 2, 4, 4, 8, 8] / width_divisor``."""
    return VGG(cfg or scaled(SMALL, width_divisor, width), num_classes, input_size, dropout, head)


def vgg16(num_classes: int, width_divisor: float = 1.0, input_size: int = 227,
          dropout: float = 0.5, cfg: list | None = None, head: str = "flatten") -> VGG:
    """The paper's VGG16-BN, every width divided by ``width_divisor`` (1, 2, 4 or 8)."""
    return VGG(cfg or scaled(VGG16, width_divisor), num_classes, input_size, dropout, head)


class GlobalMaxPool(nn.Module):
    """``AdaptiveMaxPool2d(1)`` as a max-pool over the whole map: quantized tensors support it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, kernel_size=tuple(x.shape[-2:]))


def _qat_check(model: VGG) -> None:
    pool = model.classifier[0]
    if isinstance(pool, nn.AdaptiveMaxPool2d) and pool.output_size not in (1, (1, 1)):
        raise ValueError(f"unsupported head pool {pool}")
    feats = list(model.features)
    for i, m in enumerate(feats):
        if isinstance(m, nn.Conv2d) and not (
                i + 2 < len(feats) and isinstance(feats[i + 1], nn.BatchNorm2d)
                and isinstance(feats[i + 2], nn.ReLU)):
            raise ValueError(f"features.{i}: expected Conv2d-BatchNorm2d-ReLU blocks")


def _qat_surgery(model: VGG) -> tuple[list[list[str]], list[str]]:
    """Fuse every Conv-BN-ReLU block (the old BN and ReLU names stay as ``nn.Identity``, so the
    last ReLU's name still yields the block's fake-quantized output); the head's global
    max-pool becomes an int8-friendly one."""
    model.qat_relu_name = model.last_relu_name()
    if isinstance(model.classifier[0], nn.AdaptiveMaxPool2d):
        model.classifier[0] = GlobalMaxPool()
    blocks = [[f"features.{i}", f"features.{i + 1}", f"features.{i + 2}"]
              for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
    return blocks, []


@functools.cache
def _qat_class(mixin: type, _float_class: type) -> type:
    class QATVGG(mixin, VGG):
        """A fake-quant VGG; ``last_relu_name`` answers with the float model's name (that ReLU
        is now an ``nn.Identity`` after the fused block)."""

        def last_relu_name(self) -> str:
            return self.qat_relu_name

    QATVGG.__qualname__ = "QATVGG"
    return QATVGG


TORCHVISION_VGG_HEAD = "classifier.6.weight"  # the third Linear of torchvision's VGG head


def _is_torchvision_vgg(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` is torchvision's VGG layout (conv biases: ours have none, a bias before
    BatchNorm is redundant; it is folded into the BatchNorm's running mean, the same output in
    eval and train mode) with its ImageNet head (dropped: the model keeps its own head)."""
    if TORCHVISION_VGG_HEAD not in state:
        return False
    modules = dict(model.named_modules())
    return any(k.startswith("features.") and k.endswith(".bias") and
               isinstance(modules.get(k[: -len(".bias")]), nn.Conv2d) for k in state)


def _foreign_state(model: VGG, state: dict[str, torch.Tensor]):
    """torchvision's ``vgg16_bn`` layout (``features.N`` conv / BatchNorm / ReLU / max-pool,
    then three Linear layers for ImageNet) onto ours: ``(state, optional)`` or None for another
    layout. ``state`` in ``model``'s layout (conv biases folded into the
    BatchNorms that follow, ImageNet head dropped) and the keys it may leave missing (the
    head's)."""
    if not _is_torchvision_vgg(model, state):
        return None
    out = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    for i, layer in enumerate(model.features):
        if not isinstance(layer, nn.Conv2d) or f"features.{i}.bias" not in out:
            continue
        bias = out.pop(f"features.{i}.bias")
        bn = model.features[i + 1] if i + 1 < len(model.features) else None
        mean = out.get(f"features.{i + 1}.running_mean")
        if not isinstance(bn, nn.BatchNorm2d) or mean is None or mean.shape != bias.shape:
            raise ValueError(f"features.{i}: a conv bias without a matching BatchNorm after it "
                             "cannot be folded (our VGG convolutions have no bias)")
        out[f"features.{i + 1}.running_mean"] = mean - bias
    optional = {k for k in model.state_dict() if k.startswith("classifier.")}
    return out, optional


def _after_pruning(model: VGG) -> None:
    """``cfg`` mirrors the conv widths: keep it in step after filter pruning."""
    convs = iter(m.out_channels for m in model.features if isinstance(m, nn.Conv2d))
    model.cfg = [v if v == M else next(convs) for v in model.cfg]


FAMILY = register_family(Family(
    "vgg", builders={"vgg": vgg_small, "vgg16": vgg16},
    label="the VGG family (attrpreserve.models.VGG)",
    matches=lambda m: isinstance(m, VGG),
    matched_layer=lambda m: m.last_relu_name(),
    qat=QATSupport(_qat_check, _qat_surgery, _qat_class),
    foreign_state=_foreign_state, after_pruning=_after_pruning))
