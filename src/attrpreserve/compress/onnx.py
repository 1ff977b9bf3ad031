"""The ONNX artefact: export a model to ONNX, its JSON sidecar, and the module that runs the
file in onnxruntime (what ``loading.load_model`` returns for a ``.onnx`` reference).

- :func:`export_onnx` writes a float model as a float ONNX graph and a fake-quant (QAT) model
  as an int8 QDQ graph: the model :func:`~.quantize.convert_int8` makes (int8 weights, the
  ranges the QAT model learnt) exported with its QuantizeLinear / DequantizeLinear pairs, which
  onnxruntime fuses into int8 kernels (``QLinearConv``);
- :class:`OnnxModel` runs an ``.onnx`` file as an ``nn.Module`` (CPU, forward only: no
  autograd, so only the black-box explainers apply, :func:`check_explainers`);
- :func:`write_sidecar` / :func:`load_onnx`: ``FILE.onnx.json`` beside the file, the source
  model's classes, data and settings plus the export's own record (``"onnx"``).

Exporter: torch's TorchScript exporter (``dynamo=False``), for floats and int8 alike.  The
default exporter traces with ``torch.export``, which fails on torch.ao's converted int8
modules (packed weights, quantized tensors); the TorchScript one maps them to QDQ.  It is
deprecated but present in the pinned torch (< 2.15); its deprecation warning is silenced in
:func:`_export` only.  Two modules of the converted model are rewritten for it
(:func:`_exportable`), computing the same numbers: the VGG head's whole-map max-pool becomes a
``MaxPool2d`` of the map's fixed size, and the two int8 ops it has no QDQ form for,
EfficientNet-Lite's zero padding ("SAME") and ReLU6, run on the dequantized values and
requantize on their input's grid (:class:`_OnInputGrid`).  The input's height and width are fixed at export, the batch is free.

onnxruntime is imported when needed: the package works without the ``onnx`` extra.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import torch
import torch.ao.nn.quantized as nnq
from torch import nn

from ..attribution import EXPLAINERS
from ..attribution.explainers import check_applicable
from ..fileio import atomic_write
from ..models.families.vgg import GlobalMaxPool
from .quantize import _quiet_ao, convert_int8, is_qat

__all__ = ["OPSET", "OnnxModel", "check_explainers", "export_onnx", "is_onnx", "load_onnx",
           "read_sidecar", "runtime_versions", "sidecar_path", "write_sidecar"]

OPSET = 17
SUFFIX = ".onnx"
FORMAT = "attrpreserve-onnx-v1"
INPUT, OUTPUT = "images", "logits"


def is_onnx(ref) -> bool:
    """Whether a model reference names an ONNX file (by its ``.onnx`` suffix)."""
    return str(ref).lower().endswith(SUFFIX)


def sidecar_path(path: str | Path) -> Path:
    """``FILE.onnx.json``: the sidecar beside an ONNX file."""
    return Path(str(path) + ".json")


def _runtime():
    """The onnxruntime module, or a one-line ValueError saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise ValueError("ONNX needs onnx and onnxruntime: pip install 'attrpreserve[onnx]'"
                         ) from None
    return onnxruntime


def runtime_versions() -> dict:
    """Versions of the ONNX packages an export was made and checked with."""
    import onnx
    return {"onnx": onnx.__version__, "onnxruntime": _runtime().__version__}


class _OnInputGrid(nn.Module):
    """``module`` as the TorchScript exporter can write it for a quantized input: applied to the
    dequantized values, requantized on the input's grid.  Exact for what is rewritten here:
    zero padding (0 is the zero point) and ReLU6 (torch's int8 ReLU6 keeps its input's grid and
    clamps at the grid points of 0 and 6, as requantizing the float clamp does)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_quantized:
            return self.module(x)
        return torch.quantize_per_tensor(self.module(x.dequantize()), x.q_scale(),
                                         x.q_zero_point(), x.dtype)


def _static_pools(model: nn.Module, example: torch.Tensor) -> None:
    """Each whole-map max-pool becomes a ``MaxPool2d`` of the map size ``example`` gives it."""
    sizes = {}
    hooks = [m.register_forward_pre_hook(
        lambda module, args, name=name: sizes.__setitem__(name, tuple(args[0].shape[-2:])))
        for name, m in model.named_modules() if isinstance(m, GlobalMaxPool)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    for name, size in sizes.items():
        model.set_submodule(name, nn.MaxPool2d(size))


def _exportable(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, str]:
    """``(module to export, "float" or "int8 QDQ")``: a CPU copy of a float model, or the int8
    conversion of a fake-quant one with the rewrites the exporter needs (module docstring)."""
    if not is_qat(model):
        return copy.deepcopy(model).cpu().eval(), "float"
    int8 = convert_int8(model)
    for name, m in list(int8.named_modules()):
        if isinstance(m, nn.ZeroPad2d):
            int8.set_submodule(name, _OnInputGrid(nn.ZeroPad2d(m.padding)))
        elif isinstance(m, nnq.ReLU6):
            int8.set_submodule(name, _OnInputGrid(nn.ReLU6()))
    _static_pools(int8, example)
    return int8, "int8 QDQ"


def _export(module: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    with warnings.catch_warnings(), _quiet_ao():
        # the TorchScript exporter and the tracing it runs are deprecated (module docstring)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        # torch's int8 modules read their scales as Python numbers: traced as constants, which
        # they are in a converted model (the onnxruntime check then compares the outputs)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        try:
            torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
        except RuntimeError as exc:  # the exporter's and the tracer's (an op it cannot run)
            first = str(exc).strip().splitlines()[0]
            # a Vision Transformer run at another size than its position embedding's resamples
            # it with bicubic antialiasing, which opset 17 lacks
            hint = "; a Vision Transformer exports at its native size" \
                if "upsample_bicubic" in first else ""
            raise ValueError(f"ONNX export failed at {example.shape[-1]} px: {first}{hint}") \
                from None


def export_onnx(model: nn.Module, path: str | Path, input_size: int,
                opset: int = OPSET) -> str:
    """Write ``model`` (float, or fake-quant as int8 QDQ) to ``path`` for ``input_size``-px
    images, atomically; returns the form written (``"float"`` / ``"int8 QDQ"``).
    ``model`` itself is not changed."""
    _runtime()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, 3, input_size, input_size)
    module, form = _exportable(model, example)
    atomic_write(path, lambda tmp: _export(module, example, tmp, opset))
    return form


class OnnxModel(nn.Module):
    """An ONNX file run by onnxruntime (CPU) as a classifier module: ``model(images)`` ->
    logits on the images' device, without autograd.

    ``single_label``: whether the source model is a softmax classifier (the sidecar's).  The
    file's weight tensors (initializers and constants, int8 ones included; not the int64 shape
    constants) are kept as frozen parameters, so parameter counts describe the file and the
    parameters' device is the one the callers' inputs go to; onnxruntime runs its own copy.
    """

    def __init__(self, path: str | Path, single_label: bool = False):
        super().__init__()
        ort = _runtime()
        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # as many as torch: comparable
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own classes for unreadable files
            raise ValueError(f"{self.path}: onnxruntime cannot load it: "
                             f"{str(exc).splitlines()[0]}") from exc
        self.single_label = bool(single_label)
        self.weights = nn.ParameterList(
            nn.Parameter(w, requires_grad=False) for w in _weight_tensors(self.path))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = {INPUT: x.detach().float().cpu().contiguous().numpy()}
        try:
            out = self.session.run([OUTPUT], feed)[0]
        except Exception as exc:  # e.g. another image size than exported
            raise ValueError(f"{self.path}: onnxruntime failed: "
                             f"{str(exc).splitlines()[0]}") from exc
        return torch.from_numpy(out).to(x.device)

    def extra_repr(self) -> str:
        return str(self.path)


def _weight_tensors(path: Path) -> list[torch.Tensor]:
    """The weight tensors an ONNX file stores: initializers and Constant nodes' tensors, without
    integer shape and index constants (int64)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    tensors = list(graph.initializer) + [a.t for n in graph.node if n.op_type == "Constant"
                                         for a in n.attribute if a.type == a.TENSOR]
    return [torch.from_numpy(numpy_helper.to_array(t).copy()) for t in tensors
            if t.data_type != onnx.TensorProto.INT64]


def check_explainers(model: nn.Module, explainers) -> None:
    """ValueError (one line) when an explainer does not apply to ``model``: ``model`` runs in
    onnxruntime and the explainer needs more than its forward passes (gradients, hooks on its
    layers), or its family refuses it (``attribution.explainers.check_applicable``)."""
    if not isinstance(model, OnnxModel):
        check_applicable(model, explainers)
        return
    black_box = EXPLAINERS.names(black_box=True)
    for name in explainers:
        if name in EXPLAINERS and name not in black_box:
            raise ValueError(f"explainer {name!r} needs the model's gradients, but {model.path} "
                             f"runs in onnxruntime (forward passes only): use "
                             f"{' or '.join(black_box)}")


def write_sidecar(path: str | Path, meta: dict) -> Path:
    """Write ``FILE.onnx.json`` (``meta`` plus the format tag) atomically; returns its path."""
    side = sidecar_path(path)
    text = json.dumps({"format": FORMAT, **meta}, indent=2, default=str)
    atomic_write(side, lambda tmp: tmp.write_text(text))
    return side


def read_sidecar(path: str | Path) -> dict:
    """The sidecar of an exported ONNX file; ValueError when the file or its sidecar is missing
    or the sidecar is not one."""
    path, side = Path(path), sidecar_path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such ONNX file")
    if not side.is_file():
        raise ValueError(f"{path}: its sidecar {side.name} is missing (classes, data, input "
                         f"size): write the file with 'attrpreserve export'")
    try:
        meta = json.loads(side.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{side}: not an attrpreserve ONNX sidecar ({FORMAT})")
    return meta


def load_onnx(path: str | Path) -> tuple[OnnxModel, dict]:
    """``(OnnxModel, sidecar)`` of an exported file."""
    meta = read_sidecar(path)
    model = OnnxModel(path, meta.get("single_label", False))
    model.source = str(path)
    return model.eval(), meta
