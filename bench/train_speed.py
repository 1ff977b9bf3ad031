"""Fine-tuning steps per second on the CPU, per recipe, in the default memory layout, in
channels_last (``--channels-last``, ``TrainConfig.channels_last``) and in channels_last under
bfloat16 autocast (not shipped: measured here to show why): issue 24's speed item.

The photo preset's step exactly: ImageNet EfficientNet-Lite0 as the frozen teacher, a copy of
it pruned to 80% sparsity (unstructured) or prepared for 4-bit QAT as the student, the softmax
distillation step at 128 px, batch 32, AdamW, naive or with WCAM at ``_blocks.10``. The layouts
are timed interleaved in one process (median seconds per step after a warm-up step), so their
ratio is measured under the same load.

    OMP_NUM_THREADS=1 python bench/train_speed.py [--steps 6] [--batch 32] [--size 128]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from attrpreserve.compress.quantize import prepare_qat
from attrpreserve.compress.unstructured import global_magnitude_prune
from attrpreserve.engine import TrainConfig, _layout
from attrpreserve.loading import load_model
from attrpreserve.matching import create_matcher
from attrpreserve.recipes import fine_tuning_step

LAYER = "_blocks.10"
MODES = ("default", "channels_last", "bf16")


def students(teacher):
    """The recipes' students: 80% unstructured sparsity, and 4-bit QAT."""
    pruned = copy.deepcopy(teacher)
    global_magnitude_prune(pruned, 0.8)
    return {"unstructured 80%": pruned, "QAT 4-bit": prepare_qat(copy.deepcopy(teacher), bits=4)}


def timed_steps(student, step, images, labels, mode: str, n: int) -> float:
    """Median seconds of ``n`` optimizer steps after one warm-up step; ``mode``: "default",
    "channels_last" or "bf16" (channels_last under CPU bfloat16 autocast)."""
    channels_last = mode != "default"
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-4)
    cfg = TrainConfig(channels_last=channels_last)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    times = []
    with _layout(cfg, student, step):
        student.train()
        for i in range(n + 1):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
                loss, _ = step(student, images, labels)
            loss.backward()
            opt.step()
            if i:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=6, help="timed steps per cell (default 6)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    args = p.parse_args()
    torch.manual_seed(0)
    teacher, _ = load_model("pretrained:efficientnet-lite0")
    teacher.eval()
    images = torch.rand(args.batch, 3, args.size, args.size)
    labels = torch.nn.functional.one_hot(torch.randint(0, 1000, (args.batch,)), 1000).float()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"batch {args.batch} at {args.size} px, median of {args.steps} steps x {args.rounds}")
    print("| recipe | matching | s/step default | channels_last | speed-up | channels_last + "
          "bf16 autocast | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for recipe, student in students(teacher).items():
        for matching in ("none", "wcam"):
            step = fine_tuning_step(teacher, create_matcher(matching, drop=0.3), 1000.0, LAYER)
            cells = {m: [] for m in MODES}
            for _ in range(args.rounds):
                for mode in MODES:
                    cells[mode].append(timed_steps(student, step, images, labels, mode,
                                                   args.steps))
            plain, nhwc, bf16 = (statistics.median(cells[m]) for m in MODES)
            print(f"| {recipe} | {matching} | {plain:.2f} | {nhwc:.2f} | {plain / nhwc:.2f}x | "
                  f"{bf16:.2f} | {plain / bf16:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
