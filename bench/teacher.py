"""Train the demo teacher and score it against issue 15's targets (a teacher worth preserving).

    python bench/teacher.py --out runs/teacher                # train as the demo would; score val
    python bench/teacher.py --out runs/teacher --ship         # ... score val and test, and ship it

Training uses the demo's teacher settings (``pipeline.demo_teacher_config``: ``DemoConfig``'s
width, epochs, scenes, seed 0); a finished checkpoint in ``--out`` is reused. The score
(``pipeline.shipped.score_teacher``) is Grad-CAM on *all* ground-truth pairs: pointing game pooled
and per class, AUC, and mAP, against ``TARGETS``. Settings are chosen on the validation split;
``--ship`` reads the test split once, for the record, and copies the checkpoint with both scores
(``scores.json``) into the package, where the demo and tests/test_shipped.py find them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from attrpreserve.pipeline import demo_teacher_config, is_finished, train_teacher
from attrpreserve.pipeline.shipped import FILES, SCORES, SHIPPED_TEACHER, score_teacher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/teacher", help="checkpoint folder (reused if finished)")
    ap.add_argument("--ship", action="store_true",
                    help=f"also score the test split and copy the teacher to {SHIPPED_TEACHER}")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    cfg = demo_teacher_config(progress=not args.no_progress)
    out, t0 = Path(args.out), time.perf_counter()
    trained = not is_finished(out, cfg)
    if trained:
        train_teacher(cfg, out)
    scores = {split: score_teacher(out, cfg.data, split)
              for split in (("val", "test") if args.ship else ("val",))}
    print(json.dumps({"checkpoint": str(out), "threads": torch.get_num_threads(),
                      "train_seconds": round(time.perf_counter() - t0, 1) if trained else None,
                      **scores}, indent=2))
    if args.ship:
        SHIPPED_TEACHER.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            shutil.copy2(out / name, SHIPPED_TEACHER / name)
        (SHIPPED_TEACHER / SCORES).write_text(json.dumps(scores, indent=2) + "\n")
        print(f"shipped: {SHIPPED_TEACHER}")


if __name__ == "__main__":
    main()
