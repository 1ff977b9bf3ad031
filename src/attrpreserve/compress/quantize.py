"""Quantization-aware training (QAT) to int8 with the same matching losses, and int8 export.

Backend: PyTorch's eager-mode ``torch.ao.quantization`` (x86 / fbgemm engine).  It is deprecated
in torch 2.14 but is the one path that (a) keeps the model an ``nn.Module`` tree whose layer names
survive, so ``LayerTap``, Grad-CAM and WCAM work on the fake-quant model unchanged, and (b)
converts to real int8 CPU kernels (``quantized::conv2d``) without ``torch.compile``.  Its
successor, torchao's PT2E flow (``prepare_qat_pt2e`` / ``convert_pt2e``), traces the model into a
flat graph (the ReLU modules disappear, so the matched layer cannot be hooked by name), and without
``torch.compile`` its converted model runs quantize/dequantize + float convolutions: on the small
VGG it was slower than the float model.  Everything backend-specific stays in this module behind
:func:`prepare_qat`, :func:`convert_int8` and :func:`export_int8`; only there are torch.ao's
deprecation warnings silenced (:func:`_quiet_ao`).  To swap to torchao, reimplement those three.

The quantization scheme: weights per-channel symmetric (``bits``, default 8; lower widths are
fake-quantized in the int8 range ``[-2^(bits-1), 2^(bits-1) - 1]`` and converted to int8 kernels
holding those values), activations per-tensor affine unsigned (``act_bits``, full range
``[0, 2^act_bits - 1]``).  Ranges are min/max moving averages (torch's ``FakeQuantize`` with
``MovingAverage*MinMaxObserver``).  Two choices keep the converted model equal to the fake-quant
one up to rounding: (1) the plain ``FakeQuantize``, not torch's default fused
``FusedMovingAvgObsFakeQuantize``, whose kernel computes symmetric scales as max/127 while
``convert`` recomputes them as max/127.5 from the observer (pytorch/pytorch#180990, #194816), so
its int8 weights differ from the trained ones by up to a step; (2) no ``reduce_range`` by
default: torch's x86 default quantizes activations to ``[0, 127]`` to avoid 16-bit saturation in
fbgemm's AVX2 (non-VNNI) kernels, but the int8 kernels then do not clamp at 127 as the fake quant
does.  Pass ``reduce_range=True`` when deploying on CPUs without VNNI.

Conv-BN-ReLU blocks are fused (BN folded into the conv weight the way the int8 kernel sees it);
the old BN and ReLU names are kept as ``nn.Identity``, so the last ReLU's name still yields the
block's (fake-quantized) post-ReLU output (so do the block's conv and BN names now).

Observers follow the train/eval mode: they update in train mode only (so validation and
attribution passes never move the quantization ranges), unless :func:`freeze_qat` froze them.
"""

from __future__ import annotations

import copy
import json
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.ao.quantization as tq
import torch.nn.functional as F
from safetensors.torch import save as st_save
from safetensors.torch import save_file
from torch import nn
from torch.ao.nn.intrinsic.qat import freeze_bn_stats

from ..attribution.rap import register_layer_kind
from ..engine import TrainConfig, fit
from ..evaluate.cost import latency_ms
from ..matching import MatchingLoss
from ..models.checkpoint import register_rebuild_step
from ..models.vgg import VGG
from .distill import DistillStep
from .unstructured import PruneFinetuneStep

__all__ = ["QATVGG", "prepare_qat", "calibrate", "freeze_qat", "is_qat", "convert_int8",
           "int8_state", "int8_bytes", "export_int8", "prediction_agreement", "compare_cost",
           "quantization_aware_train"]


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


class _GlobalMaxPool(nn.Module):
    """``AdaptiveMaxPool2d(1)`` as a max-pool over the whole map: quantized tensors support it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, kernel_size=tuple(x.shape[-2:]))


# RAP steps through the fake-quant model: the stubs' activation fake-quant passes relevance on
# unchanged, and the fused blocks are affine units whose fake-quantized folded weight it reads
register_layer_kind("pass", tq.QuantStub, tq.DeQuantStub)
register_layer_kind("max", _GlobalMaxPool)


class QATVGG(VGG):
    """A VGG prepared for QAT by :func:`prepare_qat` (never constructed directly).

    Adds the input quantizer and output dequantizer around ``VGG.forward``, answers
    ``last_relu_name`` with the float model's name (that ReLU is now an ``nn.Identity`` after the
    fused block), and switches observers with the train/eval mode.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(super().forward(self.quant(x)))

    def last_relu_name(self) -> str:
        return self.qat_relu_name

    def train(self, mode: bool = True):
        super().train(mode)
        _set_observers(self, mode and not getattr(self, "qat_frozen", False))
        return self


def is_qat(model: nn.Module) -> bool:
    """Whether ``model`` is a fake-quant model made by :func:`prepare_qat`."""
    return isinstance(model, QATVGG)


def _set_observers(model: nn.Module, on: bool) -> None:
    model.apply(tq.enable_observer if on else tq.disable_observer)


def _check_supported(model: nn.Module) -> None:
    """Clear errors for what eager-mode QAT here cannot handle."""
    if is_qat(model):
        raise ValueError("model is already prepared for quantization-aware training")
    if not isinstance(model, VGG):
        raise ValueError(
            f"quantization-aware training supports the VGG family (attrpreserve.models.VGG) only, "
            f"got {type(model).__name__}: eager-mode int8 needs fusable Conv-BN-ReLU blocks and "
            f"explicit quantize/dequantize points (residual adds, as in ResNet, are not handled)")
    if any(n.endswith("_orig") for n, _ in model.named_parameters()):
        raise ValueError("model still carries pruning masks; call compress.finalize(model) first")
    pool = model.classifier[0]
    if isinstance(pool, nn.AdaptiveMaxPool2d) and pool.output_size not in (1, (1, 1)):
        raise ValueError(f"unsupported head pool {pool}")
    feats = list(model.features)
    for i, m in enumerate(feats):
        if isinstance(m, nn.Conv2d) and not (
                i + 2 < len(feats) and isinstance(feats[i + 1], nn.BatchNorm2d)
                and isinstance(feats[i + 2], nn.ReLU)):
            raise ValueError(f"features.{i}: expected Conv2d-BatchNorm2d-ReLU blocks")


def _qconfig(bits: int, act_bits: int, reduce_range: bool) -> tq.QConfig:
    """Per-channel symmetric ``bits``-bit weights, per-tensor affine ``act_bits`` activations."""
    act_bits = min(act_bits, 7) if reduce_range else act_bits
    weight = tq.FakeQuantize.with_args(
        observer=tq.MovingAveragePerChannelMinMaxObserver, dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric,
        quant_min=-(2 ** (bits - 1)), quant_max=2 ** (bits - 1) - 1)
    act = tq.FakeQuantize.with_args(
        observer=tq.MovingAverageMinMaxObserver, dtype=torch.quint8,
        qscheme=torch.per_tensor_affine, quant_min=0, quant_max=2 ** act_bits - 1)
    return tq.QConfig(activation=act, weight=weight)


def _check_bits(name: str, value: int) -> int:
    if int(value) != value or not 2 <= value <= 8:
        raise ValueError(f"{name} must be an integer in [2, 8], got {value}")
    return int(value)


def prepare_qat(model: nn.Module, bits: int = 8, act_bits: int = 8, backend: str = "x86",
                reduce_range: bool = False, inplace: bool = False, calibration=None,
                calibration_batches: int = 8) -> QATVGG:
    """The fake-quant (QAT) form of a float VGG; a deep copy unless ``inplace``.

    Fuses every Conv-BN-ReLU block (old BN/ReLU names become ``nn.Identity``), swaps the head's
    global max-pool for an int8-friendly equivalent, and inserts fake-quant modules (see the
    module docstring for the scheme).  ``calibration`` (images, or batches / a loader yielding
    ``(images, ...)``) is run through :func:`calibrate` so the ranges start from data rather
    than from the first training batch.  Records ``{"step": "qat", ...}`` in a copy of
    ``model.spec["rebuild"]`` so ``load_checkpoint`` rebuilds this form.  The returned model
    keeps the input's train/eval mode.

    ``bits`` / ``act_bits``: weight / activation widths in [2, 8] (a bit-width sweep; below 8
    the int8 kernels still run, on values of the narrower grid).  ``backend``: the quantized
    engine ``convert_int8`` targets (``"x86"``, or ``"fbgemm"`` / ``"qnnpack"`` / ``"onednn"``
    where available).  ``reduce_range``: 7-bit activations for non-VNNI x86 CPUs.
    """
    bits, act_bits = _check_bits("bits", bits), _check_bits("act_bits", act_bits)
    if backend not in torch.backends.quantized.supported_engines:
        raise ValueError(f"quantized engine {backend!r} is not available here "
                         f"(available: {', '.join(torch.backends.quantized.supported_engines)})")
    _check_supported(model)
    was_training = model.training
    qat = model if inplace else copy.deepcopy(model)
    relu_name = qat.last_relu_name()
    blocks = [[f"features.{i}", f"features.{i + 1}", f"features.{i + 2}"]
              for i, m in enumerate(qat.features) if isinstance(m, nn.Conv2d)]
    if isinstance(qat.classifier[0], nn.AdaptiveMaxPool2d):
        qat.classifier[0] = _GlobalMaxPool()
    qat.quant, qat.dequant = tq.QuantStub(), tq.DeQuantStub()
    qat.qconfig = _qconfig(bits, act_bits, reduce_range)
    qat.train()
    with _quiet_ao():
        tq.fuse_modules_qat(qat, blocks, inplace=True)
        tq.prepare_qat(qat, inplace=True)
    qat.__class__ = QATVGG
    qat.qat_relu_name, qat.qat_frozen, qat.qat_backend = relu_name, False, backend
    options = {"step": "qat", "bits": bits, "act_bits": act_bits, "backend": backend,
               "reduce_range": bool(reduce_range)}
    if getattr(model, "spec", None) is not None:
        spec = dict(model.spec)
        spec["rebuild"] = list(spec.get("rebuild", [])) + [options]
        qat.spec = spec
    if calibration is not None:
        calibrate(qat, calibration, calibration_batches)
    return qat.train(was_training)


@register_rebuild_step("qat")
def _rebuild_qat(model: nn.Module, state: dict, **options) -> nn.Module:
    """Checkpoint replay: the fake-quant form, ready for the saved weights and observer state."""
    return prepare_qat(model, inplace=True, **options)


def _image_batches(data, max_batches: int | None = None):
    """Image tensors from a tensor (one batch) or an iterable of ``images`` / ``(images, ...)``."""
    batches = [data] if isinstance(data, torch.Tensor) else data
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        yield batch if isinstance(batch, torch.Tensor) else batch[0]


@torch.no_grad()
def calibrate(model: QATVGG, data, max_batches: int | None = 8) -> QATVGG:
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


def freeze_qat(model: QATVGG, observers: bool = True, bn_stats: bool = True) -> QATVGG:
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


def convert_int8(qat_model: QATVGG) -> nn.Module:
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


def int8_state(int8_model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Plain tensors (for safetensors) and string metadata describing a converted int8 model.

    A quantized tensor ``name`` becomes its integer values ``name`` (int8 / uint8) plus
    ``name::scale`` and ``name::zero_point`` (per channel, with ``name::axis``); packed
    ``(weight, bias)`` tuples are stored as ``name.0`` / ``name.1``; dtypes go to the metadata.
    """
    tensors, meta = {}, {}

    def put(name, value):
        if isinstance(value, torch.Tensor):
            value = value.detach()
            if value.is_quantized:
                tensors[name] = value.int_repr().contiguous()
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
    meta["format"] = "attrpreserve-int8-v1"
    meta["engine"] = torch.backends.quantized.engine
    spec = getattr(int8_model, "source_spec", None)
    if spec is not None:
        meta["model"] = json.dumps(spec)
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

    ``agreement``: fraction of (image, class) decisions ``logit > 0`` that are equal;
    ``max_abs_logit_diff`` / ``mean_abs_logit_diff`` over all logits; ``images`` counted.
    """
    fake_quant_model.eval()
    int8_model.eval()
    device = next(fake_quant_model.parameters()).device
    same = total = n_images = 0
    max_diff, sum_diff = 0.0, 0.0
    for images in _image_batches(data, max_batches):
        n_images += len(images)
        fq = fake_quant_model(images.to(device)).float().cpu()
        q = int8_model(images.cpu()).float()
        same += int(((fq > 0) == (q > 0)).sum())
        total += fq.numel()
        diff = (fq - q).abs()
        max_diff, sum_diff = max(max_diff, float(diff.max())), sum_diff + float(diff.sum())
    return {"agreement": same / total if total else float("nan"),
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


class _FreezeAt:
    """Wraps a training step; freezes ranges and BN statistics before step number ``at``."""

    def __init__(self, step, at: int | None):
        self.step, self.at, self.calls = step, at, 0

    def __call__(self, model, images, labels):
        if self.at is not None and self.calls == self.at:
            freeze_qat(model)
        self.calls += 1
        return self.step(model, images, labels)


def quantization_aware_train(model: nn.Module, teacher: nn.Module, train_loader, val_loader,
                             bits: int = 8, act_bits: int = 8,
                             finetune_cfg: TrainConfig | None = None,
                             matching: MatchingLoss | None = None, lam: float = 100.0,
                             teacher_layer: str | None = None, student_layer: str | None = None,
                             task: str = "bce", calibration_batches: int = 8,
                             freeze_after: float | None = 0.75, backend: str = "x86",
                             step=None) -> tuple[QATVGG, dict]:
    """Prepare a fake-quant copy of the float ``model`` and fine-tune it with ``fit``.

    The loss is the task term (``"bce"``: ``PruneFinetuneStep``; ``"kd"``: ``DistillStep``
    against the teacher's logits; ``step``, a ``MatchedStep``, replaces both when given) plus
    ``lam`` x ``matching`` against the frozen float
    ``teacher`` (which may be ``model`` itself: it is never modified).  Ranges are calibrated on
    ``calibration_batches`` training batches first; after ``freeze_after`` of the training steps
    the ranges and BN statistics freeze (``None``: never).  ``fit`` keeps the epoch with the
    best validation mAP.  Returns ``(qat_model, history)`` with ``fit``'s history plus the
    settings; convert with :func:`convert_int8`.
    """
    steps = {"bce": PruneFinetuneStep, "kd": DistillStep}
    if task not in steps:
        raise ValueError(f"task must be one of {', '.join(steps)}, got {task!r}")
    if freeze_after is not None and not 0 <= freeze_after <= 1:
        raise ValueError(f"freeze_after must be in [0, 1] or None, got {freeze_after}")
    cfg = finetune_cfg or TrainConfig()
    qat = prepare_qat(model, bits, act_bits, backend,
                      calibration=train_loader if calibration_batches else None,
                      calibration_batches=calibration_batches)
    at = None if freeze_after is None else int(freeze_after * cfg.epochs * len(train_loader))
    step = _FreezeAt(step or steps[task](teacher, matching, lam, teacher_layer, student_layer),
                     at)
    hist = fit(qat, train_loader, val_loader, step, cfg, desc=f"qat {bits}-bit")
    frozen = at is not None and step.calls > at
    history = {**hist.to_dict(), "bits": bits, "act_bits": act_bits, "backend": backend,
               "frozen_at_step": at if frozen else None}
    return qat, history
