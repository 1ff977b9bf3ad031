"""``attrpreserve export --format onnx``: write a model as ONNX and check the file in
onnxruntime against the PyTorch model on real images; and the audit's second look at an ONNX
candidate, its PyTorch source scored against the same reference (``source_candidate``).

The file format, the onnxruntime module and the sidecar are ``compress.onnx``'s; here is the
stage around them: load, export, check, record.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from ..compress import convert_int8, is_qat, prediction_agreement
from ..compress.onnx import (OPSET, OnnxModel, export_onnx, is_onnx, read_sidecar,
                             runtime_versions, sidecar_path, write_sidecar)
from ..evaluate import audit as run_audit
from ..evaluate.cost import file_bytes, latency_ms
from ..loading import load_model
from ..models.pretrained import is_pretrained
from ..models.family import is_single_label
from ..models.layers import model_device
from ..recipes import deployed
from .configs import DataConfig, labels_for, resolve_data

__all__ = ["export", "export_lines", "check_images", "audit_source", "source_line"]

# what the sidecar keeps of the source model's: evaluate and audit read them from there
CARRIED = ("role", "classes", "compression", "history")


def check_images(data: DataConfig, split: str, n: int, model, classes) -> torch.Tensor:
    """The first ``n`` images of ``data``'s ``split`` (as the loader orders them)."""
    if n < 1:
        raise ValueError(f"--n must be a positive number of images, got {n}")
    batches = []
    for batch in data.loader(split, adapt=labels_for(model, classes, pseudo=False)):
        batches.append(batch[0])
        if sum(len(b) for b in batches) >= n:
            break
    if not batches:
        raise ValueError(f"{data.spec}: the {split} split holds no images to check the export on")
    return torch.cat(batches)[:n]


def _agreement(model, onnx_model, images) -> dict:
    """Top-1 agreement and logit differences of the ONNX file with a PyTorch model (CPU; the
    measures are symmetric, and the ONNX module comes first: an int8 model has no parameters
    to tell its device by)."""
    agree = prediction_agreement(onnx_model, model, images)
    return {k: agree[k] for k in ("top1_agreement", "agreement", "max_abs_logit_diff",
                                  "mean_abs_logit_diff", "images")}


def _output_step(int8_model, images) -> float | None:
    """The int8 model's output grid step: the scale of the quantized logits it dequantizes
    (None where the logits are float: a ViT quantizes its block Linear layers only)."""
    seen = []
    hook = int8_model.dequant.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].q_scale() if args[0].is_quantized else None))
    try:
        with torch.no_grad():
            int8_model(images)
    finally:
        hook.remove()
    return None if seen[0] is None else float(seen[0])


def _latencies(model, onnx_model, size: int) -> dict:
    """Batch-1 CPU latency (ms) of the PyTorch model that ships (int8 for fake quant) and of
    the ONNX file in onnxruntime, measured in the same call (compare the ratio)."""
    shape = (1, 3, size, size)
    torch_ms, onnx_ms = latency_ms(deployed(model), shape), latency_ms(onnx_model, shape)
    return {"torch": torch_ms, "onnxruntime": onnx_ms, "ratio": onnx_ms / torch_ms,
            "threads": torch.get_num_threads()}


def export(model_ref: str | Path, out: str | Path, data: DataConfig | dict | None = None,
           split: str = "val", n: int = 64, opset: int = OPSET) -> dict:
    """Write ``model_ref`` as ONNX to ``out`` (float; int8 QDQ for a fake-quant checkpoint) and
    check it in onnxruntime against the PyTorch model on ``n`` images of ``split`` (the model's
    data unless ``data`` overrides it). Writes and returns the sidecar ``OUT.json``: the
    source's classes, data and settings, and under ``"onnx"`` the source reference, form,
    opset, input size, file size, the check (``top1_agreement``, ``max_abs_logit_diff``, ...;
    a fake-quant source's int8 file also against torch's int8 model: ``check_int8``; and the
    logit differences in steps of the int8 output grid, ``max_abs_logit_diff_steps``), batch-1
    CPU latency of both and the versions.
    """
    if not is_onnx(out):
        raise ValueError(f"--out {out}: an ONNX file's name ends in .onnx")
    if is_onnx(model_ref):
        raise ValueError(f"{model_ref} is already an ONNX file: export a checkpoint folder or "
                         "a 'pretrained:' model")
    model, meta = load_model(model_ref)
    model.cpu().eval()
    data = resolve_data(data, meta)
    images = check_images(data, split, n, model, meta["classes"])
    form = export_onnx(model, out, data.size, opset)
    try:
        sidecar = _checked(model, meta, model_ref, out, form, data, images, split, opset)
    except BaseException:  # no file without its sidecar (a failed check, Ctrl-C)
        Path(out).unlink(missing_ok=True)
        raise
    write_sidecar(out, sidecar)
    return sidecar


def _checked(model, meta, model_ref, out, form, data, images, split, opset) -> dict:
    """The sidecar of the ONNX file ``out`` just written from ``model``: the check against
    PyTorch (and torch's int8 model), latencies and versions."""
    onnx_model = OnnxModel(out, is_single_label(model))
    source = model_ref if is_pretrained(model_ref) else os.path.abspath(model_ref)
    record = {"source": str(source), "form": form, "opset": opset, "input_size": data.size,
              "bytes": file_bytes(out),
              "check": {"split": split, "data": data.spec,
                        **_agreement(model, onnx_model, images)}}
    if is_qat(model):
        int8 = convert_int8(model)
        step = _output_step(int8, images[:1])
        record["check_int8"] = {**_agreement(int8, onnx_model, images), "output_step": step}
        for check in (record["check"], record["check_int8"]) if step else ():
            check["max_abs_logit_diff_steps"] = check["max_abs_logit_diff"] / step
    record["latency_ms"] = _latencies(model, onnx_model, data.size)
    record["versions"] = {"torch": torch.__version__, **runtime_versions()}
    return {**{k: meta[k] for k in CARRIED if k in meta}, "data": asdict(data),
            "single_label": is_single_label(model), "onnx": record}


def audit_source(candidate: str | Path, model_a, loader, explainers, **options) -> dict | None:
    """The ONNX ``candidate``'s PyTorch source (its sidecar names it) audited against the same
    reference ``model_a`` on the same ``loader`` and explainers (``options``: the audit's):
    ``{"candidate": source, "task": ..., "explainers": {name: {"agreement": ...}}}``, the same
    measures as the candidate's. None, with a warning, when the source cannot be loaded."""
    source = read_sidecar(candidate)["onnx"]["source"]
    try:
        model, _ = load_model(source)
    except (OSError, ValueError) as exc:
        warnings.warn(f"{candidate}: its PyTorch source {source} was not scored: {exc}")
        return None
    result = run_audit(model_a, model.to(model_device(model_a)), loader, explainers, **options)
    return {"candidate": source, "task": result["task"],
            "explainers": {e: {"agreement": r["agreement"]}
                           for e, r in result["explainers"].items()}}


def _says(task: dict, agreement: dict) -> str:
    top1 = task.get("top1_agreement", task.get("decision_agreement"))
    return (f"Spearman {agreement['spearman']['mean']:.3f}, top-1 agreement "
            f"{'-' if top1 is None else f'{top1:.3f}'}")


def source_line(result: dict, explainer: str) -> str | None:
    """One line: the ONNX candidate's agreement with the reference beside its PyTorch
    source's (None when the audit has no ``source_candidate``)."""
    src = result.get("source_candidate")
    if not src or explainer not in src["explainers"]:
        return None
    onnx_side = _says(result["task"], result["explainers"][explainer]["agreement"])
    torch_side = _says(src["task"], src["explainers"][explainer]["agreement"])
    return (f"[{explainer}] vs the reference: ONNX file {onnx_side}; its PyTorch source "
            f"{src['candidate']} {torch_side}")


def export_lines(sidecar: dict, out: str | Path) -> str:
    """What ``attrpreserve export`` prints: the files written, then the check."""
    rec = sidecar["onnx"]
    check = rec["check"]
    text = (f"wrote {out} ({rec['form']}, {rec['bytes'] / 1e6:.2f} MB) and "
            f"{sidecar_path(out)}\n"
            f"onnxruntime vs PyTorch on {check['images']} {check['split']} images: top-1 "
            f"agreement {check['top1_agreement']:.3f}, max |logit diff| "
            f"{check['max_abs_logit_diff']:.3g}")
    if "max_abs_logit_diff_steps" in check:
        int8 = rec["check_int8"]
        text += (f" = {check['max_abs_logit_diff_steps']:.1f} output steps (vs torch's int8 "
                 f"model: {int8['top1_agreement']:.3f}, {int8['max_abs_logit_diff_steps']:.1f} "
                 f"steps)")
    return text
