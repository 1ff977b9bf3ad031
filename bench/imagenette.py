"""The GPU preset of issue 16: every recipe naive / AT / WCAM on Imagenette, 3 seeds, one script.

    python bench/imagenette.py --folder ../shared/data/imagenette --out runs/imagenette-gpu \
        --device cuda                       # the GPU preset (pipeline.photos.GPU)
    python bench/imagenette.py --smoke --out /tmp/imagenette-smoke   # a handful of photos, CPU

The teacher is ``pretrained:efficientnet-lite0,classes=FOLDER`` (ImageNet Lite0 restricted to
the folder's 10 classes). Each (seed, recipe, strength) group compresses it once per matching
(``photos.GPU.matchings``) at the issue's strengths (``photos.STRENGTHS``: distillation into a
half-width Lite0 from random init, structured pruning at 30% / 50% of the filters, unstructured
at 50% / 80% sparsity, QAT at 8 / 4 bits), trained with the labels (cross entropy + distillation
+ lambda x matching), then evaluates the group against the teacher on val/ (Grad-CAM agreement,
fixed pair sets with intervals, top-1, bytes, CPU latency) and on the 134 unseen val photos
(top-1). The photos are decoded once into a uint8 cache on ``--device`` (``cached:``), cropped and
flipped there.

Frugal and robust: groups run seed 0 of every recipe first, then seeds 1 and 2, so a run cut
short still has every recipe; each group writes ``OUT/RECIPE@S/seedK/results.json`` when done
and a finished group or run is reused on rerun (an interrupted run continues from its training
state); ``--time-limit`` stops before a group that would start after it. Each run prints its
train images / s and, on CUDA, the GPU utilisation sampled by ``nvidia-smi`` while it trained
(``OUT/gpu.csv``). ``OUT/summary.json`` holds one flat row per model of every finished group.

GPU time is scarce (about 15 minutes for this work, start-up included, at most 10 minutes a
call): the full plan is 21 groups (63 fine-tunings and 21 evaluations of 3,925 photos), more
than one call holds, so run it with ``--time-limit 420`` and repeat the same command in the next
call: finished groups and runs are reused. Seed 0 of every recipe comes first.

Epochs: fine-tuning recipes start from the pretrained teacher and run ``--epochs`` (default 3);
distillation trains a student from scratch and runs ``--kd-epochs`` (default 15). Whether that
converged is read off the histories: each run prints its best epoch, and a best epoch equal to
the last is flagged ("still improving").
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from attrpreserve.distributed import resolve_device
from attrpreserve.pipeline import photos, stages

DEFAULT_FOLDER = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette"
# 64 px: Lite0's last maps are 2 x 2 (at 32 px they are 1 x 1, and matching has no gradient)
SMOKE = photos.with_overrides(photos.GPU, size=64, n_train=5, n_val=5, n_test=5, epochs=1,
                              batch_size=5, checkpoint_every=None, unseen=False,
                              matchings=("none", "wcam"), unstructured_rounds=1)


class GpuMonitor:
    """Samples ``nvidia-smi`` (utilisation %, memory MiB) every ``every`` seconds into a CSV;
    :meth:`mean_since` averages the samples taken after a mark. Does nothing without it."""

    def __init__(self, path: Path, every: float = 1.0):
        self.samples: list[tuple[float, float, float]] = []
        self.path, self.every = path, every
        self.on = shutil.which("nvidia-smi") is not None
        self._stop = threading.Event()
        if self.on:
            path.parent.mkdir(parents=True, exist_ok=True)
            threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        with self.path.open("a") as f:
            while not self._stop.wait(self.every):
                try:
                    line = subprocess.run(
                        ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                         "--format=csv,noheader,nounits"], capture_output=True, text=True,
                        timeout=10).stdout.splitlines()[0]
                    util, mem = (float(v) for v in line.split(","))
                except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                    continue
                self.samples.append((time.time(), util, mem))
                f.write(f"{time.time():.1f},{util:.0f},{mem:.0f}\n")
                f.flush()

    def mark(self) -> float:
        return time.time()

    def mean_since(self, t0: float) -> dict | None:
        rows = [s for s in self.samples if s[0] >= t0]
        if not rows:
            return None
        return {"util_mean": sum(r[1] for r in rows) / len(rows),
                "util_max": max(r[1] for r in rows), "mem_max_mib": max(r[2] for r in rows),
                "samples": len(rows)}

    def stop(self) -> None:
        self._stop.set()


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", default=str(DEFAULT_FOLDER), help="Imagenette (class folders)")
    p.add_argument("--out", default="runs/imagenette-gpu")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cuda or cpu")
    p.add_argument("--smoke", action="store_true",
                   help="5 train photos at 64 px (one step), 5 test photos, seed 0, first strength "
                        "of each recipe, naive and WCAM: tests the script on CPU")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--recipes", default=",".join(photos.STRENGTHS))
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning recipes' epochs")
    p.add_argument("--kd-epochs", type=int, default=15, help="distillation's epochs (scratch)")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA)")
    p.add_argument("--time-limit", type=float, default=None, metavar="S",
                   help="start no group after S seconds (what finished is kept)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def plan(args) -> list[tuple[int, str, float]]:
    """(seed, recipe, strength) groups: every recipe of a seed before the next seed."""
    seeds = [0] if args.smoke else [int(s) for s in args.seeds.split(",")]
    recipes = args.recipes.split(",")
    for r in recipes:
        if r not in photos.STRENGTHS:
            raise SystemExit(f"unknown recipe {r!r}; known: {', '.join(photos.STRENGTHS)}")
    return [(seed, r, value) for seed in seeds for r in recipes
            for value in photos.STRENGTHS[r][:1 if args.smoke else None]]


def best_epoch_words(meta: dict, epochs: int) -> str:
    best = meta["history"].get("best_epoch")
    if best is None:
        return f"val mAP {meta['history'].get('best_val_mAP', float('nan')):.3f}"
    flag = " (still improving)" if best == epochs and epochs > 1 else ""
    return f"best epoch {best}/{epochs}{flag}"


def summary_rows(results: dict, seed: int, recipe: str, value: float) -> list[dict]:
    """One flat row per model of a group's results."""
    unseen = results.get("photos", {}).get("unseen", {}).get("top1", {})
    rows = []
    for run in results["runs"]:
        g = run["attribution"].get("gradcam", {})
        agree = g.get("agreement", {})
        rows.append({"seed": seed, "recipe": recipe, "strength": value, "run": run["name"],
                     "matching": run["compression"].get("matching"),
                     "top1": run["task"].get("top1"), "top1_unseen": unseen.get(run["name"]),
                     "spearman": agree.get("spearman"), "topk_iou": agree.get("topk_iou"),
                     "bytes": run["cost"]["bytes"], "latency_ms": run["cost"]["latency_ms"],
                     "params": run["cost"]["params"]})
    return rows


def run_group(args, cfg, root, seed, recipe, value, monitor, progress, device) -> dict:
    group = Path(args.out) / f"{recipe}@{value:g}" / f"seed{seed}"
    done = group / "results.json"
    if done.is_file():
        print(f"[{recipe}@{value:g} seed {seed}] finished earlier: {done}", flush=True)
        return json.loads(done.read_text())
    cfg = replace(cfg, epochs=args.kd_epochs if recipe == "kd" else cfg.epochs)
    runs, timings = {}, {}
    for matching in cfg.matchings:
        name = photos.run_name(recipe, value, matching)
        ccfg = photos.compress_config(root, cfg, matching, seed, progress, device, recipe, value)
        t0 = monitor.mark()
        info = photos.run_compress(ccfg, group / name, device, cfg.checkpoint_every)
        info["gpu"] = monitor.mean_since(t0)
        timings[name], runs[name] = info, group / name
        meta = json.loads((group / name / "model.json").read_text())
        gpu = f", GPU {info['gpu']['util_mean']:.0f}% mean" if info["gpu"] else ""
        print(f"[{name} seed {seed}] {info['images_per_s']:.1f} train img/s over "
              f"{info['seconds']:.0f} s{gpu}{' (reused)' if info.get('reused') else ''}; "
              f"{best_epoch_words(meta, info['epochs'])}", flush=True)
    t0 = monitor.mark()
    results, _ = photos.evaluate_runs(root, cfg, runs, seed, progress, device)
    gpu = monitor.mean_since(t0)
    results["photos"].update(preset=asdict(cfg), folder=str(root), train=timings,
                             recipe=recipe, strength=value, evaluate_gpu=gpu)
    stages.write_results(results, done)
    ev = results["photos"]["evaluate"]
    print(f"[{recipe}@{value:g} seed {seed}] evaluated {ev['images']} photos x {ev['models']} "
          f"models at {ev['images_per_s']:.1f} img/s" +
          (f", GPU {gpu['util_mean']:.0f}% mean" if gpu else ""), flush=True)
    print(stages.format_table(results), flush=True)
    return results


def write_summary(out: Path, rows: list, stopped, serve: dict, t_start: float) -> None:
    stages.write_results({"rows": rows, "stopped": stopped, "serve": serve,
                          "wall_seconds": time.perf_counter() - t_start}, out / "summary.json")


def main(argv=None) -> int:
    args = parse(argv)
    device = "cpu" if args.smoke and args.device == "auto" else resolve_device(args.device)
    cfg = SMOKE if args.smoke else photos.GPU
    cfg = replace(cfg, epochs=1 if args.smoke else args.epochs, amp=args.amp)
    if args.smoke:
        args.kd_epochs = 1
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        print(f"device {torch.cuda.get_device_name()}", flush=True)
    root = photos.check_inputs(args.folder, cfg.teacher)
    out, t_start = Path(args.out), time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    monitor = GpuMonitor(out / "gpu.csv")
    serve = photos.serving_rate(photos.data_config(root, cfg, 0, device))
    print(f"photo cache: serves {serve['images_per_s']:.0f} train img/s on {serve['device']} "
          "(crop + flip + float, no model)", flush=True)
    rows, stopped = [], None
    try:
        for seed, recipe, value in plan(args):
            if args.time_limit is not None and time.perf_counter() - t_start > args.time_limit:
                stopped = f"time limit {args.time_limit:g} s reached before {recipe}@{value:g} " \
                          f"seed {seed}"
                print(stopped, flush=True)
                break
            results = run_group(args, cfg, root, seed, recipe, value, monitor,
                                not args.no_progress, device)
            rows += summary_rows(results, seed, recipe, value)
            write_summary(out, rows, stopped, serve, t_start)
    finally:
        monitor.stop()
    write_summary(out, rows, stopped, serve, t_start)
    print(f"{len(rows)} model rows in {out / 'summary.json'} "
          f"({time.perf_counter() - t_start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
