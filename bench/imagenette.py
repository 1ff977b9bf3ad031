"""Issue 16's experiment: every recipe naive / AT / WCAM on Imagenette, 3 seeds, one script.

    python bench/imagenette.py --folder ../shared/data/imagenette --out runs/imagenette-gpu \
        --device cuda                       # the GPU preset (pipeline.photos.GPU)
    python bench/imagenette.py --preset cpu --recipes unstructured,quantization \
        --tune-lrs 1e-3,3e-4,1e-4 --tune 10,100,1000 --out runs/imagenette-cpu
                                  # the first CPU preset (photos.EARLIER_CPU + AT), 2 cores
    python bench/imagenette.py --smoke --out /tmp/imagenette-smoke   # a handful of photos, CPU

On the val photos held out of train/ (seed 0, each recipe's first strength in the run: the first
of ``--strengths``, else the issue's; the test split is never read), ``--tune-lrs LRS`` first
chooses each fine-tuning recipe's lr (and with ``--tune-bn`` its BatchNorm mode, kept,
recalibrated or trained: ``photos.BN_MODES``; :func:`choose_lr`), then ``--tune LAMS`` its AT
and WCAM lambda (:func:`tune`; ``--lambdas-from S`` reuses those chosen at strength S); the
groups run at the chosen values. Pruning recipes re-estimate BatchNorm's statistics after the
surgery by default (``photos.batchnorm_mode``).

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
from attrpreserve.report.words import gap_entry

DEFAULT_FOLDER = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette"
# 64 px: Lite0's last maps are 2 x 2 (at 32 px they are 1 x 1, and matching has no gradient)
SMOKE = photos.with_overrides(photos.GPU, size=64, n_train=5, n_val=5, n_test=5, epochs=1,
                              batch_size=5, checkpoint_every=None, unseen=False,
                              matchings=("none", "wcam"), unstructured_rounds=1)
PRESETS = {"gpu": photos.GPU,
           "cpu": replace(photos.EARLIER_CPU, matchings=("none", "at", "wcam"))}


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
    p.add_argument("--preset", choices=("gpu", "cpu"), default="gpu",
                   help="gpu: photos.GPU (every train photo at 224 px); cpu: "
                        "photos.EARLIER_CPU (800 photos at 128 px, 2 epochs: sized for 2 "
                        "cores) with an AT arm")
    p.add_argument("--tune", default=None, metavar="LAMS",
                   help="before the groups, choose each recipe's AT and WCAM lambda among LAMS "
                        "(comma list) on the val photos held out of train/ (seed 0, the "
                        "recipe's first strength in this run); default: the preset's lambdas")
    p.add_argument("--lambdas-from", type=float, default=None, metavar="S",
                   help="instead of --tune: the AT and WCAM lambdas chosen earlier at strength S "
                        "of the same recipe (OUT/RECIPE@S/tune/chosen.json)")
    p.add_argument("--tune-lrs", default=None, metavar="LRS",
                   help="first choose each fine-tuning recipe's lr among LRS (comma list) by the "
                        "naive run's val top-1 (seed 0, first strength in this run); default: "
                        "the preset's")
    p.add_argument("--tune-bn", default=None, metavar="MODES",
                   help="with --tune-lrs, also choose BatchNorm's mode while fine-tuning among "
                        "MODES (comma list of kept, recalibrated, trained: the teacher's "
                        "statistics frozen; re-estimated after the surgery, then frozen; "
                        "re-estimated, then trained); default: the preset's mode only")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--recipes", default=",".join(photos.STRENGTHS))
    p.add_argument("--strengths", default=None, metavar="VALUES",
                   help="comma list replacing the issue's strengths of every recipe named")
    p.add_argument("--matchings", default=None, metavar="NAMES",
                   help="comma list replacing the preset's matchings (none,at,wcam); "
                        "'--recipes unstructured --strengths 0 --matchings none' is the control: "
                        "the teacher fine-tuned like every run, nothing compressed")
    p.add_argument("--epochs", type=int, default=None,
                   help="fine-tuning recipes' epochs (default: the preset's, gpu 3, cpu 2)")
    p.add_argument("--kd-epochs", type=int, default=15, help="distillation's epochs (scratch)")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA)")
    p.add_argument("--time-limit", type=float, default=None, metavar="S",
                   help="start no group after S seconds (what finished is kept)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: summarise (and plot, with --figures) the groups that "
                        "finished, with a markdown table of means over seeds")
    p.add_argument("--figures", metavar="DIR", default=None,
                   help="write one figure per recipe (real-photos-RECIPE.png) into DIR")
    args = p.parse_args(argv)
    bad = set((args.tune_bn or "").split(",")) - set(photos.BN_MODES) - {""}
    if bad:
        p.error(f"--tune-bn: unknown mode {', '.join(sorted(bad))}; known: "
                f"{', '.join(photos.BN_MODES)}")
    return args


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def plan(args) -> list[tuple[int, str, float]]:
    """(seed, recipe, strength) groups: every recipe of a seed before the next seed."""
    seeds = [0] if args.smoke else [int(s) for s in args.seeds.split(",")]
    recipes = args.recipes.split(",")
    for r in recipes:
        if r not in photos.STRENGTHS:
            raise SystemExit(f"unknown recipe {r!r}; known: {', '.join(photos.STRENGTHS)}")
    return [(seed, r, value) for seed in seeds for r in recipes
            for value in recipe_strengths(args, r)]


def recipe_strengths(args, recipe: str) -> list[float]:
    """``recipe``'s strengths in this run: ``--strengths``, else the issue's (the first only
    with ``--smoke``). Tuning runs at the first of them."""
    if args.strengths:
        return floats(args.strengths)
    return list(photos.STRENGTHS[recipe][:1 if args.smoke else None])


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
        rho = gap_entry(run, "spearman")
        rows.append({"seed": seed, "recipe": recipe, "strength": value, "run": run["name"],
                     "matching": run["compression"].get("matching"),
                     "top1": run["task"].get("top1"), "top1_unseen": unseen.get(run["name"]),
                     "spearman": agree.get("spearman"), "topk_iou": agree.get("topk_iou"),
                     "bytes": run["cost"]["bytes"], "latency_ms": run["cost"]["latency_ms"],
                     "params": run["cost"]["params"],
                     "rho_recovered": rho and (rho["recovered"], rho["ci_low"], rho["ci_high"],
                                               rho["status"])})
    return rows


def recipe_cfg(args, cfg, recipe: str, chosen: dict | None = None) -> photos.PhotosConfig:
    """The preset for ``recipe``: distillation's epochs, and the lr and BatchNorm mode
    (``choose_lr``) and lambdas (``tune``) chosen for it."""
    chosen = chosen or {}
    cfg = replace(cfg, epochs=args.kd_epochs if recipe == "kd" else cfg.epochs)
    if "lr" in chosen:
        bn = chosen["lr"].get("bn", photos.batchnorm_mode(cfg, recipe))  # older lr.json: none
        cfg = replace(cfg, recipe_lr={**cfg.recipe_lr, recipe: chosen["lr"]["lr"]},
                      recipe_bn={**cfg.recipe_bn, recipe: bn})
    lams = {"at_lam": chosen.get("at"), "lam": chosen.get("wcam")}
    return photos.with_overrides(cfg, **{k: v["lam"] for k, v in lams.items() if v})


def choose_lr(args, cfg, root, recipe, lrs, progress, device, bns=None) -> dict:
    """The fine-tuning lr and BatchNorm mode (``photos.BN_MODES``) of ``recipe``'s naive run,
    chosen on the val photos (seed 0, first strength of the run) over ``lrs`` x ``bns``: the
    best top-1, a tie within one photo going to the larger lr (more room for matching to act),
    then to the earlier mode in ``bns`` (default: the preset's mode). The chosen run becomes
    seed 0's naive group run. Writes (and on rerun reads) ``OUT/RECIPE@S/tune/lr.json``."""
    value = recipe_strengths(args, recipe)[0]
    out = Path(args.out) / f"{recipe}@{value:g}" / "tune"
    done = out / "lr.json"
    if done.is_file():
        return json.loads(done.read_text())
    naive, paths = photos.run_name(recipe, value, "none"), {}
    bns = bns or (photos.batchnorm_mode(cfg, recipe),)
    grid = [(lr, bn) for lr in sorted(lrs, reverse=True) for bn in bns]  # preference order
    for lr, bn in grid:
        c = replace(cfg, recipe_lr={**cfg.recipe_lr, recipe: lr},
                    recipe_bn={**cfg.recipe_bn, recipe: bn})
        paths[lr, bn] = out / f"{naive}@lr{lr:g}-bn{bn}"
        photos.run_compress(photos.compress_config(root, c, "none", 0, progress, device, recipe,
                                                   value), paths[lr, bn], device,
                            cfg.checkpoint_every)
    models = stages.load_models({_key(*k): path for k, path in paths.items()}, device)
    res = photos.top1_on(models, photos.data_config(root, cfg, 0, device), "val")
    top1 = {k: res["top1"][_key(*k)] for k in grid}
    lr, bn = next(k for k in grid if top1[k] >= max(top1.values()) - 1.5 / res["n"])
    seed0 = Path(args.out) / f"{recipe}@{value:g}" / "seed0" / naive
    if not seed0.exists():
        shutil.copytree(paths[lr, bn], seed0)
    chosen = {"lr": lr, "bn": bn, "val_top1": {_key(*k): top1[k] for k in grid},
              "n_val": res["n"]}
    done.write_text(json.dumps(chosen, indent=1))
    print(f"[tune {recipe}@{value:g}] lr and BatchNorm: {chosen}", flush=True)
    return chosen


def _key(lr: float, bn: str) -> str:
    return f"{lr:g} {bn}"


def agreement_recovered(run: dict) -> float:
    """Share of the teacher-minus-naive Spearman-agreement gap a matched run recovers (all
    pairs, pooled); 0 where the gap's interval includes 0."""
    rho = gap_entry(run, "spearman") or {}
    return rho["recovered"] if rho.get("status") == "ok" else 0.0


def tune(args, cfg, root, recipe, lams, progress, device) -> dict:
    """AT's and WCAM's lambda for ``recipe``, chosen on the val photos (held out of train/;
    the test split is never read) at seed 0 and the run's first strength: the lambda whose
    run recovers the largest share of the Spearman-agreement gap (:func:`agreement_recovered`)
    among those whose val top-1 stays >= naive - 1 point. The naive run is seed 0's group run.
    Writes (and on rerun reads) ``OUT/RECIPE@S/tune/chosen.json``."""
    value = recipe_strengths(args, recipe)[0]
    out = Path(args.out) / f"{recipe}@{value:g}" / "tune"
    done = out / "chosen.json"
    if done.is_file():
        return json.loads(done.read_text())
    naive = photos.run_name(recipe, value, "none")
    runs = {naive: Path(args.out) / f"{recipe}@{value:g}" / "seed0" / naive}
    photos.run_compress(photos.compress_config(root, cfg, "none", 0, progress, device, recipe,
                                               value), runs[naive], device, cfg.checkpoint_every)
    arms = [m for m in ("at", "wcam") if m in cfg.matchings]
    for matching in arms:
        for lam in lams:
            c = replace(cfg, **{"at_lam" if matching == "at" else "lam": lam})
            name = f"{photos.run_name(recipe, value, matching)}@{lam:g}"
            ccfg = photos.compress_config(root, c, matching, 0, progress, device, recipe, value)
            photos.run_compress(ccfg, out / name, device, cfg.checkpoint_every)
            runs[name] = out / name
            print(f"[tune {name}] trained", flush=True)
    results, _ = photos.evaluate_runs(root, cfg, runs, 0, progress, device, split="val")
    stages.write_results(results, out / "results.json")
    rows = {r["name"]: r for r in results["runs"]}
    floor = rows[naive]["task"]["top1"] - 0.01
    chosen = {}
    for matching in arms:
        scored = [(agreement_recovered(rows[n]), rows[n]["task"]["top1"], lam) for lam in lams
                  for n in [f"{photos.run_name(recipe, value, matching)}@{lam:g}"]]
        for share, top1, lam in scored:
            print(f"[tune {recipe}@{value:g}] {matching} lambda {lam:g}: val top-1 {top1:.3f} "
                  f"(naive {floor + 0.01:.3f}), rho gap recovered {share:.0%}", flush=True)
        ok = [t for t in scored if t[1] >= floor] or scored
        share, top1, lam = max(ok)
        chosen[matching] = {"lam": lam, "recovered": share, "top1": top1}
    chosen["naive_top1"], chosen["split"] = floor + 0.01, "val"
    done.write_text(json.dumps(chosen, indent=1))
    print(f"[tune {recipe}@{value:g}] chosen: {chosen}", flush=True)
    return chosen


def chosen_lambdas(out: Path, recipe: str, value: float) -> dict:
    """The lambdas :func:`tune` chose for ``recipe`` at strength ``value`` (``--lambdas-from``)."""
    path = out / f"{recipe}@{value:g}" / "tune" / "chosen.json"
    if not path.is_file():
        raise SystemExit(f"--lambdas-from {value:g}: no {path}; tune {recipe} at {value:g} first "
                         f"(--strengths {value:g} --tune LAMS)")
    chosen = json.loads(path.read_text())
    return {m: chosen[m] for m in ("at", "wcam") if m in chosen}


def run_group(args, cfg, root, seed, recipe, value, monitor, progress, device) -> dict:
    group = Path(args.out) / f"{recipe}@{value:g}" / f"seed{seed}"
    done = group / "results.json"
    if done.is_file():
        print(f"[{recipe}@{value:g} seed {seed}] finished earlier: {done}", flush=True)
        return json.loads(done.read_text())
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


FIGURE_METRICS = (("spearman", "Grad-CAM agreement (Spearman)"),
                  ("top1", "top-1, Imagenette val/"), ("top1_unseen", "top-1, unseen photos"))


def figures(rows: list[dict], folder: Path) -> list[Path]:
    """One PNG per recipe (``folder/real-photos-RECIPE.png``): each of :data:`FIGURE_METRICS`
    against strength, one line per matching through the mean over seeds, bars from the lowest
    to the highest seed, the teacher dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from attrpreserve.report.figures import MATCHING_COLOURS
    from attrpreserve.report.words import matching_words

    paths = []
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        mine = [r for r in rows if r["recipe"] == recipe]
        runs = [r for r in mine if r["run"] != "teacher"]
        fig, axes = plt.subplots(1, len(FIGURE_METRICS), figsize=(4 * len(FIGURE_METRICS), 3))
        for ax, (key, label) in zip(axes, FIGURE_METRICS):
            teacher = [r[key] for r in mine if r["run"] == "teacher" and r[key] is not None]
            if teacher:
                ax.axhline(sum(teacher) / len(teacher), color="k", ls="--", lw=1,
                           label="teacher")
            for m in ("none", "at", "wcam"):
                pts = sorted({r["strength"] for r in runs if r["matching"] == m})
                vals = [[r[key] for r in runs if r["matching"] == m and r["strength"] == x
                         and r[key] is not None] for x in pts]
                xs = [x for x, v in zip(pts, vals) if v]
                vals = [v for v in vals if v]
                if not xs:
                    continue
                mean = [sum(v) / len(v) for v in vals]
                err = [[a - min(v) for a, v in zip(mean, vals)],
                       [max(v) - a for a, v in zip(mean, vals)]]
                ax.errorbar(xs, mean, yerr=err, fmt="o-", ms=4, capsize=3,
                            color=MATCHING_COLOURS[m],
                            label=f"{matching_words(m)} ({len(vals[0])} seeds)")
            ax.set_title(f"{recipe}: {label}", fontsize=9.5)
            ax.set_xlabel("strength (sparsity, filter share, bits, width)", fontsize=8)
            ax.set_xticks(sorted({r["strength"] for r in mine}))
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8, frameon=False)
        fig.tight_layout()
        path = folder / f"real-photos-{recipe}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def markdown_table(rows: list[dict]) -> str:
    """Means over seeds per (recipe, strength, run) and, per matched run, each seed's share of
    the Spearman-agreement gap recovered with its 95% interval."""
    lines = ["| run | runs | top-1 val/ | top-1 unseen | Spearman | top-10% IoU | bytes | "
             "ms | rho gap recovered per seed (95% CI) |", "|" + " --- |" * 9]
    groups = {}
    for row in rows:  # the teacher: one row over every group it was evaluated in
        key = ("", 0, "teacher") if row["run"] == "teacher" else \
            (row["recipe"], row["strength"], row["run"])
        groups.setdefault(key, []).append(row)

    def mean(group, key, fmt="{:.3f}"):
        vals = [r[key] for r in group if r[key] is not None]
        return fmt.format(sum(vals) / len(vals)) if vals else "-"

    for (recipe, value, run), group in groups.items():
        shares = [r["rho_recovered"] for r in group if r["rho_recovered"]]
        gap = " / ".join(f"{v:.0%} ({lo:.0%}, {hi:.0%})" if status == "ok" else status
                         for v, lo, hi, status in shares) or "-"
        lines.append(f"| {run} | {len(group)} | {mean(group, 'top1')} | "
                     f"{mean(group, 'top1_unseen')} | {mean(group, 'spearman')} | "
                     f"{mean(group, 'topk_iou')} | {mean(group, 'bytes', '{:,.0f}')} | "
                     f"{mean(group, 'latency_ms', '{:.1f}')} | {gap} |")
    return "\n".join(lines)


def write_summary(out: Path, rows: list, stopped, serve: dict, t_start: float) -> None:
    stages.write_results({"rows": rows, "stopped": stopped, "serve": serve,
                          "wall_seconds": time.perf_counter() - t_start}, out / "summary.json")


def main(argv=None) -> int:
    args = parse(argv)
    device = "cpu" if args.smoke and args.device == "auto" else resolve_device(args.device)
    cfg = SMOKE if args.smoke else PRESETS[args.preset]
    cfg = photos.with_overrides(cfg, epochs=1 if args.smoke else args.epochs, amp=args.amp,
                                matchings=args.matchings and tuple(args.matchings.split(",")))
    if args.smoke:
        args.kd_epochs = 1
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        print(f"device {torch.cuda.get_device_name()}", flush=True)
    root = photos.check_inputs(args.folder, cfg.teacher)
    out, t_start = Path(args.out), time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    monitor = GpuMonitor(out / "gpu.csv")
    serve = {} if args.report_only else \
        photos.serving_rate(photos.data_config(root, cfg, 0, device))
    if serve:
        print(f"photo cache: serves {serve['images_per_s']:.0f} train img/s on "
              f"{serve['device']} (crop + flip + float, no model)", flush=True)
    rows, stopped, chosen = [], None, {r: {} for r in args.recipes.split(",")}
    try:
        for recipe, settings in chosen.items():
            if args.report_only:
                break
            if args.tune_lrs and recipe != "kd":
                settings["lr"] = choose_lr(args, recipe_cfg(args, cfg, recipe), root, recipe,
                                           floats(args.tune_lrs), not args.no_progress, device,
                                           args.tune_bn and tuple(args.tune_bn.split(",")))
            if args.lambdas_from is not None:
                settings.update(chosen_lambdas(Path(args.out), recipe, args.lambdas_from))
            elif args.tune:
                settings.update(tune(args, recipe_cfg(args, cfg, recipe, settings), root, recipe,
                                     floats(args.tune), not args.no_progress, device))
        for seed, recipe, value in plan(args):
            if args.time_limit is not None and time.perf_counter() - t_start > args.time_limit:
                stopped = f"time limit {args.time_limit:g} s reached before {recipe}@{value:g} " \
                          f"seed {seed}"
                print(stopped, flush=True)
                break
            if args.report_only:
                done = out / f"{recipe}@{value:g}" / f"seed{seed}" / "results.json"
                if done.is_file():
                    rows += summary_rows(json.loads(done.read_text()), seed, recipe, value)
                continue
            results = run_group(args, recipe_cfg(args, cfg, recipe, chosen[recipe]), root,
                                seed, recipe, value, monitor, not args.no_progress, device)
            rows += summary_rows(results, seed, recipe, value)
            write_summary(out, rows, stopped, serve, t_start)
    finally:
        monitor.stop()
    write_summary(out, rows, stopped, serve, t_start)
    if args.figures:
        for path in figures(rows, Path(args.figures)):
            print(f"wrote {path}", flush=True)
    if args.report_only:
        print(markdown_table(rows), flush=True)
    print(f"{len(rows)} model rows in {out / 'summary.json'} "
          f"({time.perf_counter() - t_start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
