"""Choose each recipe's demo strength on the VALIDATION split (issue 15, item 3).

    python bench/demo_strengths.py --teacher runs/demo/teacher --out runs/strengths
    python bench/demo_strengths.py --family vit --teacher runs/vit/teacher --recipes structured \
        --out runs/vit/strengths      # the ViT demo's head pruning

For every recipe but distillation (distillation's strength is the width divisor, swept the same
way with --recipes kd), each strength of ``DemoConfig.sweep_strengths`` is compressed naive and
with WCAM (``pipeline.sweep``, finished points reused) and evaluated against the teacher on the
validation split. A strength shows the paper's premise when the naive model keeps mAP within 2
points of the teacher *and* its explanations moved: the teacher-minus-naive gap in pointing game
or Spearman agreement on all ground-truth pairs has a 95% interval above 0 (read from
``gap_recovered``, docs/metrics.md). The chosen strength is the strongest compression that does
both; a recipe where none does is reported as such. The test split is never read.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from attrpreserve.pipeline import DEMOS, FULL, sweep
from attrpreserve.report.words import PREMISE_MAP_POINTS

MOVED_BY = ("pointing_game", "spearman")


def premise(results: dict) -> dict[str, dict]:
    """Per naive run of a sweep: ``{mAP, teacher_mAP, kept, moved: [metrics], both}``."""
    runs = {r["name"]: r for r in results["runs"]}
    teacher = runs["teacher"]["task"]["mAP"]
    out = {}
    for name, run in runs.items():
        if "+" not in name:
            continue
        naive = run["attribution"]["gradcam"]["gap_recovered"]
        gaps = naive["all"]["pooled"]
        moved = [m for m in MOVED_BY if gaps.get(m) and gaps[m]["status"] == "ok"
                 and (gaps[m]["gap_ci_low"] or 0) > 0]
        n_map = runs[naive["naive"]]["task"]["mAP"]
        kept = n_map >= teacher - PREMISE_MAP_POINTS
        out[naive["naive"]] = {"mAP": n_map, "teacher_mAP": teacher, "kept": kept,
                               "moved": moved, "both": kept and bool(moved)}
    return out


def choose(points: dict[str, dict], strengths) -> dict:
    """The strongest strength whose naive run shows the premise (sweep order: weakest first),
    else ``{"strength": None}`` with every point's numbers."""
    ok = [(s, p) for s in strengths for n, p in points.items()
          if n.endswith(f"@{s:g}") and p["both"]]
    if not ok:
        return {"strength": None, "points": points}
    strength, point = ok[-1]
    return {"strength": strength, **point}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True, help="the demo teacher's checkpoint folder")
    ap.add_argument("--recipes", nargs="+", default=["structured", "unstructured",
                                                     "quantization"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-val", type=int, default=FULL.n_val)
    ap.add_argument("--n-train", type=int, default=FULL.compress_n_train,
                    help="train each run on the first N training images (default the full "
                         f"demo's {FULL.compress_n_train})")
    ap.add_argument("--epochs", type=int, help="fine-tuning / distillation epochs (default the "
                    f"full demo's: {FULL.finetune_epochs} / {FULL.student_epochs})")
    ap.add_argument("--lr", type=float, help="fine-tuning lr (default the preset's)")
    ap.add_argument("--family", choices=sorted(DEMOS),
                    help="the demo whose settings the runs take (default: the full VGG demo's; "
                         "vit: the ViT demo's)")
    ap.add_argument("--out", default="runs/strengths")
    args = ap.parse_args()
    preset = DEMOS[args.family] if args.family else FULL
    cfg = replace(preset, compress_n_train=args.n_train, **(
        {"finetune_epochs": args.epochs, "student_epochs": args.epochs} if args.epochs else {}),
        **({"finetune_lr": args.lr} if args.lr else {}))
    chosen = {}
    for recipe in args.recipes:
        strengths = (2.0, 4.0, 8.0) if recipe == "kd" else cfg.sweep_strengths[recipe]
        base = cfg.compress_cfg(Path(args.teacher), recipe, "wcam", args.seed, False)
        results = sweep(base, strengths, args.out, ("none", "wcam"), cfg.unstructured_rounds,
                        {"n_val": args.n_val}, split="val", seed=args.seed, progress=False)
        chosen[recipe] = choose(premise(results), strengths)
        print(recipe, json.dumps(chosen[recipe]), flush=True)
    path = Path(args.out) / "chosen.json"
    path.write_text(json.dumps(chosen, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
