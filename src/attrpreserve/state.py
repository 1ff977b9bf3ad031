"""Training state of an unfinished run: periodic atomic snapshots that ``--resume`` continues.

A run (``pipeline.train_teacher`` or ``pipeline.compress``) is a sequence of *phases*, the
``engine.fit`` calls it makes: one for a teacher, distillation or QAT, one per pruning round.
The run installs a :class:`Session` with ``with session(...)``; ``fit`` picks it up with
:func:`enter_phase`, so recipes whose own loops call ``fit`` (pruning rounds) checkpoint and
resume without knowing. On resume, phases that had finished return their recorded history at
once (the last of them also reloads its end state: model, masks, RNG), and the phase that was
interrupted continues from its snapshot: same weights, optimizer, schedule, RNG streams and
position in the epoch, so the finished run equals an uninterrupted one (CPU, same threads).

Files, in ``OUT/.state/`` (removed when the run has saved its checkpoint):

- ``state.json``: the command and config, phase / epoch / batch / step, histories, optimizer
  and scheduler settings, Python and NumPy RNG, and the name of the tensor file. Writing it
  (temporary file, fsync, rename) is the commit: a run killed at any instant leaves the previous
  complete snapshot.
- ``tensors-NNNNNN.safetensors``: model (with pruning masks and fake-quant state), best-epoch
  model, optimizer tensors, torch RNG states.

Nothing is pickled: tensors go to safetensors, everything else to JSON.
"""

from __future__ import annotations

import contextvars
import json
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from . import distributed
from .models.checkpoint import write_atomically, write_tensors
from .registry import Registry

STATE_DIR, STATE_FILE, FORMAT = ".state", "state.json", "attrpreserve-state-v1"
TENSORS = re.compile(r"tensors-\d{6,}\.safetensors")  # the only tensor files state.json names

_ACTIVE: contextvars.ContextVar["Session | None"] = contextvars.ContextVar("session", default=None)


def state_dir(out: str | Path) -> Path:
    return Path(out) / STATE_DIR


def exists(out: str | Path) -> bool:
    """Whether ``out`` holds the training state of an unfinished run."""
    return (state_dir(out) / STATE_FILE).is_file()


def active() -> "Session | None":
    return _ACTIVE.get()


def enter_phase() -> "Phase | None":
    """The next phase of the active session (called once by each ``fit``), or ``None``."""
    run = active()
    return None if run is None else run.enter()


# --------------------------------------------------------------------------- extras

# Training state held outside state dicts: ``name -> (capture(model, step), restore(model, step,
# value))``, JSON values. Recipes register theirs (QAT's frozen observers, in
# recipes/quantization.py).
EXTRAS: Registry[tuple[Callable, Callable]] = Registry("training-state extra")


def register_extra(name: str, capture: Callable, restore: Callable) -> None:
    """Snapshot ``capture(model, step)`` with the training state; ``restore(model, step,
    value)`` puts it back on resume."""
    EXTRAS.register(name, (capture, restore))


def capture_extras(model, step) -> dict:
    return {name: capture(model, step) for name, (capture, _) in EXTRAS.items()}


def restore_extras(values: dict, model, step) -> None:
    for name, value in values.items():
        if name in EXTRAS:
            EXTRAS[name][1](model, step, value)


def _set_calls(model, step, value) -> None:
    if value is not None:
        step.calls = value


# A step callable's own counter (QAT's freeze-after-N-steps wrapper counts its calls).
register_extra("step_calls", lambda model, step: getattr(step, "calls", None), _set_calls)


# --------------------------------------------------------------------------- RNG, optimizer

def rng_state(generators: dict, prefix: str = "rng/") -> tuple[dict, dict]:
    """Torch (CPU, CUDA), NumPy, Python and the named generators' states as (tensors, JSON)."""
    tensors = {prefix + "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"{prefix}cuda/{i}"] = s
    for name, gen in generators.items():
        if gen is not None:
            tensors[f"{prefix}gen/{name}"] = gen.get_state()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors[prefix + "numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, internal, gauss = random.getstate()
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss]}
    return tensors, meta


def set_rng_state(tensors: dict, meta: dict, generators: dict, prefix: str = "rng/") -> None:
    """Inverse of :func:`rng_state` (generators missing from the snapshot are left alone)."""
    torch.set_rng_state(tensors[prefix + "torch"])
    cuda = sorted(k for k in tensors if k.startswith(prefix + "cuda/"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    for name, gen in generators.items():
        if gen is not None and f"{prefix}gen/{name}" in tensors:
            gen.set_state(tensors[f"{prefix}gen/{name}"])
    kind, pos, has_gauss, cached = meta["numpy"]
    keys = tensors[prefix + "numpy"].numpy().astype(np.uint32)
    np.random.set_state((kind, keys, pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def optimizer_state(opt: torch.optim.Optimizer, prefix: str = "optim/") -> tuple[dict, dict]:
    """An optimizer's state dict as (tensors, JSON): per-parameter tensors by key."""
    sd = opt.state_dict()
    tensors, state = {}, {}
    for idx, entry in sd["state"].items():
        state[str(idx)] = {}
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}{idx}/{key}"] = value
                state[str(idx)][key] = {"tensor": f"{prefix}{idx}/{key}"}
            else:
                state[str(idx)][key] = value
    return tensors, {"state": state, "param_groups": sd["param_groups"]}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    """Inverse of :func:`optimizer_state`."""
    state = {int(idx): {k: tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v
                        for k, v in entry.items()} for idx, entry in meta["state"].items()}
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v
               for k, v in group.items()} for group in meta["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})


def prefixed(tensors: dict, prefix: str, keep: bool = False) -> dict:
    """The tensors whose keys start with ``prefix``, keyed without it (with it if ``keep``)."""
    return {(k if keep else k[len(prefix):]): v for k, v in tensors.items()
            if k.startswith(prefix)}


# --------------------------------------------------------------------------- session

class Phase:
    """One ``fit`` call of a session: what it resumes from, and where it saves."""

    def __init__(self, session: "Session", index: int):
        self.session, self.index = session, index
        snap = session.snapshot
        self.completed = index < len(session.completed)
        self.history = session.completed[index] if self.completed else None
        here = snap is not None and snap["phase"] == index
        self.final = here and snap["done"]  # finished last: its end state is reloaded
        self.saved = here and not snap["done"]  # interrupted here: continue from the snapshot

    @property
    def generators(self) -> dict:
        return self.session.generators

    @property
    def meta(self) -> dict:
        return self.session.snapshot

    def tensors(self) -> dict:
        return self.session.tensors()

    def due(self, step: int) -> bool:
        """Whether to snapshot after optimizer step ``step`` (``every`` steps; else per epoch)."""
        every = self.session.every
        return bool(every) and step % every == 0

    @property
    def per_epoch(self) -> bool:
        return not self.session.every

    def save(self, meta: dict, tensors: dict, done: bool = False, history: dict | None = None):
        self.session.save(self.index, meta, tensors, done, history)


class Session:
    """A run's training state: the snapshot resumed from, and the writer of new ones.

    ``config`` (JSON-able) identifies the run: resuming under another config is refused.
    ``every``: snapshot every N optimizer steps (``None``: after each epoch); a phase always
    snapshots when it ends. ``generators``: RNGs of the run outside ``fit`` (the matching loss's
    channel-drop generator) saved with it. Only rank 0 writes; every rank reads.
    """

    def __init__(self, directory: str | Path, config: dict, every: int | None = None,
                 resume: bool = False, generators: dict | None = None):
        if every is not None and (int(every) != every or every < 1):
            raise ValueError(f"checkpoint-every must be a positive number of steps, got {every}")
        self.dir, self.every, self.resume = Path(directory), every, resume
        self.config = json.loads(json.dumps(config, default=str))
        self.generators = dict(generators or {})
        self.writer = distributed.is_main()
        self.snapshot = self._read() if resume else None
        self.completed = list(self.snapshot["phases"]) if self.snapshot else []
        self.serial = self._next_serial()
        self.phases = 0
        self._tensors = None

    def _read(self) -> dict | None:
        path = self.dir / STATE_FILE
        if not path.is_file():
            return None
        try:
            snap = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read training state {path}: {exc}") from None
        if not isinstance(snap, dict) or snap.get("format") != FORMAT:
            raise ValueError(f"{path}: not an attrpreserve training state ({FORMAT})")
        if not isinstance(snap.get("tensors"), str) or not TENSORS.fullmatch(snap["tensors"]):
            raise ValueError(f"{path}: its tensor file {snap.get('tensors')!r} is not a "
                             f"tensors-NNNNNN.safetensors file inside {self.dir}: refused")
        diff = _differences(snap.get("config"), self.config)
        if diff:
            raise ValueError(f"{self.dir} was written by a different run ({'; '.join(diff[:3])}): "
                             f"rerun with the same settings, or delete {self.dir} to start over")
        if not (self.dir / snap["tensors"]).is_file():
            raise ValueError(f"{path}: its tensor file {snap['tensors']} is missing")
        return snap

    def describe(self) -> str:
        snap = self.snapshot
        where = "its end" if snap["done"] else f"epoch {snap['epoch'] + 1}, step {snap['step']}"
        return f"resuming from {self.dir}: phase {snap['phase'] + 1} ({snap['desc']}) at {where}"

    def tensors(self) -> dict:
        if self._tensors is None:
            path = self.dir / self.snapshot["tensors"]
            try:
                self._tensors = load_file(str(path))
            except (SafetensorError, OSError) as exc:
                raise ValueError(f"cannot read training state {path}: {exc}: delete "
                                 f"{self.dir} to start over") from None
        return self._tensors

    def _next_serial(self) -> int:
        if not self.dir.is_dir():
            return 0
        serials = [int(p.stem.split("-")[1]) for p in self.dir.glob("tensors-*.safetensors")
                   if p.stem.split("-")[1].isdigit()]
        return max(serials, default=-1) + 1

    def enter(self) -> Phase:
        phase = Phase(self, self.phases)
        self.phases += 1
        return phase

    def save(self, index: int, meta: dict, tensors: dict, done: bool, history: dict | None):
        """Record phase ``index``'s snapshot; rank 0 writes it (tensors, then the JSON commit)."""
        if done:
            self.completed = self.completed[:index] + [history]
        if not self.writer:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"tensors-{self.serial:06d}.safetensors"
        self.serial += 1
        plain = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
        write_tensors(self.dir / name, plain)
        doc = {"format": FORMAT, "config": self.config, "phase": index, "done": done,
               "phases": self.completed, "world_size": distributed.world_size(), **meta,
               "tensors": name}
        text = json.dumps(doc, indent=1)
        write_atomically(self.dir / STATE_FILE, lambda p: p.write_text(text))
        for old in self.dir.glob("tensors-*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def written(self) -> bool:
        return (self.dir / STATE_FILE).is_file()

    def finish(self) -> None:
        """The run saved its result: the training state is no longer needed."""
        distributed.barrier()
        if self.writer and self.dir.is_dir():
            shutil.rmtree(self.dir)


def _differences(saved, current, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON documents (``a.b: 1 -> 2``)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) | set(current)):
            out += _differences(saved.get(key), current.get(key), f"{prefix}{key}.")
        return out
    return [] if saved == current else [f"{prefix[:-1]}: {saved!r} -> {current!r}"]


class session:
    """``with session(out, config, resume=..., every=...)``: install a run's :class:`Session`.

    On success the state folder is removed (the checkpoint written inside the block is the
    result). A non-finite loss keeps the last good snapshot, and its message says where.
    """

    def __init__(self, out: str | Path, config: dict, *, resume: bool = False,
                 every: int | None = None, generators: dict | None = None):
        self.session = Session(state_dir(out), config, every, resume, generators)

    def __enter__(self) -> Session:
        self._token = _ACTIVE.set(self.session)
        run = self.session
        if run.resume and run.writer:
            print(run.describe() if run.snapshot is not None else
                  f"no training state in {run.dir}: starting from the beginning", file=sys.stderr)
        return run

    def __exit__(self, kind, exc, tb) -> bool:
        _ACTIVE.reset(self._token)
        if kind is None:
            self.session.finish()
        elif issubclass(kind, FloatingPointError):
            kept = (f"the last good training state is kept in {self.session.dir}"
                    if self.session.written() else "no training state had been written yet")
            raise FloatingPointError(f"{exc}; {kept}") from None
        return False
