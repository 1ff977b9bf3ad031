"""Steps per second of ``attrpreserve compress`` (KD + WCAM) on 1 vs 2 processes, and the cost
of training-state snapshots.

Same global batch everywhere. Configurations, timed in one run (the machines are shared: compare
ratios, not absolute numbers): 1 process x 1 thread, 1 process x 2 threads, 2 processes
(``torchrun``, gloo) x 1 thread each. Speed is the training time of the epochs (validation
excluded) from the checkpoint's history. Snapshot cost: one process, every ``save`` timed.

    python bench/distributed.py [--n-train 512] [--batch-size 64] [--width 16] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from attrpreserve import distributed, pipeline, state
from attrpreserve.engine import TrainConfig


def compress_cfg(args, teacher: Path) -> pipeline.CompressConfig:
    train = TrainConfig(epochs=args.epochs, lr=0.005, optimizer="adamw", augment=True,
                        progress=False)
    return pipeline.CompressConfig(teacher=str(teacher), method="kd", matching="wcam",
                                   options={"width_divisor": 4}, lam=100.0, train=train)


def worker(args) -> None:
    """One configuration (under torchrun when N > 1): compress, write speed from rank 0."""
    torch.set_num_threads(args.threads)
    distributed.init_from_env()
    _, meta = pipeline.compress(compress_cfg(args, Path(args.teacher)), Path(args.out) / "run")
    if distributed.is_main():
        steps = -(-args.n_train // args.batch_size)
        seconds = [row["seconds"] for row in meta["history"]["epochs"]]
        (Path(args.out) / "speed.json").write_text(json.dumps(
            {"steps_per_epoch": steps, "epoch_seconds": seconds}))
    distributed.shutdown()


def launch(args, teacher: Path, procs: int, threads: int, out: Path) -> dict:
    out.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    head = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
             f"--nproc_per_node={procs}"] if procs > 1 else [sys.executable])
    cmd = [*head, __file__, "--worker", "--teacher", str(teacher), "--out", str(out),
           "--threads", str(threads), "--n-train", str(args.n_train),
           "--batch-size", str(args.batch_size), "--epochs", str(args.epochs)]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    speed = json.loads((out / "speed.json").read_text())
    last = speed["epoch_seconds"][-1]  # the first epoch includes warm-up
    return {"processes": procs, "threads": threads, "steps_per_s": speed["steps_per_epoch"] / last,
            "images_per_s": args.n_train / last}


def snapshot_cost(args, teacher: Path, out: Path) -> dict:
    """One process: seconds per snapshot and per epoch, snapshot size."""
    torch.set_num_threads(1)
    times, save = [], state.Session.save

    def timed(self, *a, **k):
        t0 = time.perf_counter()
        save(self, *a, **k)
        times.append(time.perf_counter() - t0)
        files = list(self.dir.glob("tensors-*.safetensors"))
        sizes.append(files[0].stat().st_size if files else 0)

    sizes: list[int] = []
    state.Session.save = timed
    try:
        _, meta = pipeline.compress(compress_cfg(args, teacher), out, checkpoint_every=1)
    finally:
        state.Session.save = save
    epoch = sorted(r["seconds"] for r in meta["history"]["epochs"])[0]
    mid = times[:-1]  # the phase-end snapshot has no optimizer state
    per_snapshot = sorted(mid)[len(mid) // 2]
    steps = -(-args.n_train // args.batch_size)
    return {"snapshot_ms": 1000 * per_snapshot, "snapshot_MB": max(sizes) / 2 ** 20,
            "epoch_s_with_snapshot_every_step": epoch,
            "overhead_per_epoch_default": per_snapshot / (epoch - steps * per_snapshot)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--width", type=int, default=16, help="teacher width (student: width / 4)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--teacher", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    root = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    data = pipeline.DataConfig(n_train=args.n_train, n_val=64, batch_size=args.batch_size)
    torch.set_num_threads(2)
    pipeline.train_teacher(pipeline.TeacherConfig(
        data=data, width=args.width, train=TrainConfig(epochs=1, progress=False)),
        root / "teacher")
    rows = [launch(args, root / "teacher", procs, threads, root / f"p{procs}t{threads}")
            for procs, threads in ((1, 1), (1, 2), (2, 1))]
    base = rows[0]["steps_per_s"]
    print(f"KD+WCAM, teacher width {args.width}, student width/4, global batch "
          f"{args.batch_size}, {args.n_train} images, last of {args.epochs} epochs")
    for r in rows:
        print(f"  {r['processes']} process(es) x {r['threads']} thread(s): "
              f"{r['steps_per_s']:.2f} steps/s ({r['images_per_s']:.0f} images/s, "
              f"x{r['steps_per_s'] / base:.2f} vs 1x1)")
    cost = snapshot_cost(args, root / "teacher", root / "snap")
    print(f"  snapshot: {cost['snapshot_ms']:.1f} ms, {cost['snapshot_MB']:.2f} MB; default "
          f"(one per epoch) adds {100 * cost['overhead_per_epoch_default']:.2f}% per epoch")


if __name__ == "__main__":
    main()
