"""Pretrained ImageNet EfficientNet-Lite0 on COCO photos: compression strength vs explanations.

    python bench/pretrained.py --coco ../shared/data/coco128-train --out runs/pretrained \
        --recipes unstructured,structured --strengths unstructured=0.1,0.3,0.5 \
        --strengths structured=0.1,0.3 --matchings none,wcam --epochs 20

For each recipe and strength: the pruned model before any fine-tuning, then label-free
fine-tuning (softmax distillation from the original, BatchNorm statistics frozen, SGD) with each
matching on the train part of the photos (``holdout`` of them held out). Every model is then
evaluated on the held-out photos against the original: top-1 agreement, Grad-CAM Spearman and
argmax agreement of the original's top-1 class (bootstrap CIs over photos), localisation on the
COCO masks (pointing game / AUC where the top-1 has a COCO counterpart, energy on objects;
``evaluate.mask_localization``), size and CPU latency (batch 1). Finished runs are reused.
Writes OUT/results.json (``rows``: one flat row per model), OUT/pretrained.png and prints the
table. Quantization: eager-mode QAT at ``value`` bits (int8 export; latency and bytes are the
int8 model's).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict
from pathlib import Path

from attrpreserve.compress import finalize, global_magnitude_prune, prepare_qat, prune_channels
from attrpreserve.data.coco import coco_ids
from attrpreserve.distributed import resolve_device
from attrpreserve.engine import TrainConfig
from attrpreserve.evaluate import mask_localization, nan_to_none
from attrpreserve.loading import load_checkpoint, load_pretrained
from attrpreserve.models import save_checkpoint
from attrpreserve.models.pretrained import pretrained_meta
from attrpreserve.pipeline import (CompressConfig, DataConfig, compress, evaluate, is_finished,
                                   write_results)
from attrpreserve.recipes import export

TEACHER = "pretrained:efficientnet-lite0"
DEFAULT_STRENGTHS = {"unstructured": [0.1, 0.3, 0.5], "structured": [0.1, 0.3],
                     "quantization": [8, 4]}
PLOTTED = ("top1_agreement", "spearman", "argmax_agree", "mask_pointing_game", "mask_auc")


def save_teacher(out: Path, data: DataConfig) -> Path:
    """The original as a checkpoint folder (bytes comparable with the compressed ones)."""
    if not (out / "model.json").is_file():
        meta = pretrained_meta(TEACHER, data.size)
        meta.pop("input_size")
        save_checkpoint(out, load_pretrained(TEACHER, data.size), {**meta, "data": asdict(data)})
    return out


def compress_only(teacher_dir: Path, out: Path, recipe: str, value: float,
                  data: DataConfig) -> Path:
    """The recipe's compression at ``value`` without fine-tuning: global magnitude pruning of
    all conv weights, L1 filter pruning of every conv, or fake-quant at ``value`` bits
    calibrated on 8 training batches (its int8 conversion is exported)."""
    if (out / "model.json").is_file():
        return out
    teacher, meta = load_checkpoint(teacher_dir)
    model = copy.deepcopy(teacher)
    if recipe == "unstructured":
        global_magnitude_prune(model, value)
        finalize(model)
    elif recipe == "structured":
        prune_channels(model, value)
    else:
        model = prepare_qat(model, bits=int(value), calibration=data.loader("train"))
    meta = {**{k: v for k, v in meta.items() if k != "model"}, "role": "compressed",
            "compression": {"method": recipe, "matching": "none", "strength": value,
                            "epochs": 0}}
    save_checkpoint(out, model, meta)
    export(model, out)
    return out


def flat_rows(results: dict, masks: dict, points: dict) -> list[dict]:
    """One row per model: recipe, strength, matching, epochs, size, agreement, localisation."""
    rows = []
    for run in results["runs"]:
        g = run["attribution"]["gradcam"]
        ci = g.get("agreement_ci", {}).get("spearman", {})
        m = masks["models"][run["name"]]["gradcam"]
        recipe, value, matching, epochs = points.get(run["name"], ("none", 0, "none", 0))
        rows.append({
            "name": run["name"], "recipe": recipe, "strength": value, "matching": matching,
            "epochs": epochs, **{k: run["cost"][k] for k in ("params", "nonzero_params",
                                                              "bytes", "latency_ms")},
            "top1_agreement": run["task"].get("top1_agreement", 1.0),
            "spearman": g.get("agreement", {}).get("spearman"),
            "spearman_ci": [ci.get("ci_low"), ci.get("ci_high")],
            "argmax_agree": g.get("agreement", {}).get("argmax_agree"),
            **{f"mask_{k}": m[k]["mean"] for k in m},
            **{f"mask_{k}_ci": [m[k].get("ci_low"), m[k].get("ci_high")] for k in m}})
    return rows


def table(rows: list[dict]) -> str:
    cols = [("name", "run"), ("nonzero_params", "nonzero"), ("bytes", "MB"),
            ("latency_ms", "ms"), ("top1_agreement", "top1"), ("spearman", "rho"),
            ("argmax_agree", "argmax"), ("mask_pointing_game", "PG"), ("mask_auc", "AUC"),
            ("mask_energy_things", "E_obj")]

    def fmt(key, v):
        if v is None:
            return "-"
        if key == "bytes":
            return f"{v / 1e6:.1f}"
        return f"{v:.3f}" if isinstance(v, float) and key != "latency_ms" else (
            f"{v:.1f}" if isinstance(v, float) else str(v))

    text = [[h for _, h in cols]] + [[fmt(k, r[k]) for k, _ in cols] for r in rows]
    widths = [max(len(t[i]) for t in text) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(t, widths))) for t in text)


def plot(rows: list[dict], path: Path) -> None:
    """Each metric (columns) against each recipe's strength (rows of panels): one line per
    matching and epochs, the original as a dashed line. Quantization's axis is inverted (fewer
    bits = stronger), so compression grows to the right in every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recipes = sorted({r["recipe"] for r in rows if r["recipe"] != "none"})
    teacher = next((r for r in rows if r["recipe"] == "none"), None)
    fig, axes = plt.subplots(len(recipes), len(PLOTTED), squeeze=False,
                             figsize=(3.4 * len(PLOTTED), 2.9 * len(recipes)))
    for recipe, panels in zip(recipes, axes):
        lines = sorted({(r["matching"], r["epochs"]) for r in rows if r["recipe"] == recipe})
        for ax, metric in zip(panels, PLOTTED):
            for matching, epochs in lines:
                pts = sorted((r["strength"], r[metric]) for r in rows
                             if (r["recipe"], r["matching"], r["epochs"]) == (recipe, matching,
                                                                              epochs)
                             and r[metric] is not None)
                if pts:
                    label = "no fine-tuning" if epochs == 0 else f"{matching} {epochs} ep"
                    ax.plot(*zip(*pts), marker="o", label=label)
            if teacher is not None and teacher.get(metric) is not None:
                ax.axhline(teacher[metric], color="grey", ls="--", lw=1)
            if recipe == "quantization":
                ax.invert_xaxis()
            ax.set_title(metric, fontsize=9)
            ax.set_xlabel("weight bits" if recipe == "quantization" else f"{recipe} rate")
        panels[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def parse_strengths(items: list[str]) -> dict[str, list[float]]:
    out = dict(DEFAULT_STRENGTHS)
    for item in items or []:
        recipe, _, values = item.partition("=")
        out[recipe] = [float(v) for v in values.split(",") if v]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--coco", default="../shared/data/coco128-train")
    ap.add_argument("--holdout", type=float, default=0.5, help="share of photos evaluated on")
    ap.add_argument("--recipes", default="unstructured,structured")
    ap.add_argument("--strengths", action="append",
                    help="RECIPE=V1,V2,... (repeatable; defaults: "
                         + "; ".join(f"{k}={','.join(map(str, v))}"
                                     for k, v in DEFAULT_STRENGTHS.items()) + ")")
    ap.add_argument("--matchings", default="none,wcam")
    ap.add_argument("--epochs", type=int, default=20, help="fine-tuning epochs (0: none)")
    ap.add_argument("--rounds", type=int, default=1, help="unstructured: pruning rounds")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lam", type=float, default=100.0)
    ap.add_argument("--drop", type=float, default=0.3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--n-train", type=int, help="use only the first N training photos")
    ap.add_argument("--n-val", type=int, help="evaluate on the first N held-out photos")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto",
                    help="auto (cuda when available), cpu or cuda: fine-tuning and explainers "
                         "(latency is measured on the CPU)")
    ap.add_argument("--out", default="runs/pretrained")
    args = ap.parse_args()
    out, t0 = Path(args.out), time.perf_counter()
    device = resolve_device(args.device)
    data = DataConfig(spec=f"coco128:{args.coco},holdout={args.holdout}", size=args.size,
                      batch_size=args.batch_size, n_train=args.n_train, n_val=args.n_val,
                      workers=args.workers)
    teacher = save_teacher(out / "teacher", data)
    train = TrainConfig(epochs=max(1, args.epochs), lr=args.lr, optimizer="sgd",
                        weight_decay=0.0, freeze_bn=True, seed=args.seed, progress=False)
    ckpts, points = {"teacher": teacher}, {}
    strengths = parse_strengths(args.strengths)
    for recipe in args.recipes.split(","):
        for value in strengths[recipe]:
            name = f"{recipe}@{value:g}"
            ckpts[name] = compress_only(teacher, out / name, recipe, value, data)
            points[name] = (recipe, value, "none", 0)
            if args.epochs == 0:
                continue
            for matching in args.matchings.split(","):
                run = f"{name}+{matching}"
                cfg = CompressConfig(teacher=str(teacher), method=recipe, data=data,
                                     train=train).with_matching(matching, args.lam, args.drop)
                cfg = cfg.with_strength(value, args.rounds)
                if not is_finished(out / run, cfg):
                    print(f"compress {run}", flush=True)
                    compress(cfg, out / run, device=device)
                ckpts[run], points[run] = out / run, (recipe, value, matching, args.epochs)
    results = evaluate(ckpts, "teacher", data, "val", seed=args.seed, progress=False,
                       device=device)
    models = {n: load_checkpoint(p)[0].to(device) for n, p in ckpts.items()}
    masks = mask_localization(models, data.loader("val"), "teacher", coco_ids,
                              n_boot=args.n_boot, seed=args.seed, progress=False)
    rows = flat_rows(results, masks, points)
    doc = {"rows": rows, "masks": masks, "evaluation": results,
           "args": vars(args), "wall_seconds": time.perf_counter() - t0}
    write_results(nan_to_none(json.loads(json.dumps(doc, default=str))), out / "results.json")
    print(table(rows))
    print(f"masked held-out photos {masks['images']}, scored pairs {masks['pairs']}, "
          f"centre baseline PG {masks['baselines']['pointing_game_center']:.3f}, "
          f"object area {masks['baselines']['things_area']:.3f}")
    plot(rows, out / "pretrained.png")
    print(f"wrote {out / 'results.json'} and {out / 'pretrained.png'} "
          f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
