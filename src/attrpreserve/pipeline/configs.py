"""Configs of the pipeline's stages and the data they load: what data and how it is split and
batched (``DataConfig``), a teacher's training (``TeacherConfig``), a compression run
(``CompressConfig``), with their validation and the data helpers the stages share."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from .. import distributed
from ..data import DATASETS, build_dataset, get_preprocess
from ..data.images import Relabeled, class_folders
from ..engine import TrainConfig
from ..matching import MATCHERS, WCAMOptions, matcher_options
from ..loading import read_meta
from ..models.pretrained import (class_indices, classes_option, imagenet_classes, is_pretrained,
                                 pretrained_meta)
from ..recipes import RECIPES
from ..recipes.steps import ALPHA, TEMPERATURE


@dataclass
class DataConfig:
    """Which data and how it is split and batched (``spec``: ``scenes``, ``masks:PATH``,
    ``images:FOLDER``, ``coco128:PATH``, ...)."""

    spec: str = "scenes"
    size: int = 64
    seed: int = 0
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    batch_size: int = 64
    preprocess: str = "none"  # named preset (data.transforms): "none" or "paper"
    workers: int = 0  # DataLoader processes (0: the main one); not part of a run's identity
    # where a uint8 photo cache (``cached:``) serves and augments its batches; not part of a
    # run's identity either
    device: str = "cpu"

    def __post_init__(self):
        _check(isinstance(self.spec, str) and bool(self.spec),
               "no data: a pretrained model has none of its own; give --data images:FOLDER")
        _check(_positive_int(self.size), f"size must be a positive integer, got {self.size!r}")
        _check(_positive_int(self.batch_size),
               f"batch_size must be a positive integer, got {self.batch_size!r}")
        _check(isinstance(self.seed, int) and self.seed >= 0,
               f"data seed must be a non-negative integer, got {self.seed!r}")
        for name in ("n_train", "n_val", "n_test"):
            value = getattr(self, name)
            _check(value is None or _positive_int(value),
                   f"{name} must be a positive integer, got {value!r}")
        _check(isinstance(self.workers, int) and self.workers >= 0,
               f"workers must be a non-negative integer, got {self.workers!r}")
        get_preprocess(self.preprocess)

    def loader(self, split: str, shuffle: bool = False, seed: int = 0,
               shard: bool = False, adapt=None) -> DataLoader:
        """Batches of ``split``; with ``shard`` under torchrun, this rank's part of each global
        batch of ``batch_size`` (the same global batches as one process sees). ``adapt``
        (dataset -> dataset, see :func:`labels_for`) relabels the split for a model. A
        shuffled (training) loader applies the ``preprocess`` preset's augmentation, drawn from
        the loader's generator (under torchrun each rank draws for its own images)."""
        n = {"train": self.n_train, "val": self.n_val, "test": self.n_test}[split]
        ds = _dataset(self.spec, split, self.size, self.seed, n)
        ds = adapt(ds) if adapt is not None else ds
        gen = torch.Generator().manual_seed(seed)
        pre = get_preprocess(self.preprocess)
        collate = pre.collate(gen) if shuffle and pre.augments else None
        if hasattr(ds, "loader") and not (shard and distributed.active()):
            return ds.loader(self.batch_size, shuffle, gen, self.device)  # data.cached
        if shard and distributed.active():
            sampler = distributed.ShardedBatchSampler(len(ds), self.batch_size, shuffle, gen)
            return DataLoader(ds, batch_sampler=sampler, generator=gen, collate_fn=collate,
                              **self._workers())
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, generator=gen,
                          collate_fn=collate, **self._workers())

    def _workers(self) -> dict:
        """Worker processes kept across epochs; each seeds torch from the loader's generator, so
        random crops are reproducible for a given ``workers`` (not across values of it)."""
        return {"num_workers": self.workers, "persistent_workers": self.workers > 0}


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def resolve_data(data: DataConfig | dict | None, meta: dict) -> DataConfig:
    """``data`` itself, or the checkpoint's data with the fields given in a dict overridden."""
    if isinstance(data, DataConfig):
        return data
    return DataConfig(**{**meta["data"], **(data or {})})


def scope_to_folder(refs: list, data: DataConfig | dict | None = None
                    ) -> tuple[list, str | None]:
    """Models scored on a class folder score over its classes: each ``pretrained:`` spec in
    ``refs`` without ``classes=`` gets ``,classes=FOLDER`` when the data (``data``'s spec, else
    the first checkpoint's) is an ``images:`` / ``cached:`` folder with class folders. Its head
    then keeps those classes' rows (``models.subset``), so softmax, top-1 and the explained
    class live in the task's k classes, not ImageNet's 1000 (``classes=all`` keeps them all).

    Only when every other model in ``refs`` has exactly the folder's classes: compared with one
    that has others (a checkpoint compressed from an unrestricted model, a ``classes=all``
    spec), every model is scored over all its classes. Returns the refs and a line saying which
    was done (None when no ``pretrained:`` spec meets a class folder).
    """
    folder = _class_folder(data, refs) if any(is_pretrained(r) for r in refs) else None
    if folder is None:
        return refs, None
    names = [imagenet_classes()[i] for i in class_indices(str(folder))]
    free = [r for r in refs if is_pretrained(r) and classes_option(r) is None]
    wider = [r for r in refs if r not in free and _classes(r) != names]
    total = len(imagenet_classes())
    if free and not wider:
        return [f"{r},classes={folder}" if r in free else r for r in refs], (
            f"{', '.join(free)}: scored over the {len(names)} classes of {folder} (add "
            f"',classes=all' to the spec to score all {total})")
    shown = free + [r for r in wider if is_pretrained(r)]
    if not shown:
        return refs, None
    why = f"{wider[0]} has {len(_classes(wider[0]))}" if free else "classes=all"
    return refs, (f"{', '.join(shown)}: scored over all {total} classes, not the "
                  f"{len(names)} of {folder} ({why})")


def read_paths(ref: str | Path | None) -> list[str]:
    """The files and folders that a model reference (checkpoint folder, ``pretrained:`` spec,
    model file) or a data spec (``images:FOLDER,boxes=FILE``, ...) reads: the outputs of a
    command are checked against them (``outputs.check``) before any work."""
    if ref is None or not str(ref).strip():
        return []
    kind, sep, rest = str(ref).partition(":")
    if not sep or not (kind == "pretrained" or kind in DATASETS):
        return [str(ref)]
    values = (token.partition("=")[2] if "=" in token else token for token in rest.split(","))
    return [v for v in values if v and Path(v).exists()]


def _classes(ref) -> list[str]:
    """The class names of a checkpoint folder or ``pretrained:`` spec, without loading it."""
    return pretrained_meta(ref)["classes"] if is_pretrained(ref) else read_meta(ref)["classes"]


def _class_folder(data: DataConfig | dict | None, refs: list) -> Path | None:
    """The folder of an ``images:`` / ``cached:`` data spec when it has class folders."""
    spec = data.spec if isinstance(data, DataConfig) else (data or {}).get("spec")
    if spec is None and refs and not is_pretrained(refs[0]):
        spec = read_meta(refs[0])["data"]["spec"]
    kind, _, arg = str(spec).partition(":")
    if kind not in ("images", "cached") or not arg:
        return None
    folder = Path(arg.split(",", 1)[0])
    try:
        class_folders(folder)
    except (ValueError, OSError):  # unlabeled photos (or no such folder: the loader says so)
        return None
    return folder


def labels_for(model: torch.nn.Module, classes: list[str], pseudo: bool = True):
    """``adapt`` for :meth:`DataConfig.loader`: photo sets (``images:``, ``coco128:``) are
    labeled in ``classes`` (the model's); an unlabeled one gets ``model``'s top-1 class as its
    label when ``pseudo`` (explained pairs, top-1 agreement and validation then follow the
    teacher). Other datasets pass through unchanged."""
    def adapt(ds):
        if not hasattr(ds, "with_classes"):
            return ds
        ds = ds.with_classes(classes)
        if not pseudo or ds.labeled:
            return ds
        loader = DataLoader(ds, batch_size=32)
        top1 = torch.cat([_predict(model, batch[0]).argmax(1) for batch in loader])
        onehot = torch.nn.functional.one_hot(top1, len(classes)).float()
        return Relabeled(ds, onehot, classes, how="teacher top-1")
    return adapt


@torch.no_grad()
def _predict(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    model.eval()
    return model(images.to(next(model.parameters()).device)).float().cpu()


@functools.lru_cache(maxsize=6)
def _dataset(spec: str, split: str, size: int, seed: int, n: int | None):
    """Datasets are generated or read once per process (the demo reuses them for every stage)."""
    return build_dataset(spec, split, size=size, seed=seed, n=n)


@dataclass
class TeacherConfig:
    """Train a teacher from scratch."""

    data: DataConfig = field(default_factory=DataConfig)
    model: str = "vgg"
    width: int = 16
    dropout: float = 0.0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=15, lr=0.05))
    init: str | None = None  # initial weights: a .safetensors / .pt / .pth state dict file
    width_divisor: float = 1.0  # every width / R (vgg16: the paper's students; smoke tests)
    # a ``timm:`` model's architecture options (``models.families.timm.ARCH_OPTIONS``)
    model_options: dict = field(default_factory=dict)

    def __post_init__(self):
        _check(_positive_int(self.width), f"width must be a positive integer, got {self.width!r}")
        _check(self.width_divisor > 0, f"width_divisor must be > 0, got {self.width_divisor}")
        _check(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")


@dataclass
class CompressConfig:
    """Compress a teacher checkpoint with the recipe ``method`` (its settings in ``options``:
    the recipe's ``Options``, a dict of them, or ``None`` for its defaults); ``matching`` adds
    ``lam`` x attribution matching. Naive runs (``matching="none"``) have lambda 0, and only
    WCAM drops channels or compares maps at input resolution, whatever was given."""

    teacher: str = ""
    method: str = "kd"
    matching: str = "wcam"
    # the matchers' settings (``matching.losses``' Options, defaults written there once)
    drop: float = WCAMOptions.drop
    lam: float = 100.0
    target: str = WCAMOptions.target
    resolution: str = WCAMOptions.resolution  # WCAM's maps compared at the layer's or input size
    rollout: str = WCAMOptions.rollout  # WCAM on a ViT: also match a rollout ("none": off)
    form: str = WCAMOptions.form  # WCAM compares the maps' values (cosine) or soft ranks (rank)
    input_map: str = WCAMOptions.input_map  # WCAM: also match an input-level map ("none": off)
    temperature: float = TEMPERATURE
    alpha: float = ALPHA
    layer: str | None = None  # "a,b": several matched layers, their losses averaged
    options: Any = None
    data: DataConfig | dict | None = None  # None / dict: the teacher's data (dict overrides)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=15, lr=0.05))

    def __post_init__(self):
        self.options = RECIPES[self.method].options(self.options)
        MATCHERS.check(self.matching)
        if self.matching == "none":
            self.lam = 0.0
        if self.matching != "wcam":
            self.drop, self.resolution, self.form = 0.0, "layer", "cosine"
            self.rollout = self.input_map = "none"
        # every matcher's settings are checked (a typo is an error whatever the matching)
        WCAMOptions(**self.matcher_values())
        matcher_options(self.matching, **self.matcher_values())
        checks = [(self.lam >= 0, f"lambda must be >= 0, got {self.lam}"),
                  (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
                  (0 <= self.alpha <= 1, f"alpha must be in [0, 1], got {self.alpha}")]
        for ok, message in checks:
            _check(ok, message)

    @property
    def recipe(self):
        """The registered recipe object of ``method``."""
        return RECIPES[self.method]

    def matcher_values(self) -> dict:
        """The matchers' settings (``WCAMOptions``' fields) as ``create_matcher`` takes them."""
        return {f.name: getattr(self, f.name) for f in fields(WCAMOptions)}

    def with_matching(self, matching: str, lam: float, drop: float) -> CompressConfig:
        """This run with ``matching`` at ``lam`` / ``drop`` (naive: lambda 0; non-WCAM: no drop)."""
        return replace(self, matching=matching, lam=lam, drop=drop)

    def with_strength(self, value: float, rounds: int = 1) -> CompressConfig:
        """This run at compression strength ``value`` (:meth:`Recipe.strength`)."""
        return replace(self, options=replace(self.options,
                                             **self.recipe.strength(value, rounds)))
