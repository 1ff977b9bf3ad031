"""How much of a pruned Lite0's accuracy is lost to stale BatchNorm statistics?

    python bench/bn_recalibration.py --folder ../shared/data/imagenette

The first CPU photo preset's teacher (pretrained EfficientNet-Lite0 restricted to the folder's
classes, 128 px) is pruned without any fine-tuning, by filters (L1, every conv: 10%, 30%,
50%) and by weight magnitude (global: 50%, 80%); each pruned model and the unpruned teacher are
scored on the photos held out of train/ (the preset's "val" split, 200 photos) twice: with the
statistics from before the surgery, and after ``engine.recalibrate_batchnorm`` on the preset's
training photos (25 batches of 32, random crops and flips, as fine-tuning sees them). Prints a
markdown table and writes OUT/bn_recalibration.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from attrpreserve.compress import global_magnitude_prune, prune_channels
from attrpreserve.engine import recalibrate_batchnorm
from attrpreserve.pipeline import photos, stages

DEFAULT_FOLDER = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette"
SURGERIES = [("none", 0.0), ("filters", 0.1), ("filters", 0.3), ("filters", 0.5),
             ("weights", 0.5), ("weights", 0.8)]


def prune(model, kind: str, amount: float, size: int):
    if kind == "none":
        return model
    if kind == "filters":
        return prune_channels(model, amount, "l1", example_input=torch.zeros(1, 3, size, size))
    global_magnitude_prune(model, amount)
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", default=str(DEFAULT_FOLDER))
    p.add_argument("--out", default="runs/bn-recalibration")
    p.add_argument("--batches", type=int, default=photos.EARLIER_CPU.recalibrate_bn)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    cfg, root = photos.EARLIER_CPU, photos.check_inputs(args.folder)
    data = photos.data_config(root, cfg, 0)
    loaded = stages.load_models({"teacher": photos.teacher_spec(root, cfg)}, "cpu")["teacher"]
    classes = loaded.meta["classes"]
    train = data.loader("train", shuffle=True, adapt=lambda ds: ds.with_classes(classes))

    def top1(model) -> float:
        scored = {"m": stages.Loaded(model, loaded.meta, "pruned")}
        return photos.top1_on(scored, data, "val")["top1"]["m"]

    rows = []
    for kind, amount in SURGERIES:
        t0 = time.perf_counter()
        model = prune(copy.deepcopy(loaded.model), kind, amount, cfg.size)
        stale = top1(model)
        recalibrate_batchnorm(model, train, args.batches)
        rows.append({"surgery": kind, "amount": amount, "stale": stale,
                     "recalibrated": top1(model), "seconds": time.perf_counter() - t0})
        print(rows[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bn_recalibration.json").write_text(json.dumps(
        {"rows": rows, "batches": args.batches, "batch_size": cfg.batch_size, "size": cfg.size,
         "val_photos": len(data.loader("val").dataset), "torch": torch.__version__}, indent=1))
    print("| surgery | top-1, statistics from before | top-1, recalibrated |\n| --- | --- | --- |")
    for r in rows:
        name = "none (teacher)" if r["surgery"] == "none" else \
            f"{r['surgery']} {r['amount']:.0%}"
        print(f"| {name} | {r['stale']:.3f} | {r['recalibrated']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
