"""Train the demo teacher and score it against issue 15's targets (a teacher worth preserving).

    python bench/teacher.py --out runs/teacher                # train as the demo would; score val
    python bench/teacher.py --out runs/teacher --ship         # ... score val and test, and ship it
    python bench/teacher.py --family vit --out runs/vit       # the ViT demo's teacher (issue 25)

Training uses the demo's teacher settings (``pipeline.demo_teacher_config``: ``DemoConfig``'s
architecture, width, epochs, scenes, seed 0; ``--family vit``: ``pipeline.VIT``'s small ViT); a
finished checkpoint in ``--out`` is reused, an interrupted one continues from its snapshot. The
score (``pipeline.shipped.score_teacher``) is Grad-CAM on *all* ground-truth pairs: pointing game pooled
and per class, AUC, and mAP, against ``TARGETS`` (the ViT's: ``VIT_TARGETS``, with attention
rollout's pointing game too). Settings are chosen on the validation split;
``--ship`` reads the test split once, for the record, and copies the checkpoint with both scores
(``scores.json``) into the package, where the demo and tests/test_shipped.py find them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch

from attrpreserve.pipeline import demo_teacher_config, is_finished, train_teacher
from attrpreserve.pipeline.experiments import DEMOS
from attrpreserve.pipeline.shipped import (FILES, SCORES, TARGETS, VIT_TARGETS, score_teacher,
                                           shipped_folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/teacher", help="checkpoint folder (reused if finished)")
    ap.add_argument("--ship", action="store_true",
                    help="also score the test split and copy the teacher into the package "
                         "(pipeline/demo_teacher, the ViT's pipeline/demo_vit)")
    ap.add_argument("--family", choices=sorted(DEMOS), default="vgg",
                    help="whose demo teacher: the VGG's (default) or the ViT's")
    ap.add_argument("--device", default="cpu", help="where to train (cpu, cuda; default cpu)")
    ap.add_argument("--epochs", type=int,
                    help="train this many epochs instead of the demo's (a schedule being tried; "
                         "not with --ship: the shipped teacher is the demo's settings)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    cfg = demo_teacher_config(progress=not args.no_progress, family=args.family)
    if args.epochs is not None and args.epochs != cfg.train.epochs:
        if args.ship:
            ap.error(f"--epochs {args.epochs} with --ship: the demo trains its teacher for "
                     f"{cfg.train.epochs} epochs (DemoConfig.teacher_epochs); change it there")
        cfg = replace(cfg, train=replace(cfg.train, epochs=args.epochs))
    out, t0 = Path(args.out), time.perf_counter()
    trained = not is_finished(out, cfg)
    if trained:
        # an interrupted run continues from its snapshot (a different config is refused)
        train_teacher(cfg, out, resume=True, device=args.device)
    targets = VIT_TARGETS if args.family == "vit" else TARGETS
    scores = {split: score_teacher(out, cfg.data, split, targets)
              for split in (("val", "test") if args.ship else ("val",))}
    print(json.dumps({"checkpoint": str(out), "threads": torch.get_num_threads(),
                      "train_seconds": round(time.perf_counter() - t0, 1) if trained else None,
                      **scores}, indent=2))
    if args.ship:
        folder = shipped_folder(DEMOS[args.family].shipped)
        folder.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            shutil.copy2(out / name, folder / name)
        (folder / SCORES).write_text(json.dumps(scores, indent=2) + "\n")
        print(f"shipped: {folder}")


if __name__ == "__main__":
    main()
