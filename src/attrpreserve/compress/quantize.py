"""Quantization surgery: fake-quant (QAT) preparation, calibration, freezing, int8 conversion
and export; the training around it is the ``quantization`` recipe (``recipes.quantization``).

Backend: PyTorch's eager-mode ``torch.ao.quantization`` (x86 engine; oneDNN for
EfficientNet-Lite: each family card's ``qat``, ``models.family.QATSupport``).  It is deprecated in torch 2.14 but is the one path that
(a) keeps the model an ``nn.Module`` tree whose layer names survive, so ``LayerTap``, Grad-CAM
and WCAM work on the fake-quant model unchanged, and (b) converts to real int8 CPU kernels
(``quantized::conv2d``) without ``torch.compile``.  Its successor, torchao's PT2E flow
(``prepare_qat_pt2e`` / ``convert_pt2e``), traces the model into a flat graph (the ReLU
modules disappear, so the matched layer cannot be hooked by name), and without
``torch.compile`` its converted model runs quantize/dequantize + float convolutions: on the small
VGG it was slower than the float model.  Everything backend-specific stays in this module behind
:func:`prepare_qat`, :func:`convert_int8` and :func:`export_int8`; only there are torch.ao's
deprecation warnings silenced (:func:`_quiet_ao`).  To swap to torchao, reimplement those three.

The quantization scheme: weights per-channel symmetric (``bits``, default 8; lower widths are
fake-quantized in the int8 range ``[-2^(bits-1), 2^(bits-1) - 1]`` and converted to int8 kernels
holding those values), activations per-tensor affine unsigned (``act_bits``, full range
``[0, 2^act_bits - 1]``).  Ranges are min/max moving averages (torch's ``FakeQuantize`` with
``MovingAverage*MinMaxObserver``).  Three choices keep the converted model equal to the
fake-quant one up to requantization rounding, on every x86 CPU:

1. The plain ``FakeQuantize``, not torch's default fused ``FusedMovingAvgObsFakeQuantize``,
   whose kernel computes symmetric scales as max/127 while ``convert`` recomputes them as
   max/127.5 from the observer (pytorch/pytorch#180990, #194816), so its int8 weights differ
   from the trained ones by up to a step.
2. Weights no larger than ``int16_safe_weight(act_bits)`` levels (64 for 8-bit activations;
   ``int16_safe=True``, the default).  The int8 kernels of x86 CPUs without VNNI (AVX2, and
   AVX-512 before Cascade Lake), fbgemm's and oneDNN's alike, multiply u8 activations by s8
   weights with ``vpmaddubsw``, which adds the products in pairs and saturates the pair at
   int16: 2 x 255 x 127 overflows it, so large activations times large weights were clipped and
   int8 left the fake quant (measured on AVX2: VGG16 top-1 agreement 0.69, logits up to 104
   output steps off; Lite0 9 of 12 photos).  With |w| <= 64, 2 x 255 x 64 = 32,640 fits, and
   every kernel path computes the exact integer sums.  The cost is one bit of 8-bit weight
   resolution; widths of 7 bits and below are unaffected.  torch's own answer,
   ``reduce_range`` (7-bit activations), also fits, but its int8 kernels still clamp at 255
   where the fake quant clamps at 127, so outliers above the observed range differ; it stays
   available (``reduce_range=True``) and then no weight cap is needed.
3. ``int16_safe=False`` restores the full weight range for CPUs with VNNI (AVX512-VNNI or
   AVX-VNNI: ``vpdpbusd`` accumulates in int32); :func:`int8_kernel_risk` names the CPU
   feature when the machine at hand lacks it.

Families: the module surgery each model family needs (what to fuse, where the graph changes) is
its card's ``qat`` (``models.family.QATSupport``); everything else is one code path.

- VGG (``models/families/vgg.py``): Conv-BN-ReLU blocks are fused (BN folded into the conv
  weight the way the int8 kernel sees it); the old BN and ReLU names are kept as
  ``nn.Identity``, so the last ReLU's name still yields the block's (fake-quantized) post-ReLU
  output (so do the block's conv and BN names now).
- EfficientNet-Lite0/1/2 (``models/families/efficientnet_lite.py``, ``qat_surgery``): Conv-BN
  pairs are fused, each ReLU6 use is its own ``nn.ReLU6`` module, residual adds go through a
  ``FloatFunctional`` per block, and the matched layer ``_head_act`` keeps its name.

Observers follow the train/eval mode: they update in train mode only (so validation and
attribution passes never move the quantization ranges), unless :func:`freeze_qat` froze them.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.ao.quantization as tq
from safetensors import safe_open
from safetensors.torch import save as st_save
from safetensors.torch import save_file
from torch import nn
from torch.ao.nn.intrinsic.qat import freeze_bn_stats

from ..attribution.chain import register_layer_kind
from ..evaluate.cost import latency_ms
from ..models.families.vgg import GlobalMaxPool
from ..models.family import FAMILIES, QATSupport, family_of, label

__all__ = ["QATModel", "prepare_qat", "calibrate", "freeze_qat", "is_qat",
           "convert_int8", "int8_state", "read_int8_state", "int8_bytes", "export_int8",
           "pack_bits", "unpack_bits", "prediction_agreement", "compare_cost",
           "int16_safe_weight", "int8_cpu", "int8_kernel_note"]


@contextmanager
def _quiet_ao():
    """Silence torch.ao.quantization's deprecation warnings (and the quantized-tensor one).

    torch.ao.quantization is deprecated in favour of torchao, whose PT2E flow cannot yet serve
    this project (see the module docstring); swap this module's backend to get rid of it.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning,
                                message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel")
        yield


# RAP steps through the fake-quant model: the stubs' activation fake-quant passes relevance on
# unchanged, and the fused blocks are affine units whose fake-quantized folded weight it reads
register_layer_kind("pass", tq.QuantStub, tq.DeQuantStub)
register_layer_kind("max", GlobalMaxPool)


class QATModel:
    """Mixin of every fake-quant model made by :func:`prepare_qat` (never constructed directly).

    Adds the input quantizer (after the input-normalisation pre-hook, which runs before
    ``forward``) and the output dequantizer around the float model's ``forward``, and switches
    observers with the train/eval mode.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(super().forward(self.quant(x)))

    def train(self, mode: bool = True):
        super().train(mode)
        _set_observers(self, mode and not getattr(self, "qat_frozen", False))
        return self


def is_qat(model: nn.Module) -> bool:
    """Whether ``model`` is a fake-quant model made by :func:`prepare_qat`."""
    return isinstance(model, QATModel)


def _set_observers(model: nn.Module, on: bool) -> None:
    model.apply(tq.enable_observer if on else tq.disable_observer)


def _check_supported(model: nn.Module) -> QATSupport:
    """The QAT support of the model's family card; clear errors for what eager-mode QAT here
    cannot handle."""
    if is_qat(model):
        raise ValueError("model is already prepared for quantization-aware training")
    family = family_of(model)
    if family is None or family.qat is None:
        able = " and ".join(label(f) for f in FAMILIES.values() if f.qat is not None)
        raise ValueError(
            f"quantization-aware training supports {able} only, got {type(model).__name__}"
            + (f", one of {label(family)}" if family else "")
            + ": eager-mode int8 needs per-family module surgery (fusable Conv-BN blocks, "
            "quantized residual adds, explicit quantize/dequantize points)")
    if any(n.endswith("_orig") for n, _ in model.named_parameters()):
        raise ValueError("model still carries pruning masks; call compress.finalize(model) first")
    family.qat.check(model)
    return family.qat


class _FixedRangeFakeQuantize(tq.FixedQParamsFakeQuantize):
    """torch's fixed-range fake quant with ``scale`` / ``zero_point`` buffers of its own (torch's
    shares them with its observer, and safetensors refuses to save one tensor twice)."""

    def __init__(self, observer):
        super().__init__(observer)
        self.scale, self.zero_point = self.scale.clone(), self.zero_point.clone()


def _act_levels_bits(act_bits: int, reduce_range: bool) -> int:
    """The activation width actually used: ``reduce_range`` keeps 7 bits at most."""
    return min(act_bits, 7) if reduce_range else act_bits


def int16_safe_weight(act_bits: int) -> int:
    """The largest weight level whose u8 x s8 pair sums fit in int16 for ``act_bits``-bit
    activations (``vpmaddubsw``, module docstring): 64 for 8 bits, 129 (no cap) for 7."""
    return 32767 // (2 * (2 ** act_bits - 1))


def _qconfig(bits: int, act_bits: int, reduce_range: bool, narrow_weights: bool = False,
             upper: float | None = None, int16_safe: bool = False) -> tq.QConfig:
    """Per-channel symmetric ``bits``-bit weights, per-tensor affine ``act_bits`` activations;
    with ``upper`` the activation range is fixed at ``[0, upper]`` (ReLU6 outputs) instead of
    observed.

    ``narrow_weights``: weight levels ``[-(2^(bits-1) - 1), 2^(bits-1) - 1]`` (TFLite's int8
    weights) instead of the full signed range.  On the full range the scale is ``max|w| / 127.5``,
    so a channel's largest weight sits exactly on a rounding tie at -127.5 when negative, and
    the fake quant and ``convert`` round it differently (measured on Lite0: -128 vs -127), so
    int8 differs from the trained weights there.  On the narrow range it lands on -127 either
    way.  ``int16_safe``: weight levels within ``[-cap, cap]``, ``cap =
    int16_safe_weight(act_bits)`` (symmetric, so the largest weight lands on a level too).
    """
    act_bits = _act_levels_bits(act_bits, reduce_range)
    top = 2 ** (bits - 1) - 1
    low = -top if narrow_weights else -top - 1
    cap = int16_safe_weight(act_bits)
    if int16_safe and top >= cap:
        top, low = cap, -cap
    weight = tq.FakeQuantize.with_args(
        observer=tq.MovingAveragePerChannelMinMaxObserver, dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric, quant_min=low, quant_max=top)
    levels = 2 ** act_bits - 1
    if upper is None:
        act = tq.FakeQuantize.with_args(
            observer=tq.MovingAverageMinMaxObserver, dtype=torch.quint8,
            qscheme=torch.per_tensor_affine, quant_min=0, quant_max=levels)
    else:
        act = _FixedRangeFakeQuantize.with_args(observer=tq.FixedQParamsObserver.with_args(
            scale=upper / levels, zero_point=0, dtype=torch.quint8, quant_min=0,
            quant_max=levels))
    return tq.QConfig(activation=act, weight=weight)


def _check_bits(name: str, value: int) -> int:
    if int(value) != value or not 2 <= value <= 8:
        raise ValueError(f"{name} must be an integer in [2, 8], got {value}")
    return int(value)


def prepare_qat(model: nn.Module, bits: int = 8, act_bits: int = 8, backend: str | None = None,
                reduce_range: bool = False, inplace: bool = False, calibration=None,
                calibration_batches: int = 8, int16_safe: bool = True) -> QATModel:
    """The fake-quant (QAT) form of a float VGG or EfficientNet-Lite; a deep copy unless
    ``inplace``.

    Applies the family's module surgery and fusion (module docstring; VGG: Conv-BN-ReLU blocks
    fused, old BN/ReLU names become ``nn.Identity``, head max-pool made int8-friendly; Lite:
    ``models.families.efficientnet_lite.qat_surgery``) and inserts fake-quant modules (see the module docstring for the
    scheme).  ``calibration`` (images, or batches / a loader yielding ``(images, ...)``) is
    run through :func:`calibrate` so the ranges start from data rather than from the first
    training batch.  Records ``{"step": "qat", ...}`` in a copy of ``model.spec["rebuild"]`` so
    ``load_checkpoint`` rebuilds this form.  The returned model keeps the input's train/eval
    mode.

    ``bits`` / ``act_bits``: weight / activation widths in [2, 8] (a bit-width sweep; below 8
    the int8 kernels still run, on values of the narrower grid).  ``backend``: the quantized
    engine ``convert_int8`` targets (``"x86"``, or ``"fbgemm"`` / ``"qnnpack"`` / ``"onednn"``
    where available); default: the family's (VGG ``"x86"``, Lite0 ``"onednn"``).
    ``reduce_range``: 7-bit activations (torch's answer to non-VNNI x86 CPUs).
    ``int16_safe``: cap weight levels so the int8 kernels of CPUs without VNNI compute exact
    sums (module docstring); ``False`` keeps the full range for VNNI-only deployments.
    """
    bits, act_bits = _check_bits("bits", bits), _check_bits("act_bits", act_bits)
    family = _check_supported(model)
    backend = backend or family.backend
    if backend not in torch.backends.quantized.supported_engines:
        raise ValueError(f"quantized engine {backend!r} is not available here "
                         f"(available: {', '.join(torch.backends.quantized.supported_engines)})")
    was_training = model.training
    qat = model if inplace else copy.deepcopy(model)
    groups, relu6 = family.surgery(qat)
    qconfig = functools.partial(_qconfig, bits, act_bits, reduce_range, family.narrow_weights,
                                int16_safe=int16_safe)
    if family.local:  # only the wrapped layers quantized, each between its own (de)quantizers
        qat.quant, qat.dequant = nn.Identity(), nn.Identity()
        for module in qat.modules():
            if isinstance(module, tq.QuantWrapper):
                module.qconfig = qconfig()
    else:
        qat.quant, qat.dequant = tq.QuantStub(), tq.DeQuantStub()
        qat.qconfig = qconfig()
    qat.train()
    with _quiet_ao():
        if groups:
            tq.fuse_modules_qat(qat, groups, inplace=True)
        for name in relu6:
            qat.get_submodule(name).qconfig = qconfig(upper=6.0)
        tq.prepare_qat(qat, inplace=True)
    qat.__class__ = family.qat_class(QATModel, type(model))
    qat.qat_frozen, qat.qat_backend = False, backend
    options = {"step": "qat", "bits": bits, "act_bits": act_bits, "backend": backend,
               "reduce_range": bool(reduce_range), "int16_safe": bool(int16_safe)}
    if getattr(model, "spec", None) is not None:
        spec = dict(model.spec)
        spec["rebuild"] = list(spec.get("rebuild", [])) + [options]
        qat.spec = spec
    if calibration is not None:
        calibrate(qat, calibration, calibration_batches)
    return qat.train(was_training)


def rebuild_qat(model: nn.Module, state: dict, **options) -> nn.Module:
    """Checkpoint replay: the fake-quant form, ready for the saved weights and observer state.

    Checkpoints written before ``int16_safe`` existed used the full weight range."""
    return prepare_qat(model, inplace=True, **{"int16_safe": False, **options})


def _image_batches(data, max_batches: int | None = None):
    """Image tensors from a tensor (one batch) or an iterable of ``images`` / ``(images, ...)``."""
    batches = [data] if isinstance(data, torch.Tensor) else data
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        yield batch if isinstance(batch, torch.Tensor) else batch[0]


@torch.no_grad()
def calibrate(model: QATModel, data, max_batches: int | None = 8) -> QATModel:
    """Update the quantization ranges from data, in eval mode (BN uses its running statistics).

    The ranges are moving averages (weight 0.01 per batch after the first), so the first batch
    sets them and later ones refine them.  Freezing is ignored: calibrating is explicit.
    """
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    _set_observers(model, True)
    try:
        for images in _image_batches(data, max_batches):
            model(images.to(device))
    finally:
        model.train(was_training)
    return model


def freeze_qat(model: QATModel, observers: bool = True, bn_stats: bool = True) -> QATModel:
    """Stop updating quantization ranges and/or BatchNorm statistics for the rest of training.

    A frozen BN makes the fused blocks train with their running statistics, i.e. the numbers
    the int8 model will use.  The flags are not saved in checkpoints (a reloaded model is for
    evaluation: its observers are off in eval mode anyway).
    """
    if observers:
        model.qat_frozen = True
        _set_observers(model, False)
    if bn_stats:
        model.apply(freeze_bn_stats)
    return model


def convert_int8(qat_model: QATModel) -> nn.Module:
    """The real int8 model (eval mode, CPU) of a fake-quant model, which is left unchanged.

    Deterministic given the QAT weights and ranges, so the QAT checkpoint is the canonical
    artifact.  Sets the process-wide ``torch.backends.quantized.engine`` to the model's backend
    (the packed int8 weights are made for, and run on, that engine).  The result has no
    autograd: attribute its fake-quant form.
    """
    if not is_qat(qat_model):
        raise ValueError("convert_int8 needs a model made by prepare_qat")
    torch.backends.quantized.engine = qat_model.qat_backend
    model = copy.deepcopy(qat_model).cpu().eval()
    with _quiet_ao():
        tq.convert(model, inplace=True)
    model.source_spec = getattr(model, "spec", None)
    if hasattr(model, "spec"):
        del model.spec  # not a checkpointable model: save the QAT model instead
    return model


def _weight_bits(int8_model: nn.Module) -> int:
    """The weight width the model was trained at (its spec's ``qat`` step; 8 if unknown)."""
    steps = (getattr(int8_model, "source_spec", None) or {}).get("rebuild", [])
    return next((s["bits"] for s in reversed(steps) if s.get("step") == "qat"), 8)


# Written by hand: safetensors has no sub-byte dtypes, and torch's packed 4-bit types
# (quint4x2) exist for embeddings only.
def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed integers in ``[-2^(bits-1), 2^(bits-1))`` as ``bits`` bits each, packed into a
    flat uint8 tensor (offset binary, little-endian bit order)."""
    u = (values.flatten().to(torch.int16) + 2 ** (bits - 1)).to(torch.uint8).numpy()
    planes = (u[:, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return torch.from_numpy(np.packbits(planes.reshape(-1), bitorder="little"))


def unpack_bits(packed: torch.Tensor, bits: int, shape) -> torch.Tensor:
    """The int8 tensor of ``shape`` that :func:`pack_bits` packed."""
    n = int(np.prod(shape))
    planes = np.unpackbits(packed.numpy(), bitorder="little")[: n * bits].reshape(n, bits)
    u = (planes.astype(np.int16) << np.arange(bits, dtype=np.int16)).sum(1)
    return torch.from_numpy((u - 2 ** (bits - 1)).astype(np.int8)).reshape(tuple(shape))


def int8_state(int8_model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Plain tensors (for safetensors) and string metadata describing a converted int8 model.

    A quantized tensor ``name`` becomes its integer values ``name`` (int8 / uint8) plus
    ``name::scale`` and ``name::zero_point`` (per channel, with ``name::axis``); packed
    ``(weight, bias)`` tuples are stored as ``name.0`` / ``name.1``; dtypes go to the metadata.
    Weights trained below 8 bits are stored at that width (:func:`pack_bits`, with
    ``name::shape``; the metadata's ``bits`` names it), so the file's size follows the width;
    :func:`read_int8_state` unpacks them.
    """
    tensors, meta = {}, {}
    bits = _weight_bits(int8_model)

    def put(name, value):
        if isinstance(value, torch.Tensor):
            value = value.detach()
            if value.is_quantized:
                ints = value.int_repr().contiguous()
                if value.dtype == torch.qint8 and bits < 8:
                    tensors[name + "::shape"] = torch.tensor(ints.shape)
                    ints = pack_bits(ints, bits)
                tensors[name] = ints
                if value.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
                    tensors[name + "::scale"] = torch.tensor([value.q_scale()], dtype=torch.float64)
                    tensors[name + "::zero_point"] = torch.tensor([value.q_zero_point()])
                else:
                    tensors[name + "::scale"] = value.q_per_channel_scales().contiguous()
                    tensors[name + "::zero_point"] = value.q_per_channel_zero_points().contiguous()
                    tensors[name + "::axis"] = torch.tensor([value.q_per_channel_axis()])
                meta[name] = str(value.dtype)
            else:
                tensors[name] = value.contiguous().clone()
        elif isinstance(value, (tuple, list)):
            for i, v in enumerate(value):
                put(f"{name}.{i}", v)
        elif value is not None:
            meta[name] = str(value)

    for key, value in int8_model.state_dict().items():
        put(key, value)
    meta["format"] = "attrpreserve-int8-v2"
    meta["bits"] = str(bits)
    meta["engine"] = torch.backends.quantized.engine
    spec = getattr(int8_model, "source_spec", None)
    if spec is not None:
        meta["model"] = json.dumps(spec)
    return tensors, meta


def read_int8_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """An :func:`export_int8` file's tensors, sub-8-bit weights unpacked to int8, and its
    metadata (for deployment tooling and checks)."""
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    bits = int(meta.get("bits", 8))
    for name in [k for k in tensors if k.endswith("::shape")]:
        base = name[: -len("::shape")]
        tensors[base] = unpack_bits(tensors.pop(base), bits, tensors.pop(name).tolist())
    return tensors, meta


def int8_bytes(int8_model: nn.Module) -> int:
    """Size in bytes of the model's :func:`export_int8` file (serialised in memory)."""
    tensors, meta = int8_state(int8_model)
    return len(st_save(tensors, metadata=meta))


def export_int8(int8_model: nn.Module, path: str | Path) -> Path:
    """Write the converted model's int8 weights and quantization parameters as safetensors.

    An export for size reporting and deployment tooling, not a checkpoint: the project never
    unpickles and reloads QAT models from their safetensors checkpoint, and :func:`convert_int8`
    rebuilds this int8 model from it deterministically.  Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors, meta = int8_state(int8_model)
    save_file(tensors, str(path), metadata=meta)
    return path


@torch.no_grad()
def prediction_agreement(fake_quant_model: nn.Module, int8_model: nn.Module, data,
                         max_batches: int | None = None) -> dict:
    """How well the int8 model reproduces the fake-quant model's outputs, in eval mode.

    ``agreement``: fraction of (image, class) decisions ``logit > 0`` that are equal (the
    multi-label decisions); ``top1_agreement``: fraction of images with the same top-1 class
    (single-label models); ``max_abs_logit_diff`` / ``mean_abs_logit_diff`` over all logits;
    ``images`` counted.
    """
    fake_quant_model.eval()
    int8_model.eval()
    device = next(fake_quant_model.parameters()).device
    same = total = n_images = same_top1 = 0
    max_diff, sum_diff = 0.0, 0.0
    for images in _image_batches(data, max_batches):
        n_images += len(images)
        fq = fake_quant_model(images.to(device)).float().cpu()
        q = int8_model(images.cpu()).float()
        same += int(((fq > 0) == (q > 0)).sum())
        same_top1 += int((fq.argmax(1) == q.argmax(1)).sum())
        total += fq.numel()
        diff = (fq - q).abs()
        max_diff, sum_diff = max(max_diff, float(diff.max())), sum_diff + float(diff.sum())
    return {"agreement": same / total if total else float("nan"),
            "top1_agreement": same_top1 / n_images if n_images else float("nan"),
            "max_abs_logit_diff": max_diff, "mean_abs_logit_diff": sum_diff / max(1, total),
            "images": n_images}


def _state_bytes(model: nn.Module) -> int:
    """Bytes of a float model's dense state dict as safetensors (the checkpoint's size)."""
    return len(st_save({k: v.detach().cpu().contiguous()
                        for k, v in model.state_dict().items()}))


def compare_cost(teacher: nn.Module, int8_model: nn.Module, input_shape=(1, 3, 64, 64),
                 repeats: int = 20) -> dict:
    """Serialised bytes and CPU latency (``evaluate.cost.latency_ms``) of float vs int8, measured
    in the same call (the machines are noisy: compare the ratio, not absolute times)."""
    float_cpu = copy.deepcopy(teacher).cpu()
    f_ms = latency_ms(float_cpu, input_shape, repeats=repeats)
    q_ms = latency_ms(int8_model, input_shape, repeats=repeats)
    f_b, q_b = _state_bytes(float_cpu), int8_bytes(int8_model)
    return {"float_bytes": f_b, "int8_bytes": q_b, "bytes_ratio": q_b / f_b,
            "float_latency_ms": f_ms, "int8_latency_ms": q_ms, "speedup": f_ms / q_ms,
            "threads": torch.get_num_threads()}


def _cpu_flags() -> set[str] | None:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``), or None where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((ln for ln in f if ln.startswith("flags")), None)
    except OSError:
        return None
    return set(line.split(":", 1)[1].split()) if line else None


def int8_cpu() -> dict:
    """What decides the int8 kernels' arithmetic here: ATen's CPU capability, whether the CPU
    has VNNI (int32 u8 x s8 accumulation; None if unknown) and a forced oneDNN ISA, if any."""
    flags = _cpu_flags()
    return {"capability": torch.backends.cpu.get_cpu_capability(),
            "vnni": None if flags is None else bool(flags & {"avx512_vnni", "avx_vnni"}),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA")}


def int8_kernel_note(qat_model: QATModel, top1_agreement: float | None = None,
                     cpu: dict | None = None) -> str | None:
    """A warning naming the CPU feature when this machine's int8 kernels may not compute what
    the fake-quant model does, else None.

    Two causes: weights beyond the int16-safe levels (``int16_safe=False`` at 8-bit weights
    and activations) on a CPU without VNNI, where pair sums saturate; and a measured top-1
    agreement under 0.98 (whatever the cause).
    """
    cpu = cpu or int8_cpu()
    options = next((s for s in reversed(getattr(qat_model, "spec", {}).get("rebuild", []))
                    if s.get("step") == "qat"), {})
    act_bits = _act_levels_bits(options.get("act_bits", 8), options.get("reduce_range", False))
    wide = (not options.get("int16_safe", False)
            and 2 ** (options.get("bits", 8) - 1) - 1 >= int16_safe_weight(act_bits))
    no_vnni = cpu["vnni"] is False or (cpu["onednn_max_cpu_isa"] or "").upper() in (
        "SSE41", "AVX", "AVX2", "AVX512_CORE")
    notes = []
    if wide and no_vnni:
        notes.append("weights use the full int8 range but this CPU's int8 kernels lack VNNI "
                     f"(ATen capability {cpu['capability']}, no AVX512-VNNI / AVX-VNNI): u8 x s8 "
                     "pair sums saturate at int16, so the int8 model can differ from its "
                     "fake-quant form; prepare with int16_safe=True")
    if top1_agreement is not None and top1_agreement < 0.98:
        notes.append(f"the int8 model agreed with its fake-quant form on only "
                     f"{top1_agreement:.1%} of validation top-1 decisions on this CPU "
                     f"(ATen capability {cpu['capability']}, VNNI {cpu['vnni']})")
    return "; ".join(notes) or None
