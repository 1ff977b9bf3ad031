"""The one training loop: SGD with momentum, a learning-rate schedule, selection on a val split.

Every recipe (teacher training, distillation, later pruning and quantization fine-tuning) is this
loop with a different ``step`` function ``step(model, images, labels) -> (loss, {term: value})``.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .evaluate.task import mean_average_precision


OPTIMIZERS = {
    "sgd": lambda params, c: torch.optim.SGD(params, lr=c.lr, momentum=c.momentum,
                                             weight_decay=c.weight_decay),
    "adamw": lambda params, c: torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay),
}


@dataclass
class TrainConfig:
    """Optimiser and schedule settings shared by every recipe."""

    epochs: int = 10
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # "cosine" | "constant"
    optimizer: str = "sgd"  # "sgd" (momentum, the paper's) | "adamw"
    augment: bool = False  # random 90-degree rotations and flips of each training batch
    warmup_epochs: float = 0.0
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, "
                             f"got {self.optimizer!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")


@dataclass
class History:
    """Per-epoch averages of each loss term, validation mAP and time; the selected epoch."""

    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_val_mAP: float = float("nan")

    def to_dict(self) -> dict:
        return asdict(self)


def bce_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    """Multi-label task loss (sigmoid BCE, the paper's multi-label soft margin)."""
    loss = F.binary_cross_entropy_with_logits(model(images), labels)
    return loss, {"bce": loss.detach()}


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of a whole loader, model in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    logits, labels = [], []
    for images, y, *_ in loader:
        logits.append(model(images.to(device)).float().cpu())
        labels.append(y)
    return torch.cat(logits), torch.cat(labels)


def fit(model: nn.Module, train: DataLoader, val: DataLoader | None, step=bce_step,
        cfg: TrainConfig | None = None, desc: str = "train") -> History:
    """Train ``model`` with ``step``; keep the weights of the epoch with the best val mAP."""
    cfg = cfg or TrainConfig()
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    opt = OPTIMIZERS[cfg.optimizer](params, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    total = cfg.epochs * len(train)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: _lr_factor(i, total, cfg, len(train)))
    history, best_state = History(), None
    for epoch in range(cfg.epochs):
        model.train()
        sums, count, t0 = {}, 0, time.perf_counter()
        bar = tqdm(train, desc=f"{desc} {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not cfg.progress)
        for images, labels, *_ in bar:
            if cfg.augment:
                images = augment_batch(images, gen)
            images, labels = images.to(device), labels.to(device)
            loss, terms = step(model, images, labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: non-finite loss at epoch {epoch + 1}, "
                                         f"terms { {k: float(v) for k, v in terms.items()} }")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            for k, v in {"loss": loss.detach(), **terms}.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(images)
            count += len(images)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        row = {"epoch": epoch + 1, **{k: v / count for k, v in sums.items()},
               "seconds": time.perf_counter() - t0}
        if val is not None:
            row["val_mAP"] = mean_average_precision(*predict(model, val))[0]
            if best_state is None or row["val_mAP"] > history.best_val_mAP:
                history.best_epoch, history.best_val_mAP = epoch + 1, row["val_mAP"]
                best_state = copy.deepcopy(model.state_dict())
        history.epochs.append(row)
        if cfg.progress:
            tqdm.write(f"{desc} epoch {epoch + 1}: " + ", ".join(
                f"{k} {v:.4f}" for k, v in row.items() if k not in ("epoch",)))
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history


def augment_batch(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random rotation by a multiple of 90 degrees and an optional flip for the batch.

    Labels are unchanged (image-level classes); teacher and student see the same batch.
    """
    k = int(torch.randint(4, (1,), generator=generator))
    images = torch.rot90(images, k, (2, 3))
    return images.flip(3) if bool(torch.randint(2, (1,), generator=generator)) else images


def _lr_factor(step: int, total: int, cfg: TrainConfig, per_epoch: int) -> float:
    warm = int(cfg.warmup_epochs * per_epoch)
    if step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
