"""The demo over several seeds: teacher vs naive vs AT vs WCAM per recipe, gap recovered, and
issue 15's targets checked.

    python bench/demo_seeds.py --seeds 0 1 2 --out runs/bench-demo   # quick (filter pruning)
    python bench/demo_seeds.py --full --seeds 0 1 2 --out runs/bench-full   # every recipe
    python bench/demo_seeds.py --family vit --seeds 0 1 2 --out runs/bench-vit  # the ViT demo
    python bench/demo_seeds.py --matchings none wcam --lam 1e5 --drop 0.3 \
        --reuse runs/bench-demo --out runs/tune/s-lam1e5      # tuning: only WCAM retrains
    python bench/demo_seeds.py --family vit --set input_map=input_x_gradient --lam 1000 \
        --reuse runs/bench-vit --out runs/bench-vit-input    # another DemoConfig setting

For each seed it runs ``attrpreserve demo`` and prints its table and wall time; then, per
explainer, recipe and matched run, what results.json's ``gap_recovered`` says on the all-pairs
set (the same pairs for every model; docs/metrics.md): the share of the teacher-minus-naive gap
recovered in pointing game, AUC and Spearman agreement with its 95% bootstrap interval, or "no
gap" where the gap's own interval includes 0; the mAP difference to naive; means over seeds.
Finally the targets: where naive compression moved the explanations (a gap in every seed), WCAM
recovers >= 80% of the pointing-game and AUC gap (mean over seeds) with every seed's lower bound
>= 50%, keeps mAP >= naive - 1 point, and raises Spearman agreement over naive with an interval
excluding 0. A finished seed (its results.json exists) is read back, not recomputed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import shutil
from dataclasses import replace
from pathlib import Path

from attrpreserve.fileio import atomic_write_text
from attrpreserve.pipeline import DEMOS, FULL, demo, format_table
from attrpreserve.pipeline.experiments import demo_setting
from attrpreserve.report.words import gap_entry

METRICS = ("pointing_game", "auc", "spearman")
TARGET_SHARE, TARGET_LOW, MAP_SLACK = 0.8, 0.5, 0.01


def gap(run: dict, explainer: str, metric: str) -> dict | None:
    """The run's all-pairs, pooled ``gap_recovered`` entry of ``metric`` (None if absent)."""
    return gap_entry(run, metric, explainer)


def seed_summary(res: dict) -> dict:
    """``{(explainer, run, metric): gap entry}`` plus ``(run, "mAP-naive")`` differences."""
    rows = {r["name"]: r for r in res["runs"]}
    out = {}
    for name, row in rows.items():
        if "+" not in name:
            continue
        naive = name.split("+")[0]
        out[(name, "mAP-naive")] = row["task"]["mAP"] - rows[naive]["task"]["mAP"]
        for e in row["attribution"]:
            for m in METRICS:
                out[(e, name, m)] = gap(row, e, m)
    return out


def targets(summary: list[dict]) -> list[str]:
    """Issue 15's targets per (explainer, WCAM run), one line each."""
    lines = []
    keys = sorted({k[:2] for s in summary for k in s if len(k) == 3 and k[1].endswith("+wcam")})
    for e, run in keys:
        entries = {m: [s.get((e, run, m)) for s in summary] for m in METRICS}
        moved = all(x and x["status"] != "no gap" for m in ("pointing_game", "auc")
                    for x in entries[m])
        if not moved:
            lines.append(f"  {e:8s} {run:22s} naive did not move PG and AUC in every seed: "
                         "no target")
            continue
        checks = []
        for m in ("pointing_game", "auc"):
            shares = [x["recovered"] for x in entries[m]]
            lows = [x["ci_low"] for x in entries[m]]
            ok = statistics.mean(shares) >= TARGET_SHARE and min(lows) >= TARGET_LOW
            checks.append(f"{m} {statistics.mean(shares):.0%} (lowest bound {min(lows):.0%}) "
                          f"{'ok' if ok else 'MISSED'}")
        maps = [s[(run, "mAP-naive")] for s in summary]
        checks.append(f"mAP-naive {min(maps):+.3f} {'ok' if min(maps) >= -MAP_SLACK else 'MISSED'}")
        rho = [x for x in entries["spearman"] if x]
        up = rho and all(x["gain_ci_low"] is not None and x["gain_ci_low"] > 0 for x in rho)
        checks.append(f"Spearman gain > 0 in every seed {'ok' if up else 'MISSED'}")
        lines.append(f"  {e:8s} {run:22s} " + "; ".join(checks))
    return lines


def mean_table(all_results: list[dict]) -> str:
    """Per run, the mean over seeds of mAP, Grad-CAM pointing game and AUC on all ground-truth
    pairs (the fixed pair set), Spearman with the teacher, non-zero parameters, bytes of what
    ships and CPU latency (a markdown table)."""
    cols = ("mAP", "PG", "AUC", "Spearman", "non-zero params", "bytes", "ms")
    lines = ["| run | " + " | ".join(cols) + " |", "|" + " --- |" * (len(cols) + 1)]
    for name in [r["name"] for r in all_results[0]["runs"]]:
        rows = [next(r for r in res["runs"] if r["name"] == name) for res in all_results]
        g = [r["attribution"]["gradcam"] for r in rows]

        def mean(values):
            values = [v for v in values if v is not None]
            return statistics.mean(values) if values else None

        def all_pairs(x, metric):
            return x["pair_sets"]["all"]["pooled"][metric]["mean"]

        vals = (mean(r["task"]["mAP"] for r in rows),
                mean(all_pairs(x, "pointing_game") for x in g),
                mean(all_pairs(x, "auc") for x in g),
                mean(x.get("agreement", {}).get("spearman") for x in g),
                mean(r["cost"]["nonzero_params"] for r in rows),
                mean(r["cost"]["bytes"] for r in rows), mean(r["cost"]["latency_ms"] for r in rows))
        cells = ["-" if v is None else f"{v:,.0f}" if i in (4, 5) else f"{v:.3f}" if i < 4
                 else f"{v:.2f}" for i, v in enumerate(vals)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reuse_stages(source: Path, out: Path) -> None:
    """Copy ``source``'s stage folders into ``out`` (``demo`` reuses those whose config
    matches); a copied run distilled from ``source``'s teacher names the copied teacher."""
    for stage in source.iterdir() if source.is_dir() else ():
        if stage.is_dir() and not (out / stage.name).exists():
            shutil.copytree(stage, out / stage.name)
            side = out / stage.name / "model.json"
            meta = json.loads(side.read_text()) if side.is_file() else {}
            if meta.get("config", {}).get("teacher") == str(source / "teacher"):
                meta["config"]["teacher"] = str(out / "teacher")
                atomic_write_text(side, json.dumps(meta, indent=2))


def wcam_override(cfg, lam: float | None, drop: float | None):
    """``cfg`` whose WCAM runs use ``lam`` / ``drop`` where given, in the tuned recipes too
    (``DemoConfig.tuned`` would otherwise win over ``cfg.lam`` / ``cfg.drop``)."""
    if lam is None and drop is None:
        return cfg
    tuned = {}
    for recipe, entries in cfg.tuned.items():
        old_lam, old_drop = entries.get("wcam", (cfg.lam, cfg.drop))
        tuned[recipe] = {**entries, "wcam": (old_lam if lam is None else lam,
                                             old_drop if drop is None else drop)}
    return replace(cfg, tuned=tuned)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--full", action="store_true", help="the full demo (every recipe)")
    ap.add_argument("--family", choices=sorted(DEMOS), default="vgg",
                    help="the quick demo of this family (default vgg; vit: the ViT demo)")
    ap.add_argument("--out", default="runs/bench-demo")
    ap.add_argument("--recipes", nargs="+", help="override the preset's recipes")
    ap.add_argument("--matchings", nargs="+", help="override the preset's matchings")
    ap.add_argument("--explainers", nargs="+", help="override the preset's explainers")
    ap.add_argument("--lam", type=float,
                    help="WCAM's weight in every recipe (default: the demo's, tuned per recipe: "
                         "DemoConfig.tuned)")
    ap.add_argument("--drop", type=float,
                    help="WCAM's drop rate in every recipe (default: the demo's, tuned per "
                         "recipe)")
    ap.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                    help="another demo setting (a DemoConfig field, VALUE a Python literal or "
                         "a string; repeatable), e.g. input_map=input_x_gradient")
    ap.add_argument("--reuse", metavar="DIR",
                    help="copy the stages of DIR/seedN first; a copied stage whose settings "
                         "differ from this run's is retrained, the others are reused")
    args = ap.parse_args()
    overrides = {k: (tuple(v) if isinstance(v, list) else v) for k, v in
                 (("recipes", args.recipes), ("matchings", args.matchings), ("lam", args.lam),
                  ("drop", args.drop), ("explainers", args.explainers)) if v is not None}
    if args.full and args.family != "vgg":
        ap.error("--full is the VGG's full demo; drop --family")
    preset = FULL if args.full else DEMOS[args.family]
    try:
        overrides.update(demo_setting(preset, text) for text in args.settings)
    except ValueError as exc:
        ap.error(str(exc))
    cfg = wcam_override(replace(preset, **overrides), args.lam, args.drop)
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
        summary.append({"seed": seed, **seed_summary(res)})
        all_results.append(res)
    print(f"\nmean over seeds {args.seeds}\n{mean_table(all_results)}")
    print("\ngap recovered on all pairs, per seed: share (95% CI) or 'no gap'")
    for key in summary[0]:
        if key == "seed" or len(key) != 3:
            continue
        cells = []
        for s in summary:
            x = s.get(key)
            cells.append("-" if x is None else "no gap" if x["status"] == "no gap"
                         else f"{x['recovered']:.0%} ({x['ci_low']:.0%} to {x['ci_high']:.0%})"
                         if x["recovered"] is not None else x["status"])
        print(f"  {' '.join(key):40s} " + " | ".join(cells))
    print("\ntargets (issue 15)\n" + "\n".join(targets(summary)))


if __name__ == "__main__":
    main()
