"""Run by tests/test_distributed.py, in-process (one process) or under torchrun (N processes).

``fit`` part: WCAM distillation of a BatchNorm-free student (BatchNorm in train mode normalises
with per-rank statistics, which no CPU SyncBatchNorm can align); every rank saves its weights
and history to ``OUT/fit-rank{r}.*``. ``cli`` part: ``attrpreserve compress`` itself.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from attrpreserve import distributed
from attrpreserve.recipes import DistillStep
from attrpreserve.engine import TrainConfig, fit
from attrpreserve.matching import create_matcher
from attrpreserve.loading import load_checkpoint
from attrpreserve.models import create_model
from attrpreserve.pipeline import DataConfig

DATA = DataConfig(n_train=64, n_val=16, batch_size=16)


def student(num_classes: int) -> nn.Module:
    """A half-width student without BatchNorm (identical on every rank: fixed seed)."""
    torch.manual_seed(1)
    model = create_model("vgg", num_classes=num_classes, width=2, dropout=0.0)
    for i, m in enumerate(model.features):
        if isinstance(m, nn.BatchNorm2d):
            model.features[i] = nn.Identity()
    return model


def run_fit(teacher_dir: str, out: str) -> None:
    teacher, _ = load_checkpoint(teacher_dir)
    model = student(teacher.classifier[-1].out_features)
    matcher = create_matcher("wcam", drop=0.3, generator=torch.Generator().manual_seed(0))
    step = DistillStep(teacher, matcher, lam=10.0)
    cfg = TrainConfig(epochs=2, lr=0.01, augment=True, progress=False)
    history = fit(model, DATA.loader("train", shuffle=True, seed=0, shard=True),
                  DATA.loader("val"), step, cfg, desc="kd+wcam")
    r = distributed.rank()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(Path(out) / f"fit-rank{r}.safetensors"))
    (Path(out) / f"fit-rank{r}.json").write_text(json.dumps(history.to_dict()))


def main(argv: list[str]) -> int:
    teacher_dir, out = argv[:2]
    torch.set_num_threads(1)
    distributed.init_from_env()
    code = 1
    try:
        run_fit(teacher_dir, out)
        code = 0
        if "--cli" in argv:  # the CLI, unchanged (it leaves the process group when done)
            from attrpreserve.cli import main as cli
            code = cli(["compress", "--teacher", teacher_dir, "--matching", "wcam",
                        "--width-divisor", "2", "--lambda", "10", "--epochs", "1",
                        "--checkpoint-every", "2", "--no-progress",
                        "--out", str(Path(out) / "cli")])
    finally:
        # Leave the process group before the interpreter exits, also after an error (then
        # without the barrier: the other rank may have stopped).  A gloo group still alive at
        # exit is torn down by C++ destructors during interpreter teardown, which can abort the
        # process.  A no-op where the CLI already left it.
        distributed.shutdown(wait=code == 0)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
