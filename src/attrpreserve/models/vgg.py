"""VGG family built from a channel config, as used in the paper (BatchNorm, Dropout + Linear head).

A config is a list of ints (3x3 conv + BatchNorm + ReLU with that many channels) and "M" (2x2
max-pool). The head flattens the last block channel-major and applies Dropout + Linear, like the
paper's VGG16-BN with its 512*7*7 -> classes head.
"""

from __future__ import annotations

import torch
from torch import nn

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
