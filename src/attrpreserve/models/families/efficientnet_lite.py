"""The EfficientNet-Lite family (Lite0/1/2: ReLU6, no squeeze-excitation): builders and card.

The architecture of the ``efficientnet-lite-pytorch`` package (the ``pretrained`` extra) with a
named head activation; ImageNet weights come from ``pretrained:efficientnet-liteN``
(``models.pretrained``). Single-label (softmax), matched at ``_head_act`` (the head's
post-activation map), quantizable on oneDNN (:func:`qat_surgery`), students of any width.
"""

from __future__ import annotations

import functools
import sys
from collections import OrderedDict

from torch import nn
from torch.ao.nn.quantized import FloatFunctional

from ..family import Family, QATSupport, register_family
from ..normalize import with_input_normalization

LITE0 = "efficientnet-lite0"
# TF EfficientNet-Lite preprocessing: (x - 127) / 128 on 0..255 pixels, i.e. [-1, 1].
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3
# Variants with shipped weights: spec name -> (registry name, native input size, dropout before
# the classifier; the sizes and rates of the TF reference builder).
LITE = {"efficientnet-lite0": ("efficientnet_lite0", 224, 0.2),
        "efficientnet-lite1": ("efficientnet_lite1", 240, 0.2),
        "efficientnet-lite2": ("efficientnet_lite2", 260, 0.3)}


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
    return with_input_normalization(cls(blocks, params), LITE_MEAN, LITE_STD)


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


def _is_lite(model: nn.Module) -> bool:
    # A Lite model exists only once its architecture package is imported: no import otherwise.
    return "efficientnet_lite_pytorch" in sys.modules and isinstance(model, lite_class())


def _qat_check(model: nn.Module) -> None:
    params = model._global_params
    if params.relu_fn != "relu6" or params.local_pooling or any(b.has_se for b in model._blocks):
        raise ValueError("quantization-aware training supports EfficientNet-Lite (ReLU6, no "
                         "squeeze-excitation, global average pooling) only")


@functools.cache
def _qat_class(mixin: type, _float_class: type) -> type:
    class QATEfficientNetLite(mixin, lite_class()):
        """A fake-quant EfficientNet-Lite; its matched layer ``_head_act`` keeps its name."""

    QATEfficientNetLite.__qualname__ = "QATEfficientNetLite"
    return QATEfficientNetLite


@functools.cache
def _qat_block_class() -> type:
    """The fake-quant Lite's block class (the package is imported lazily)."""
    from efficientnet_lite_pytorch.model import MBConvBlock

    class QATMBConvBlock(MBConvBlock):
        """The package's block with one ReLU6 module per use, the residual add through
        ``FloatFunctional`` (quantized with its own range), and no drop-connect.

        Drop-connect (stochastic depth) is disabled: in training it scales the residual branch
        by ``1 / keep_prob`` per sample, so the add's range observer would calibrate on values
        the deployed model never sees; QAT here is a short fine-tune from trained weights.
        """

        def forward(self, inputs, drop_connect_rate=None):
            x = inputs
            if self._block_args.expand_ratio != 1:
                x = self._act0(self._bn0(self._expand_conv(x)))
            x = self._act1(self._bn1(self._depthwise_conv(x)))
            x = self._bn2(self._project_conv(x))
            return self._add.add(x, inputs) if hasattr(self, "_add") else x

    return QATMBConvBlock


def _plain_conv(conv: nn.Conv2d) -> nn.Module:
    """A ``Conv2dStaticSamePadding`` as plain ``nn.Conv2d`` (fusion matches exact types) with the
    same parameters: TF "SAME" padding goes into the conv where symmetric (stride 1), else into
    an ``nn.ZeroPad2d`` before it (``Sequential(pad, conv)``; zero stays exact when quantized)."""
    plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None)
    plain.weight, plain.bias = conv.weight, conv.bias
    pad = conv.static_padding
    if not isinstance(pad, nn.ZeroPad2d):  # the package's Identity: no padding (1x1 convs)
        return plain
    left, right, top, bottom = pad.padding
    if left == right and top == bottom:
        plain.padding = (top, left)
        return plain
    return nn.Sequential(OrderedDict(pad=nn.ZeroPad2d(pad.padding), conv=plain))


def qat_surgery(model: nn.Module) -> tuple[list[list[str]], list[str]]:
    """EfficientNet-Lite in a fusable form, computing the same function (float).

    Convs become plain ``nn.Conv2d`` (:func:`_plain_conv`); each block's shared ``_swish``
    becomes ``_act0`` (after the expansion) and ``_act1`` (after the depthwise conv), and its
    residual add a ``FloatFunctional`` ``_add`` (:func:`_qat_block_class`); the stem keeps
    ``_swish``, the head ``_head_act``.  Conv-BN pairs are fused, and ReLU6 stays a module of
    its own after them: torch.ao fuses Conv-BN-ReLU, not ReLU6, and its int8 ``ReLU6`` drops
    the range its fake quant learnt (it keeps the conv's output scale), so a learnt range on
    both would make int8 differ from fake quant.  Instead a fused conv followed by ReLU6 and the
    ReLU6 itself are quantized on the fixed range [0, 6] (as TFLite quantizes ReLU6): the conv's
    output grid then clamps exactly at 0 and 6, in fake quant and int8 alike, and the ReLU6 is
    exact on it; with fake quant disabled the float function is unchanged.
    """
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

    for name, module in list(model.named_modules()):
        if isinstance(module, Conv2dStaticSamePadding):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, _plain_conv(module))
    groups, relu6 = [], []

    def fuse(conv: str, bn: str, act: str | None = None) -> None:
        if isinstance(model.get_submodule(conv), nn.Sequential):
            conv += ".conv"
        groups.append([conv, bn])
        if act is not None:
            relu6.extend([conv, act])

    fuse("_conv_stem", "_bn0", "_swish")
    block_class = _qat_block_class()
    for i, block in enumerate(model._blocks):
        p, args = f"_blocks.{i}", block._block_args
        if args.expand_ratio != 1:
            block._act0 = nn.ReLU6()
            fuse(f"{p}._expand_conv", f"{p}._bn0", f"{p}._act0")
        block._act1 = block._swish
        del block._swish
        fuse(f"{p}._depthwise_conv", f"{p}._bn1", f"{p}._act1")
        fuse(f"{p}._project_conv", f"{p}._bn2")
        if block.id_skip and args.stride == 1 and args.input_filters == args.output_filters:
            block._add = FloatFunctional()
        block.__class__ = block_class
    fuse("_conv_head", "_bn1", "_head_act")
    return groups, relu6


def _refused_explainers(model: nn.Module) -> dict[str, str]:
    """zennit's rules do not conserve relevance through the fake-quant Lite (a 4-bit Lite0's
    LRP maps summed to 68,881 on two photos where its float control's summed to 2.5; EBP and
    LRP-AlphaBeta alike; not yet diagnosed): refused rather than drawn."""
    if getattr(model, "qat_backend", None) is None:
        return {}
    why = ("zennit's rules do not conserve relevance through the fake-quant EfficientNet-Lite "
           "(maps 10^3-10^4 x the float model's); explain its float source, or use gradcam, "
           "ig, occlusion or rise")
    return dict.fromkeys(("lrp", "lrp_a1b0", "ebp"), why)


# Lite0 runs on oneDNN: fbgemm's depthwise int8 kernels (behind "x86") add u8 x s8 products
# in pairs with 16-bit saturation, so full-range activations (ReLU6 at 6 is level 255) times
# large folded depthwise weights saturate: measured up to 113 activation steps off the fake
# quant at single pixels, and top-1 flips.  oneDNN (VNNI) does not saturate and ran the int8
# Lite0 2.4x faster than "x86" here.  Narrow weights: see ``compress.quantize._qconfig``.
FAMILY = register_family(Family(
    "efficientnet_lite", label="EfficientNet-Lite (pretrained:efficientnet-lite0/1/2)",
    builders={"efficientnet_lite0": efficientnet_lite0, "efficientnet_lite1": efficientnet_lite1,
              "efficientnet_lite2": efficientnet_lite2},
    matches=_is_lite, matched_layer=lambda m: "_head_act", single_label=lambda m: True,
    students={name: (registry, {}) for name, (registry, _, _) in LITE.items()},
    qat=QATSupport(_qat_check, qat_surgery, _qat_class, backend="onednn", narrow_weights=True),
    refused_explainers=_refused_explainers))
