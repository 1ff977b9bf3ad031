"""Does the exported ONNX file compute what the PyTorch model does, in onnxruntime?

    python bench/onnx_export.py --photos ../shared/data/imagenette --out runs/onnx

Exports (``attrpreserve.pipeline.onnx_export.export``, what ``attrpreserve export`` runs) and
checks, on real inputs:

- the shipped demo teacher (VGG, built-in scenes, 64 px), float, on the val split's first N
  scenes; and its fake-quant form as int8 QDQ: ``prepare_qat`` calibrated on 8 training batches,
  not fine-tuned (the export does not depend on training);
- ``pretrained:efficientnet-lite0`` float, and its fake-quant form calibrated on 64 training
  photos, as int8 QDQ, on the first N val photos of ``--photos`` (Imagenette) at 224 px;
- a torchvision ResNet-18 with random weights (no download: its state dict is saved to a file
  in OUT and loaded as ``pretrained:resnet18=FILE``), float, on the same photos.

Per model: top-1 agreement and max |logit difference| of onnxruntime with the PyTorch model
(for int8, with the fake-quant checkpoint and with torch's own int8 model), the file sizes,
and batch-1 CPU latency of onnxruntime over PyTorch (the int8 model for int8), measured in the
same call at ``--threads`` threads. Prints a markdown table and writes OUT/onnx_export.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from attrpreserve.compress import prepare_qat
from attrpreserve.evaluate.cost import file_bytes
from attrpreserve.loading import load_model
from attrpreserve.models import save_checkpoint
from attrpreserve.pipeline import resolve_data
from attrpreserve.pipeline.onnx_export import export
from attrpreserve.pipeline.shipped import SHIPPED_TEACHER
from attrpreserve.recipes import deployed_file
from attrpreserve.recipes import export as export_int8_beside


def qat_checkpoint(ref: str, data: dict, out: Path, batches: int) -> Path:
    """The fake-quant form of ``ref``, calibrated on ``batches`` training batches of ``data``
    and saved as a checkpoint in ``out`` with its int8 export, as ``compress`` saves one
    (reused when there)."""
    if (out / "model.json").is_file():
        return out
    model, meta = load_model(ref)
    loader = resolve_data(data, meta).loader("train")
    qat = prepare_qat(model, calibration=loader, calibration_batches=batches).eval()
    save_checkpoint(out, qat, {
        "role": "compressed", "classes": meta["classes"], "teacher": ref,
        "data": {**meta["data"], **data},
        "compression": {"method": "quantization", "matching": "none", "bits": 8,
                        "note": f"calibrated on {batches} training batches, not fine-tuned"},
        "history": {"best_epoch": None, "best_val_mAP": None}})
    export_int8_beside(qat, out)
    return out


def weights_bytes(ref: str) -> int:
    """Bytes of the PyTorch weights that ship: the checkpoint's (int8 export if any) or the
    ``pretrained:`` spec's state dict file (the package's for Lite0)."""
    if Path(ref).is_dir():
        return file_bytes(deployed_file(ref))
    from attrpreserve.models import pretrained
    name, path = pretrained.parse(ref)
    return file_bytes(path or pretrained.lite_weights_file(name))


def row(name: str, ref: str, out: Path, data: dict, n: int) -> dict:
    side = export(ref, out / f"{name}.onnx", data, "val", n)["onnx"]
    check, int8 = side["check"], side.get("check_int8")
    return {"model": name, "form": side["form"], "images": check["images"],
            "top1_agreement": check["top1_agreement"],
            "max_abs_logit_diff": check["max_abs_logit_diff"],
            "max_abs_logit_diff_steps": check.get("max_abs_logit_diff_steps"),
            "int8_top1_agreement": int8 and int8["top1_agreement"],
            "int8_max_abs_logit_diff_steps": int8 and int8["max_abs_logit_diff_steps"],
            "onnx_mb": side["bytes"] / 1e6, "torch_mb": weights_bytes(ref) / 1e6,
            "ort_over_torch_latency": side["latency_ms"]["ratio"],
            "torch_ms": side["latency_ms"]["torch"], "ort_ms": side["latency_ms"]["onnxruntime"],
            "versions": side["versions"]}


def table(rows: list[dict]) -> str:
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)
    lines = ["| model | form | images | top-1 agr. | max abs logit diff (int8 output steps) | "
             "vs torch int8: top-1, steps | ONNX MB | torch MB | ORT / torch latency |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        int8 = ("-" if r["int8_top1_agreement"] is None else
                f"{r['int8_top1_agreement']:.3f}, {r['int8_max_abs_logit_diff_steps']:.1f}")
        steps = r["max_abs_logit_diff_steps"]
        diff = num(r["max_abs_logit_diff"], ".2g") + ("" if steps is None else f" ({steps:.1f})")
        lines.append(f"| {r['model']} | {r['form']} | {r['images']} | "
                     f"{r['top1_agreement']:.3f} | {diff} | "
                     f"{int8} | {r['onnx_mb']:.2f} | {r['torch_mb']:.2f} | "
                     f"{r['ort_over_torch_latency']:.2f} ({r['ort_ms']:.1f} / "
                     f"{r['torch_ms']:.1f} ms) |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", default="../shared/data/imagenette",
                    help="a class-folder photo set with train/ and val/ (Imagenette)")
    ap.add_argument("--n", type=int, default=48, help="check images per model")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (torch and onnxruntime)")
    ap.add_argument("--out", default="runs/onnx")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    photos = {"spec": f"images:{args.photos}", "n_train": 64, "n_val": args.n, "batch_size": 16}
    resnet = out / "resnet18-random.pth"
    if not resnet.is_file():
        import torchvision
        torch.save(torchvision.models.resnet18().state_dict(), resnet)
    lite = "pretrained:efficientnet-lite0"
    models = [
        ("vgg-demo-teacher", str(SHIPPED_TEACHER), {}),
        ("vgg-demo-teacher-int8", str(qat_checkpoint(str(SHIPPED_TEACHER), {},
                                                     out / "vgg-qat", 8)), {}),
        ("efficientnet-lite0", lite, photos),
        ("efficientnet-lite0-int8", str(qat_checkpoint(lite, photos, out / "lite0-qat", 4)),
         photos),
        ("resnet18-random", f"pretrained:resnet18={resnet}", photos),
    ]
    rows = [row(name, ref, out, data, args.n) for name, ref, data in models]
    text = table(rows)
    print(text)
    (out / "onnx_export.json").write_text(json.dumps(
        {"rows": rows, "threads": args.threads, "n": args.n, "photos": args.photos}, indent=2))
    print(f"wrote {out / 'onnx_export.json'}")


if __name__ == "__main__":
    main()
