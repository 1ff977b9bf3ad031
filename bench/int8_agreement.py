"""Does the exported int8 model compute what its fake-quant model does, on every kernel path?

    python bench/int8_agreement.py --coco ../shared/data/coco128-train --out runs/int8

For each kernel path (this CPU as it is, ATen forced to AVX2 and to its portable default, oneDNN
capped at AVX2, and ATen + oneDNN at AVX2 together: an AVX2 machine without VNNI) this script
re-runs itself in a fresh process with that environment (the variables are read when torch
loads) and, for each model and quantization scheme (``int16_safe`` weights, the full weight
range, and the full range with torch's ``reduce_range`` 7-bit activations), prepares the
fake-quant model, calibrates it on the first 16 photos, converts it to int8 and compares the two on all
the COCO photos: top-1 agreement, the largest logit difference in output quantization steps,
and the fake-quant margin (top-1 minus the int8 choice, in steps) of each disagreement; also
the fake-quant model's top-1 agreement with the float model (what the weight range costs).

Models (``--models``): a VGG teacher trained on the built-in scenes (``--vgg CHECKPOINT``, else
one is trained at 64 px and kept in OUT/vgg-teacher), at 64 px; the pretrained
EfficientNet-Lite0 at its native 224 px; a small ViT trained on the scenes (``pipeline.VIT``'s
architecture; ``--vit CHECKPOINT``, else one is trained briefly and kept in OUT/vit-teacher), at
64 px, whose QAT covers its block Linear layers (its head stays float, so its logit
differences are in logit units, not output steps). Prints a markdown table and writes
OUT/int8_agreement.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

PATHS = {
    "native": {},
    "aten=avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "aten=default": {"ATEN_CPU_CAPABILITY": "default"},
    "onednn=avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "aten+onednn=avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}


def photos(folder: Path, size: int):
    """Every photo of ``folder`` as a float tensor in [0, 1]: shorter side to ``size``, centre
    crop (the evaluation crop of ``images:`` folders)."""
    import numpy as np
    import torch
    from PIL import Image

    out = []
    for path in sorted(folder.iterdir()):
        img = Image.open(path).convert("RGB")
        scale = size / min(img.size)
        width, height = (max(size, round(side * scale)) for side in img.size)
        img = img.resize((width, height), Image.BILINEAR)
        left, top = (img.width - size) // 2, (img.height - size) // 2
        img = img.crop((left, top, left + size, top + size))
        out.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255)
    return torch.stack(out)


def scenes_teacher(out: Path, family: str) -> Path:
    """A scenes teacher, trained once at 64 px on 2,000 scenes: the VGG (width 16, 3 epochs,
    SGD) or the ViT demo's architecture (3 epochs, AdamW)."""
    from attrpreserve.engine import TrainConfig
    from attrpreserve.pipeline import VIT, DataConfig, TeacherConfig, train_teacher

    folder = out / f"{family}-teacher"
    if not (folder / "model.json").is_file():
        data = DataConfig(n_train=2000, n_val=300, n_test=100)
        if family == "vit":
            cfg = TeacherConfig(data=data, model=VIT.model, model_options=VIT.model_options,
                                train=TrainConfig(epochs=3, lr=1e-3, optimizer="adamw",
                                                  weight_decay=0.05, progress=False))
        else:
            cfg = TeacherConfig(data=data, train=TrainConfig(epochs=3, lr=0.05, progress=False))
        train_teacher(cfg, folder)
    return folder


SCHEMES = {"int16-safe (±64)": {"int16_safe": True},
           "full (±127)": {"int16_safe": False},
           "full, 7-bit activations (reduce_range)": {"int16_safe": False, "reduce_range": True}}


def measure(model, images, calib, scheme: dict) -> dict:
    """int8 vs fake quant (and fake quant vs float) on ``images``, in output steps."""
    import torch
    from torch import nn

    from attrpreserve.compress import convert_int8, prepare_qat

    qat = prepare_qat(model, calibration=calib, **scheme).eval()
    int8 = convert_int8(qat)
    head = [m for m in qat.modules() if isinstance(m, nn.Linear)][-1]
    post = getattr(head, "activation_post_process", None)  # None: a float head (the ViT's)
    step = float(post.scale) if post is not None else 1.0
    with torch.no_grad():
        fl = torch.cat([model(b) for b in images.split(32)])
        fq = torch.cat([qat(b) for b in images.split(32)])
        q = torch.cat([int8(b) for b in images.split(32)]).float()
    top_fq, top_q = fq.argmax(1), q.argmax(1)
    differ = (top_fq != top_q).nonzero().flatten()
    margins = (fq[differ, top_fq[differ]] - fq[differ, top_q[differ]]) / step
    return {"images": len(images), "top1_agreement": float((top_fq == top_q).float().mean()),
            "max_diff_steps": float((fq - q).abs().max() / step),
            "mean_diff_steps": float((fq - q).abs().mean() / step),
            "disagreement_margins_steps": [round(float(m), 2) for m in margins],
            "fq_float_top1": float((top_fq == fl.argmax(1)).float().mean()),
            "unit": "steps" if post is not None else "logit", "engine": qat.qat_backend}


def worker(args) -> None:
    """One kernel path: every model and weight range, one JSON line on stdout."""
    import torch

    from attrpreserve.compress import int8_cpu
    from attrpreserve.loading import load_checkpoint, load_pretrained

    torch.manual_seed(0)
    chosen, models = args.models.split(","), {}
    if "vgg" in chosen:
        models["vgg (scenes, 64 px)"] = (load_checkpoint(args.vgg)[0].eval(), 64)
    if "lite0" in chosen:
        models["efficientnet-lite0 (224 px)"] = (
            load_pretrained("pretrained:efficientnet-lite0", 224).eval(), 224)
    if "vit" in chosen:
        models["vit (scenes, 64 px; Linear layers)"] = (load_checkpoint(args.vit)[0].eval(), 64)
    rows = []
    for name, (model, size) in models.items():
        images = photos(Path(args.coco) / "images", size)[: args.n]
        for scheme, options in SCHEMES.items():
            rows.append({"model": name, "weights": scheme,
                         **measure(model, images, images[:16], options)})
    print(json.dumps({"cpu": int8_cpu(), "rows": rows}))


def table(results: dict) -> str:
    lines = ["| kernel path | ATen | model | scheme | int8 = fake quant top-1 | max logit diff "
             "(steps) | disagreements' margin (steps) | fake quant = float top-1 |",
             "|---|---|---|---|---|---|---|---|"]
    for path, res in results.items():
        for r in res["rows"]:
            margins = ", ".join(f"{m:g}" for m in r["disagreement_margins_steps"][:8]) or "-"
            if len(r["disagreement_margins_steps"]) > 8:
                margins += ", ..."
            unit = r.get("unit", "steps")
            diff = f"{r['max_diff_steps']:.0f}" if unit == "steps" else \
                f"{r['max_diff_steps']:.3f} (logit)"
            lines.append(f"| {path} | {res['cpu']['capability']} | {r['model']} | "
                         f"{r['weights']} | {r['top1_agreement']:.3f} ({r['images']}) | "
                         f"{diff} | {margins} | {r['fq_float_top1']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--coco", default="../shared/data/coco128-train",
                   help="folder with images/ (the 128 shared COCO photos)")
    p.add_argument("--out", default="runs/int8", help="where the table, JSON and VGG go")
    p.add_argument("--vgg", help="a VGG teacher checkpoint folder (default: train one)")
    p.add_argument("--vit", help="a scenes ViT checkpoint folder (default: train one)")
    p.add_argument("--models", default="vgg,lite0,vit",
                   help="models compared, of vgg, lite0, vit (default all three)")
    p.add_argument("--paths", default=",".join(PATHS), help="kernel paths to run")
    p.add_argument("--n", type=int, default=128, help="photos compared")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = args.models.split(",")
    if set(chosen) - {"vgg", "lite0", "vit"}:
        p.error(f"--models: choose among vgg, lite0, vit; got {args.models!r}")
    teachers = []
    for family in ("vgg", "vit"):
        if family in chosen:
            given = getattr(args, family)
            teachers += [f"--{family}", given or str(scenes_teacher(out, family))]
    results = {}
    for path in args.paths.split(","):
        env = {**os.environ, **PATHS[path]}
        cmd = [sys.executable, __file__, "--worker", "--coco", args.coco, "--n", str(args.n),
               "--models", args.models, *teachers]
        print(f"[{path}] {' '.join(f'{k}={v}' for k, v in PATHS[path].items())}", flush=True)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        results[path] = json.loads(done.stdout.strip().splitlines()[-1])
        (out / "int8_agreement.json").write_text(json.dumps(results, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
