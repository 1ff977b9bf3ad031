"""The demo over several seeds: teacher vs naive vs AT vs WCAM per recipe, gap recovered.

    python bench/demo_seeds.py --seeds 0 1 2 --out runs/bench-demo          # quick (kd only)
    python bench/demo_seeds.py --full --seeds 0 1 2 --out runs/bench-full   # every recipe
    python bench/demo_seeds.py --recipes kd --matchings none wcam --lam 10 \
        --reuse runs/bench-demo --out runs/tune/kd-lam10      # tuning: only WCAM retrains

For each seed it runs ``attrpreserve demo`` and prints its table and wall time; then, for every
recipe and matching, the fraction of the teacher-minus-naive gap recovered (1.0 = back to the
teacher; None = naive lost under 2 points) in Grad-CAM pointing game (paper mode), AUC and energy
pointing game, the mAP difference to naive, and the Spearman agreement with the teacher; means
over seeds. A finished seed (its results.json exists) is read back, not recomputed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import shutil
from dataclasses import replace
from pathlib import Path

from attrpreserve.pipeline import FULL, QUICK, demo, format_table

METRICS = ("pointing_game", "auc", "energy_pg")
MIN_GAP = 0.02  # the "naive loses at least 2 points"; smaller gaps make ratios noise


def recovered(rows: dict, naive: str, run: str, metric: str) -> float | None:
    """``(run - naive) / (teacher - naive)`` of a Grad-CAM metric; None when naive lost less
    than ``MIN_GAP``."""
    get = lambda name: rows[name]["attribution"]["gradcam"][metric]  # noqa: E731
    gap = get("teacher") - get(naive)
    return None if gap < MIN_GAP else (get(run) - get(naive)) / gap


def seed_summary(res: dict) -> dict:
    """Gap recovered, mAP change and agreement of every matched run against its naive run."""
    rows = {r["name"]: r for r in res["runs"]}
    out = {}
    for name in rows:
        if "+" not in name:
            continue
        naive = name.split("+")[0]
        out.update({f"{name}:{m}": recovered(rows, naive, name, m) for m in METRICS})
        out[f"{name}:mAP-naive"] = rows[name]["task"]["mAP"] - rows[naive]["task"]["mAP"]
    for name, row in rows.items():
        if name != "teacher":
            out[f"{name}:spearman"] = row["attribution"]["gradcam"]["agreement"]["spearman"]
            out[f"{name}:mAP-teacher"] = row["task"]["mAP"] - rows["teacher"]["task"]["mAP"]
    return out


def mean_table(all_results: list[dict]) -> str:
    """Per run, the mean over seeds of mAP, Grad-CAM PG (paper mode), AUC, Spearman with the
    teacher, non-zero parameters, bytes of what ships and CPU latency (a markdown table)."""
    cols = ("mAP", "PG", "AUC", "Spearman", "non-zero params", "bytes", "ms")
    lines = ["| run | " + " | ".join(cols) + " |", "|" + " --- |" * (len(cols) + 1)]
    for name in [r["name"] for r in all_results[0]["runs"]]:
        rows = [next(r for r in res["runs"] if r["name"] == name) for res in all_results]
        g = [r["attribution"]["gradcam"] for r in rows]

        def mean(values):
            values = [v for v in values if v is not None]
            return statistics.mean(values) if values else None

        vals = (mean(r["task"]["mAP"] for r in rows), mean(x["pointing_game"] for x in g),
                mean(x["auc"] for x in g),
                mean(x.get("agreement", {}).get("spearman") for x in g),
                mean(r["cost"]["nonzero_params"] for r in rows),
                mean(r["cost"]["bytes"] for r in rows), mean(r["cost"]["latency_ms"] for r in rows))
        cells = ["-" if v is None else f"{v:,.0f}" if i in (4, 5) else f"{v:.3f}" if i < 4
                 else f"{v:.2f}" for i, v in enumerate(vals)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reuse_stages(source: Path, out: Path) -> None:
    """Copy ``source``'s stage folders into ``out`` (``demo`` reuses those whose config matches)."""
    for stage in source.iterdir() if source.is_dir() else ():
        if stage.is_dir() and not (out / stage.name).exists():
            shutil.copytree(stage, out / stage.name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--full", action="store_true", help="the full demo (every recipe)")
    ap.add_argument("--out", default="runs/bench-demo")
    ap.add_argument("--recipes", nargs="+", help="override the preset's recipes")
    ap.add_argument("--matchings", nargs="+", help="override the preset's matchings")
    ap.add_argument("--lam", type=float, help="WCAM's weight (default: the demo's 10)")
    ap.add_argument("--drop", type=float, help="WCAM drop rate (default: the demo's 0.3)")
    ap.add_argument("--reuse", metavar="DIR",
                    help="copy the stages of DIR/seedN first; a copied stage whose settings "
                         "differ from this run's is retrained, the others are reused")
    args = ap.parse_args()
    overrides = {k: (tuple(v) if isinstance(v, list) else v) for k, v in
                 (("recipes", args.recipes), ("matchings", args.matchings), ("lam", args.lam),
                  ("drop", args.drop)) if v is not None}
    cfg = replace(FULL if args.full else QUICK, **overrides)
    summary, all_results = [], []
    for seed in args.seeds:
        path = Path(args.out) / f"seed{seed}" / "results.json"
        if path.is_file():
            res = json.loads(path.read_text())
        else:
            if args.reuse:
                reuse_stages(Path(args.reuse) / f"seed{seed}", path.parent)
            res = demo(path.parent, seed=seed, progress=False, cfg=cfg)
        print(f"\nseed {seed} ({res['wall_seconds']:.0f} s)\n{format_table(res)}", flush=True)
        summary.append({"seed": seed, "seconds": res["wall_seconds"], **seed_summary(res)})
        all_results.append(res)
    print(f"\nmean over seeds {args.seeds}\n{mean_table(all_results)}")
    print("\nmean over seeds (gap recovered = (run - naive) / (teacher - naive); - = naive lost "
          "under 2 points)")
    for key in summary[0]:
        if key == "seed":
            continue
        vals = [s.get(key) for s in summary if s.get(key) is not None]
        per_seed = ", ".join("-" if s.get(key) is None else f"{s[key]:.2f}" for s in summary)
        mean = f"{statistics.mean(vals):.2f}" if vals else "-"
        print(f"  {key:34s} mean {mean:>7s}   per seed: {per_seed}")


if __name__ == "__main__":
    main()
