"""The one training loop: SGD with momentum, a learning-rate schedule, selection on a val split.

Every recipe (teacher training, distillation, later pruning and quantization fine-tuning) is this
loop with a different ``step`` function ``step(model, images, labels) -> (loss, {term: value})``.
The loop snapshots and resumes inside a ``state.session`` (see ``state``) and averages gradients
across processes under torchrun (see ``distributed``).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from . import distributed, logs, state
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
    schedule: str = "cosine"  # "cosine" | "constant" | "multistep" (x gamma at milestones)
    milestones: list[int] = field(default_factory=list)  # multistep: epochs where lr drops
    gamma: float = 0.1  # multistep: the lr factor applied at each milestone
    optimizer: str = "sgd"  # "sgd" (momentum, the paper's) | "adamw"
    augment: bool = False  # random 90-degree rotations and flips of each training batch
    warmup_epochs: float = 0.0
    seed: int = 0
    progress: bool = True  # report progress (logs: bars on a terminal, else a line per epoch)
    freeze_bn: bool = False  # BatchNorm keeps its running statistics (fine-tuning pretrained nets)
    # before a phase's first step: BatchNorm statistics re-estimated from this many training
    # batches (0: kept). For fine-tuning after surgery: see ``recalibrate_batchnorm``.
    recalibrate_bn: int = 0
    amp: bool = False  # CUDA only: the step runs under bfloat16 autocast (mixed precision)
    # model, teacher and batches in the channels_last layout while training: the same arithmetic
    # in another order (oneDNN's NHWC kernels), 1.2-1.6x faster on CPU (docs/benchmarks.md)
    channels_last: bool = False
    max_steps: int | None = None  # stop each fit (phase) after this many optimizer steps

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, "
                             f"got {self.optimizer!r}")
        if self.schedule not in ("cosine", "constant", "multistep"):
            raise ValueError(f"schedule must be 'cosine', 'constant' or 'multistep', "
                             f"got {self.schedule!r}")
        if any(not isinstance(m, int) or m < 1 for m in self.milestones) or \
                list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones must be increasing positive epochs, "
                             f"got {self.milestones!r}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int)
                                           or self.max_steps < 1):
            raise ValueError(f"max_steps must be a positive integer, got {self.max_steps!r}")
        if not isinstance(self.recalibrate_bn, int) or self.recalibrate_bn < 0:
            raise ValueError(f"recalibrate_bn must be a number of batches >= 0, "
                             f"got {self.recalibrate_bn!r}")


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
    """Train ``model`` with ``step``; keep the weights of the epoch with the best val mAP.

    Inside a ``state.session`` the loop snapshots its full state (``--checkpoint-every`` steps,
    else every epoch, and when it ends) and continues from the session's snapshot; a phase that
    had finished returns its recorded history. Under torchrun, gradients are averaged across
    ranks after each backward (``distributed.average_gradients``) and rank 0 alone validates and
    logs. A non-finite loss stops training with a ``FloatingPointError`` naming the step and the
    loss terms, before the optimizer step (no snapshot is written for that step).

    ``cfg.max_steps`` ends the phase after that many optimizer steps (the epoch in progress is
    then validated and closed; the schedule is the full run's, so the steps taken are the first
    steps of the full run). ``cfg.amp`` runs each step under bfloat16 autocast (CUDA only;
    backward, optimizer and validation stay in float32; no loss scaling is needed for bfloat16).
    """
    cfg = cfg or TrainConfig()
    if cfg.amp and next(model.parameters()).device.type != "cuda":
        raise ValueError("amp (mixed precision) needs a CUDA device; the model is on "
                         f"{next(model.parameters()).device}")
    run = state.enter_phase()
    if run is not None and run.completed:
        return _replay(run, model, step, train)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = OPTIMIZERS[cfg.optimizer](params, cfg)
    per_epoch = len(train)
    total = cfg.epochs * per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: _lr_factor(i, total, cfg, per_epoch))
    loop = _Loop(augment=torch.Generator().manual_seed(cfg.seed),
                 generators={"loader": getattr(train, "generator", None),
                             **(run.generators if run is not None else {})})
    if run is not None and run.saved:
        _restore(run, loop, model, opt, sched, step)
    elif cfg.recalibrate_bn:  # a fresh phase (a resumed one has its statistics in the snapshot)
        recalibrate_batchnorm(model, train, cfg.recalibrate_bn)
    distributed.broadcast_module(model)  # rank 0's weights and statistics everywhere
    ctx = _Context(model, train, step, cfg, opt, sched, loop, run, desc)
    with _layout(cfg, model, step):
        for epoch in range(loop.epoch, cfg.epochs):
            _train_epoch(ctx, epoch)
            _end_epoch(ctx, epoch, val)
            if _steps_spent(ctx):
                if loop.step < total:
                    logs.line(f"{desc}: stopped by max_steps (--max-steps) after {loop.step} of "
                              f"{total} optimizer steps, in epoch {epoch + 1}/{cfg.epochs}",
                              cfg.progress)
                break
    if loop.best_state is not None:
        _load(model, loop.best_state)
    distributed.broadcast_module(model)
    model.eval()
    if run is not None:
        _snapshot(ctx, done=True)
    return loop.history


@dataclass
class _Loop:
    """A phase's progress: what a snapshot records besides model, optimizer and schedule."""

    augment: torch.Generator
    generators: dict
    history: History = field(default_factory=History)
    best_state: dict | None = None
    epoch: int = 0  # epoch in progress (0-based)
    batch: int = 0  # batches of it trained
    step: int = 0  # optimizer steps of the phase
    sums: dict = field(default_factory=dict)
    count: int = 0
    seconds: float = 0.0
    epoch_rng: tuple | None = None  # (tensors, meta): loader + torch RNG at the epoch's start
    resume_rng: tuple | None = None  # RNG to set once the trained batches are skipped


@dataclass
class _Context:
    """What the helpers of one ``fit`` call share."""

    model: nn.Module
    train: DataLoader
    step: object
    cfg: TrainConfig
    opt: torch.optim.Optimizer
    sched: object
    loop: _Loop
    run: object
    desc: str

    @property
    def device(self):
        return next(self.model.parameters()).device


def _steps_spent(ctx: _Context) -> bool:
    """Whether the phase has taken its ``max_steps`` optimizer steps."""
    return ctx.cfg.max_steps is not None and ctx.loop.step >= ctx.cfg.max_steps


@contextlib.contextmanager
def _layout(cfg: TrainConfig, model: nn.Module, step):
    """With ``cfg.channels_last``: the model and the step's frozen teacher (if any) in the
    channels_last layout for the phase, back in the default one after it (what is saved and
    explained is laid out as before)."""
    models = [m for m in (model, getattr(step, "teacher", None)) if isinstance(m, nn.Module)]
    if cfg.channels_last:
        for m in models:
            m.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        if cfg.channels_last:
            for m in models:
                m.to(memory_format=torch.contiguous_format)


def _autocast(ctx: _Context):
    """bfloat16 autocast for the step with ``amp`` (CUDA), else nothing."""
    if ctx.cfg.amp:
        return torch.autocast(ctx.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _train_epoch(ctx: _Context, epoch: int) -> None:
    """One epoch (or what is left of it after a resume), snapshotting when due."""
    loop, model = ctx.loop, ctx.model
    loop.epoch = epoch
    model.train()
    if ctx.cfg.freeze_bn:
        freeze_batchnorm(model)
    bar = logs.bar(len(ctx.train), f"{ctx.desc} {epoch + 1}/{ctx.cfg.epochs}", ctx.cfg.progress,
                   initial=loop.batch)
    t0 = time.perf_counter()
    for images, labels, *_ in (_no_batches(ctx) if _steps_spent(ctx) else _epoch_batches(ctx)):
        if ctx.cfg.augment:
            images = augment_batch(images, loop.augment)
        images, labels = images.to(ctx.device), labels.to(ctx.device)
        if ctx.cfg.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        with _autocast(ctx):
            loss, terms = ctx.step(model, images, labels)
        _optimize(ctx, loss, terms, len(images), epoch)
        loop.batch, loop.step = loop.batch + 1, loop.step + 1
        for k, v in {"loss": loss.detach(), **terms}.items():
            loop.sums[k] = loop.sums.get(k, 0.0) + float(v) * len(images)
        loop.count += len(images)
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        if ctx.run is not None and ctx.run.due(loop.step):
            loop.seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            _snapshot(ctx)
        if _steps_spent(ctx):
            break
    bar.close()
    loop.seconds += time.perf_counter() - t0


def _epoch_batches(ctx: _Context):
    """The epoch's batches. A resumed epoch first restores the RNG its start had, skips the
    batches already trained (same shuffle), then restores the snapshot's RNG."""
    loop = ctx.loop
    loader_rng = {"loader": loop.generators.get("loader")}
    if loop.resume_rng is not None and loop.batch == 0:  # snapshot at an epoch's start
        state.set_rng_state(*loop.resume_rng, _all_generators(loop))
        loop.resume_rng = None
    if loop.resume_rng is None:
        loop.epoch_rng = state.rng_state(loader_rng, "epoch_rng/")
        yield from ctx.train
        return
    state.set_rng_state(*loop.epoch_rng, loader_rng, "epoch_rng/")
    batches = iter(ctx.train)
    for _ in range(loop.batch):
        next(batches, None)
    state.set_rng_state(*loop.resume_rng, _all_generators(loop))
    loop.resume_rng = None
    yield from batches


def _no_batches(ctx: _Context) -> list:
    """An epoch entered with ``max_steps`` spent (a resume right after the last step): no
    batches, only the snapshot's RNG to restore."""
    if ctx.loop.resume_rng is not None:
        state.set_rng_state(*ctx.loop.resume_rng, _all_generators(ctx.loop))
        ctx.loop.resume_rng = None
    return []


def _all_generators(loop: _Loop) -> dict:
    return {"augment": loop.augment, **loop.generators}


def _optimize(ctx: _Context, loss, terms, n: int, epoch: int) -> None:
    """Backward, (distributed) gradient averaging, optimizer and schedule step."""
    finite = bool(torch.isfinite(loss.detach()))
    if not finite and not distributed.active():
        raise _non_finite(ctx, loss, terms, epoch)
    ctx.opt.zero_grad(set_to_none=True)
    loss.backward()
    if distributed.active() and not distributed.average_gradients(ctx.model, n, finite):
        raise _non_finite(ctx, loss, terms, epoch, elsewhere=finite)
    ctx.opt.step()
    ctx.sched.step()


def _non_finite(ctx: _Context, loss, terms, epoch: int, elsewhere: bool = False):
    where = (f"step {ctx.loop.step + 1} (epoch {epoch + 1}, batch {ctx.loop.batch + 1} of "
             f"{len(ctx.train)})")
    if elsewhere:
        return FloatingPointError(f"{ctx.desc}: non-finite loss on another rank at {where}")
    values = ", ".join(f"{k} {float(v):.4g}" for k, v in {"loss": loss.detach(), **terms}.items())
    return FloatingPointError(f"{ctx.desc}: non-finite loss at {where}: {values}")


def _end_epoch(ctx: _Context, epoch: int, val: DataLoader | None) -> None:
    """Epoch averages (over all ranks), validation on rank 0, best-epoch selection, log."""
    loop, history = ctx.loop, ctx.loop.history
    keys = sorted(loop.sums)
    *sums, count = distributed.sum_floats([loop.sums[k] for k in keys] + [loop.count],
                                          ctx.device)
    row = {"epoch": epoch + 1, **{k: v / count for k, v in zip(keys, sums)},
           "seconds": loop.seconds}
    if val is not None:
        score = (mean_average_precision(*predict(ctx.model, val))[0] if distributed.is_main()
                 else float("nan"))
        row["val_mAP"] = distributed.broadcast_float(score, ctx.device)
        if loop.best_state is None or row["val_mAP"] > history.best_val_mAP:
            history.best_epoch, history.best_val_mAP = epoch + 1, row["val_mAP"]
            loop.best_state = copy.deepcopy(ctx.model.state_dict())
    history.epochs.append(row)
    loop.epoch, loop.batch, loop.sums, loop.count, loop.seconds = epoch + 1, 0, {}, 0, 0.0
    logs.line(_epoch_line(ctx, row), ctx.cfg.progress)
    if ctx.run is not None and ctx.run.per_epoch and epoch + 1 < ctx.cfg.epochs \
            and not _steps_spent(ctx):
        _snapshot(ctx)


def _epoch_line(ctx: _Context, row: dict) -> str:
    """``"teacher epoch 2/5: loss 0.3100, bce 0.3100, val mAP 0.912, 42 s"``."""
    terms = sorted(k for k in row if k not in ("epoch", "seconds", "val_mAP", "loss"))
    terms = [f"{k} {row[k]:.4f}" for k in ["loss", *terms] if k in row]
    if "val_mAP" in row:
        terms.append(f"val mAP {row['val_mAP']:.3f}")
    return (f"{ctx.desc} epoch {row['epoch']}/{ctx.cfg.epochs}: " + ", ".join(terms)
            + f", {logs.duration(row['seconds'])}")


def _snapshot(ctx: _Context, done: bool = False) -> None:
    """Hand the phase's state to the session: model, RNG and extras; mid-phase also the
    optimizer, schedule, best-epoch weights and the RNG the epoch started with."""
    loop = ctx.loop
    tensors = {f"model/{k}": v for k, v in ctx.model.state_dict().items()}
    rng_tensors, rng_meta = state.rng_state(_all_generators(loop))
    tensors.update(rng_tensors)
    meta = {"desc": ctx.desc, "epoch": loop.epoch, "batch": loop.batch, "step": loop.step,
            "rng": rng_meta, "spec": getattr(ctx.model, "spec", None),
            "extras": state.capture_extras(ctx.model, ctx.step)}
    if not done:
        opt_tensors, opt_meta = state.optimizer_state(ctx.opt)
        epoch_rng = loop.epoch_rng if loop.batch else state.rng_state(
            {"loader": loop.generators.get("loader")}, "epoch_rng/")
        tensors.update(opt_tensors)
        tensors.update(epoch_rng[0])
        tensors.update({f"best/{k}": v for k, v in (loop.best_state or {}).items()})
        meta.update(optimizer=opt_meta, scheduler=_scheduler_state(ctx.sched),
                    epoch_rng=epoch_rng[1], history=loop.history.to_dict(), sums=loop.sums,
                    count=loop.count, seconds=loop.seconds)
    ctx.run.save(meta, tensors, done=done, history=loop.history.to_dict() if done else None)


@torch.no_grad()
def _load(model: nn.Module, weights: dict) -> None:
    """Load ``weights``; refresh pruned layers' ``weight`` (``orig * mask``).

    ``torch.nn.utils.prune`` recomputes that attribute only in the next forward, and the next
    pruning round ranks it: without the refresh a round after ``fit`` would rank the weights of
    the last forward pass instead of the selected epoch's (and a resumed run would differ).
    """
    model.load_state_dict(weights)
    for module in model.modules():
        for name, _ in list(module.named_buffers(recurse=False)):
            base = name[: -len("_mask")]
            if name.endswith("_mask") and hasattr(module, base + "_orig"):
                setattr(module, base, getattr(module, base + "_orig") * getattr(module, name))


def _scheduler_state(sched) -> dict:
    """The schedule's state dict without its lambdas (rebuilt by ``fit`` from the config)."""
    sd = dict(sched.state_dict())
    sd["lr_lambdas"] = [None] * len(sd.get("lr_lambdas", []))
    return sd


def _check_spec(meta: dict, model: nn.Module) -> None:
    saved, now = meta.get("spec"), getattr(model, "spec", None)
    if json.loads(json.dumps(now, default=str)) != saved:
        raise ValueError("the training state was written for a different model structure "
                         f"({meta['desc']}); delete the state folder to start over")


def _restore(run, loop: _Loop, model: nn.Module, opt, sched, step) -> None:
    """Continue phase ``run`` from its snapshot (the RNG is set once the epoch is re-entered)."""
    meta, tensors = run.meta, run.tensors()
    _check_spec(meta, model)
    _load(model, state.prefixed(tensors, "model/"))
    state.load_optimizer(opt, tensors, meta["optimizer"])
    sched.load_state_dict(meta["scheduler"])
    loop.history = History(**meta["history"])
    loop.best_state = state.prefixed(tensors, "best/") or None
    loop.epoch, loop.batch, loop.step = meta["epoch"], meta["batch"], meta["step"]
    loop.sums, loop.count, loop.seconds = meta["sums"], meta["count"], meta["seconds"]
    loop.epoch_rng = (state.prefixed(tensors, "epoch_rng/", keep=True), meta["epoch_rng"])
    loop.resume_rng = (state.prefixed(tensors, "rng/", keep=True), meta["rng"])
    state.restore_extras(meta["extras"], model, step)


def _replay(run, model: nn.Module, step, train: DataLoader) -> History:
    """A phase that finished before the interruption: its history; if it was the last to
    finish, also its end state (model, RNG streams shared with later phases, extras)."""
    if run.final:
        meta, tensors = run.meta, run.tensors()
        _check_spec(meta, model)
        _load(model, state.prefixed(tensors, "model/"))
        generators = {"loader": getattr(train, "generator", None), **run.generators}
        state.set_rng_state(tensors, meta["rng"], generators)
        state.restore_extras(meta["extras"], model, step)
        model.eval()
    return History(**run.history)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader: DataLoader, batches: int) -> int:
    """Replace every BatchNorm's running statistics by the average of its batch statistics over
    the first ``batches`` batches of ``loader`` (no weight changes); returns the images seen.

    Surgery changes what each BatchNorm sees (filters removed upstream, weights zeroed), so the
    statistics measured before it mis-normalise every later layer, and with ``freeze_bn`` they
    never recover: pretrained Lite0 with 10% of its filters removed falls from 0.95 to 0.26
    top-1 on Imagenette, 0.53 once recalibrated. Not free: statistics of a narrower class set
    than the pretraining's normalise class evidence away (unpruned Lite0 recalibrated on
    Imagenette: 0.76), so whether to recalibrate is chosen on held-out data
    (docs/real-photos.md). The model's training mode and each layer's momentum are restored.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
              and m.track_running_stats]
    if not layers or batches < 1:
        return 0
    was_training, momenta = model.training, [m.momentum for m in layers]
    device = next(model.parameters()).device
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
    model.train()
    n = 0
    try:
        for images, *_ in itertools.islice(loader, batches):  # no batch loaded beyond them
            model(images.to(device))
            n += len(images)
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.train(was_training)
    return n


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Put every BatchNorm layer in eval mode: it normalises with (and no longer updates) its
    running statistics; its affine parameters still train. Undone by ``model.train()``."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model


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
    if cfg.schedule == "multistep":
        epoch = step // max(1, per_epoch)
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
