"""Strength sweeps: naive vs matched compression at several strengths of one recipe.

    python bench/sweep.py --teacher runs/quick/teacher --recipe unstructured \
        --strengths 0.8 0.9 0.95 0.99 --matchings none wcam --out runs/sweep

Each (strength, matching) point is one ``attrpreserve compress`` run (finished points are
reused); then every point is evaluated together with the teacher on its test split. Writes
OUT/RECIPE/sweep.json (rows: recipe, matching, strength, size and quality numbers), a plot
per recipe (pointing game, AUC, Spearman and mAP against non-zero parameters or bytes), and
prints the table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from attrpreserve.engine import TrainConfig
from attrpreserve.pipeline import CompressConfig, format_table, sweep

METRICS = ("mAP", "pointing_game", "auc", "spearman")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--recipe", required=True, choices=("kd", "structured", "unstructured",
                                                        "quantization"))
    ap.add_argument("--strengths", type=float, nargs="+", required=True)
    ap.add_argument("--matchings", nargs="+", default=["none", "wcam"])
    ap.add_argument("--rounds", type=int, default=2, help="unstructured: rounds to the sparsity")
    ap.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs (per round)")
    ap.add_argument("--lr", type=float, default=0.001)
    ap.add_argument("--lam", type=float, default=100.0)
    ap.add_argument("--drop", type=float, default=0.3)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/sweep")
    args = ap.parse_args()
    train = TrainConfig(epochs=args.epochs, lr=args.lr, optimizer="adamw", weight_decay=1e-4,
                        augment=True, seed=args.seed, progress=False)
    base = CompressConfig(teacher=args.teacher, method=args.recipe, matching="wcam",
                          lam=args.lam, drop=args.drop, train=train)
    results = sweep(base, args.strengths, args.out, args.matchings, args.rounds,
                    {"n_test": args.n_test}, seed=args.seed, progress=False)
    out = Path(args.out) / args.recipe
    print(format_table(results))
    plot(results["sweeps"], out / "sweep.png")
    print(f"wrote {out / 'sweep.json'} and {out / 'sweep.png'}")


def plot(rows: list[dict], path: Path) -> None:
    """Each metric against non-zero parameters (weight bits for quantization, whose parameter
    count does not change), one line per matching."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = "strength" if rows and rows[0]["recipe"] == "quantization" else "nonzero_params"
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.2))
    for ax, metric in zip(axes, METRICS):
        for matching in sorted({r["matching"] for r in rows}):
            pts = sorted((r[size], r[metric]) for r in rows
                         if r["matching"] == matching and r[metric] is not None)
            ax.plot(*zip(*pts), marker="o", label=matching)
        ax.set_xlabel("weight bits" if size == "strength" else size)
        ax.set_title(metric)
        ax.set_xscale("linear" if size == "strength" else "log")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
