"""Quick demo over several seeds: teacher vs naive vs AT vs WCAM distillation, gap recovered.

    python bench/demo_seeds.py --seeds 0 1 2 --out runs/bench-demo

For each seed it runs ``attrpreserve demo --quick`` and prints, per run, mAP, Grad-CAM pointing
game (paper mode), AUC and agreement with the teacher; then the fraction of the teacher-minus-naive
gap that AT and WCAM recover (1.0 = back to the teacher), mean over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from attrpreserve.pipeline import demo, format_table

METRICS = ("pointing_game", "pointing_game_std", "auc", "energy_pg")


def recovered(res: dict, run: str, metric: str) -> float | None:
    rows = {r["name"]: r for r in res["runs"]}
    get = lambda name: rows[name]["attribution"]["gradcam"][metric]  # noqa: E731
    gap = get("teacher") - get("kd")
    return None if gap <= 0 else (get(run) - get("kd")) / gap


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/bench-demo")
    args = ap.parse_args()
    summary = []
    for seed in args.seeds:
        path = Path(args.out) / f"seed{seed}" / "results.json"
        if path.is_file():  # resume: a finished seed is not recomputed
            res = json.loads(path.read_text())
        else:
            res = demo(path.parent, quick=True, seed=seed, progress=False)
        print(f"\nseed {seed} ({res['wall_seconds']:.0f} s)\n{format_table(res)}")
        rows = {r["name"]: r for r in res["runs"]}
        summary.append({
            "seed": seed, "seconds": res["wall_seconds"],
            **{f"{run}:{m}": recovered(res, run, m) for run in ("kd+at", "kd+wcam") for m in METRICS},
            **{f"{run}:mAP-naive": rows[run]["task"]["mAP"] - rows["kd"]["task"]["mAP"]
               for run in ("kd+at", "kd+wcam")},
        })
    print("\nmean over seeds (gap recovered = (run - naive) / (teacher - naive); None = no gap)")
    for key in summary[0]:
        if key == "seed":
            continue
        vals = [s[key] for s in summary if s[key] is not None]
        per_seed = ", ".join("-" if s[key] is None else f"{s[key]:.2f}" for s in summary)
        mean = f"{statistics.mean(vals):.2f}" if vals else "-"
        print(f"  {key:28s} mean {mean:>6s}   per seed: {per_seed}")


if __name__ == "__main__":
    main()
