"""The pipeline's stages as plain functions over config objects: train a teacher, compress it,
evaluate, audit, explain images to PNG; whether a stage already ran (``is_finished``), and the
results I/O (results.json, the text table, report.html)."""

from __future__ import annotations

import difflib
import inspect
import json
import platform
import re
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .. import __version__, distributed, state
from ..data import get_preprocess
from ..data.images import open_rgb
from ..compress.onnx import check_explainers, is_onnx
from ..engine import fit
from ..evaluate import audit as run_audit
from ..evaluate import evaluate_models, model_cost, nan_to_none
from ..evaluate.gate import check as check_gate
from ..fileio import atomic_write_text
from ..loading import load_model
from ..matching import create_matcher
from ..models import MODELS, class_probabilities, create_model, save_checkpoint
from ..models.checkpoint import init_from_file
from ..models.family import has_attention, is_single_label
from ..models.pretrained import is_pretrained, is_timm
from ..models.pretrained import parse as parse_ref
from ..recipes import (RECIPES, FineTuning, Loaders, deployed, deployed_file, export,
                       fine_tuning_step)
from ..report.words import gap_entry, gap_words, metric, naive_baselines
from . import onnx_export
from .configs import CompressConfig, DataConfig, TeacherConfig, labels_for, resolve_data


def teacher_spec(cfg: TeacherConfig, num_classes: int) -> tuple[str, dict]:
    """``(registry name, keyword arguments)`` of the model ``train`` builds: ``cfg.model`` (a
    registry name, or ``timm:NAME``, which normalises its input itself) with the options its
    builder takes; ``ValueError`` for a width or dropout it has no use for."""
    name, kwargs = cfg.model, {"num_classes": num_classes, "input_size": cfg.data.size}
    if is_timm(name):
        options = {"options": dict(cfg.model_options)} if cfg.model_options else {}
        return "timm", {"arch": parse_ref(name)[0], **kwargs, "single_label": False, **options}
    if cfg.model_options:
        raise ValueError(f"model {name!r} takes no model_options (timm models do)")
    params = inspect.signature(MODELS[name]).parameters
    for key, value, default in (("dropout", cfg.dropout, 0.0), ("width", cfg.width, 16),
                                ("width_divisor", cfg.width_divisor, 1.0)):
        if key in params:
            if key != "width_divisor" or value != 1.0:
                kwargs[key] = value
        elif value != default:
            raise ValueError(f"model {name!r} has no {key} option")
    pre = get_preprocess(cfg.data.preprocess)
    if pre.mean is not None:  # the preset's normalisation lives in the model (data.transforms)
        kwargs["input_norm"] = [list(pre.mean), list(pre.std)]
    return name, kwargs


def train_teacher(cfg: TeacherConfig, out: str | Path, resume: bool = False,
                  checkpoint_every: int | None = None, device: str = "cpu"):
    """Train a teacher, select it on the val split, save it to ``out``; returns (model, meta).

    Training state is snapshotted to ``out/.state`` (``checkpoint_every`` steps, else every
    epoch); ``resume`` continues from it. Under torchrun, rank 0 alone writes.
    """
    torch.manual_seed(cfg.train.seed)
    train_dl = cfg.data.loader("train", shuffle=True, seed=cfg.train.seed, shard=True)
    val_dl = cfg.data.loader("val")
    classes = train_dl.dataset.classes
    name, kwargs = teacher_spec(cfg, len(classes))
    model = create_model(name, **kwargs)
    if cfg.init:
        init_from_file(model, cfg.init)
    model.to(distributed.device_for(device))
    with state.session(out, _run_config("train", cfg), resume=resume, every=checkpoint_every):
        history = fit(model, train_dl, val_dl, cfg=cfg.train, desc="teacher")
        meta = {"role": "teacher", "classes": classes, "config": asdict(cfg),
                "data": asdict(cfg.data), "compression": {"method": "none", "matching": "none"},
                "history": history.to_dict(), "datasets": _describe(train=train_dl, val=val_dl)}
        if distributed.is_main():
            save_checkpoint(out, model, meta)
    return model, meta


def _describe(**loaders) -> dict:
    """What each split holds (counts, absent classes, skipped images), by split name."""
    return {split: dl.dataset.describe() for split, dl in loaders.items()
            if hasattr(dl.dataset, "describe")}


def _run_config(command: str, cfg) -> dict:
    """What identifies a run for ``--resume`` (progress bars and loader workers excluded)."""
    return {"command": command, "config": _settings(asdict(cfg))}


def compress(cfg: CompressConfig, out: str | Path, resume: bool = False,
             checkpoint_every: int | None = None, device: str = "cpu"):
    """Compress the teacher at ``cfg.teacher`` with the recipe ``cfg.method``; save to ``out``.

    Resumable and distributed like :func:`train_teacher` (pruning rounds and masks, structured
    shapes and QAT state are all part of the snapshot).
    """
    if is_onnx(cfg.teacher):
        raise ValueError(f"--teacher {cfg.teacher}: an ONNX file runs forward only (onnxruntime) "
                         "and cannot be compressed or distilled from; give the checkpoint or "
                         "'pretrained:' model it was exported from")
    teacher, t_meta = load_model(cfg.teacher)
    if cfg.rollout != "none" and not has_attention(teacher):
        raise ValueError(f"--rollout {cfg.rollout}: matching a rollout needs a Vision "
                         f"Transformer teacher; {type(teacher).__name__} has no attention maps")
    teacher.to(distributed.device_for(device))
    data = resolve_data(cfg.data, t_meta)
    torch.manual_seed(cfg.train.seed)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    matcher = create_matcher(cfg.matching, generator=gen, **cfg.matcher_values())
    classes = t_meta["classes"]
    loaders = Loaders(data.loader("train", shuffle=True, seed=cfg.train.seed, shard=True,
                                  adapt=labels_for(teacher, classes, pseudo=False)),
                      data.loader("val", adapt=labels_for(teacher, classes)))
    step = fine_tuning_step(teacher, matcher, cfg.lam, cfg.layer, cfg.temperature, cfg.alpha,
                            distils=cfg.recipe.distils)
    finetune = FineTuning(step, cfg.train, tag=cfg.matching)
    with state.session(out, _run_config("compress", cfg), resume=resume, every=checkpoint_every,
                       generators={"matching": gen}):
        student, history, extra = cfg.recipe.run(teacher, loaders, finetune, cfg.options)
        settings = {"method": cfg.method, "matching": cfg.matching, "lambda": cfg.lam,
                    "drop": cfg.drop, "target": cfg.target, **extra}
        meta = {"role": "compressed", "classes": t_meta["classes"], "teacher": str(cfg.teacher),
                "config": asdict(cfg), "data": asdict(data), "compression": settings,
                "history": history}
        if distributed.is_main():
            save_checkpoint(out, student, meta)
            export(student, out)
    return student, meta


class Loaded(NamedTuple):
    """A model loaded once for every stage that needs it (evaluation, then the report)."""

    model: torch.nn.Module
    meta: dict
    source: str  # the checkpoint folder or ``pretrained:`` spec it came from


def _recipe_label(method: str) -> dict:
    """``{"recipe_label": ...}`` of a registered recipe (the report names runs by it)."""
    return {"recipe_label": RECIPES[method].label} if method in RECIPES else {}


def load_models(models: dict[str, str | Path | Loaded], device: str = "cpu"
                ) -> dict[str, Loaded]:
    """Each checkpoint folder / ``pretrained:`` spec loaded (already loaded ones kept), on
    ``device``."""
    loaded = {n: v if isinstance(v, Loaded) else Loaded(*load_model(v), str(v))
              for n, v in models.items()}
    for entry in loaded.values():
        entry.model.to(device)
    return loaded


def evaluate(models: dict[str, str | Path | Loaded], teacher: str | None,
             data: DataConfig | dict | None = None,
             split: str = "test", explainers=("gradcam",), seed: int = 0,
             progress: bool = True, device: str = "cpu", control: str | None = None) -> dict:
    """Evaluate models (name -> checkpoint dir, spec, or :class:`Loaded`) against ``teacher``
    (a name in ``models``). ``control`` (a name in ``models``): the teacher fine-tuned like the
    compressed runs with nothing compressed; its run gets the role "control" and each matched
    run a gap recovered against it too (``evaluate_models``).

    Predictions and explanations run on ``device``; size and latency are measured on the CPU
    (the deployment target), where the models are left. Returns the results.json document
    (``results_schema.RESULTS``).
    """
    loaded = load_models(models, device)
    for entry in loaded.values():
        check_explainers(entry.model, explainers)
    first = loaded[teacher or next(iter(loaded))]
    data = resolve_data(data, first.meta)
    adapt = labels_for(first.model, first.meta["classes"])
    loader = data.loader(split, adapt=adapt)
    if control is not None and (control not in loaded or control == teacher):
        raise ValueError(f"control {control!r} is not one of the compared models "
                         f"({', '.join(n for n in loaded if n != teacher)})")
    runs = [{"name": name, "role": "teacher" if name == teacher else
             "control" if name == control else meta.get("role"),
             "checkpoint": source, "compression": meta["compression"],
             **_recipe_label(meta["compression"]["method"])}
            for name, (_, meta, source) in loaded.items()]
    nets = {n: entry.model for n, entry in loaded.items()}
    # gap recovered: each matched run against its recipe's naive run (report.words' grouping)
    baselines = {m: n for m, n in naive_baselines({"runs": runs}).items()
                 if teacher is not None and teacher not in (m, n)}
    # multi-label models: F1 also at a threshold chosen on the val split (on val itself that is
    # the best threshold's F1, which tuning rules check besides mAP)
    multi = not all(is_single_label(m) for m in nets.values())
    threshold_loader = None if not multi else loader if split == "val" else \
        data.loader("val", adapt=adapt)
    scores = evaluate_models(nets, loader, reference=teacher, explainers=tuple(explainers),
                             progress=progress, baselines=baselines, seed=seed,
                             threshold_loader=threshold_loader,
                             control=control if teacher is not None else None)
    nets = {n: m.cpu() for n, m in nets.items()}
    costs = model_cost(nets, (1, 3, data.size, data.size),
                       checkpoints={n: deployed_file(e.source) for n, e in loaded.items()
                                    if not is_pretrained(e.source)},
                       deployed={n: deployed(m) for n, m in nets.items()})
    for run, entry in zip(runs, loaded.values()):
        run.update({"cost": costs[run["name"]], **scores[run["name"]],
                    "training": {"best_epoch": entry.meta["history"]["best_epoch"],
                                 "best_val_mAP": entry.meta["history"]["best_val_mAP"]}})
    return nan_to_none({"runs": runs, "dataset": {**asdict(data), "split": split,
                                                  "images": len(loader.dataset),
                                                  "labels": getattr(loader.dataset, "how",
                                                                    "dataset"),
                                                  "classes": first.meta["classes"]},
                        "seed": seed, "versions": versions()})


def audit(reference: str | Path | Loaded, candidate: str | Path | Loaded, out: str | Path | None,
          data=None, split: str = "test",
          explainers=("gradcam",), n_boot: int = 1000, top: int = 12, seed: int = 0,
          faithfulness: bool = False, progress: bool = True, device: str = "cpu",
          require=None) -> dict:
    """How far ``candidate``'s explanations moved from ``reference``'s: OUT/audit.json + .html
    (``out`` None: no files).

    Data defaults to the reference checkpoint's (``data``, a ``DataConfig`` or a dict, overrides
    it; any other ``data`` is the loader itself, ``split`` then unrecorded); see
    :func:`attrpreserve.evaluate.audit` for what is measured. ``require`` (a gate spec or
    parsed requirements, :mod:`attrpreserve.evaluate.gate`): its verdict is the document's
    ``gate``. The typed API over this stage is :func:`attrpreserve.audit`.
    """
    from ..report import write_audit_report  # here: matplotlib loads only when a page is drawn

    pair = load_models({"a": reference, "b": candidate}, device)
    (model_a, meta, _), model_b = pair["a"], pair["b"].model
    reference, candidate = pair["a"].source, pair["b"].source  # Loaded entries: their names
    for model in (model_a, model_b):
        check_explainers(model, explainers)
    given = data is not None and not isinstance(data, (DataConfig, dict))  # a loader
    loader = data if given else resolve_data(data, meta).loader(
        split, adapt=labels_for(model_a, meta["classes"]))
    options = dict(n_boot=n_boot, seed=seed, top=top, progress=progress,
                   faithfulness=faithfulness)
    result = run_audit(model_a, model_b, loader, tuple(explainers), **options)
    if is_onnx(candidate):  # the ONNX file's PyTorch source, scored beside it
        source = onnx_export.audit_source(candidate, model_a, loader, tuple(explainers), **options)
        if source is not None:
            result["source_candidate"] = source
    result.update(reference=str(reference), candidate=str(candidate), versions=versions(),
                  **({} if given else {"split": split}))
    if require is not None:
        result["gate"] = check_gate(result, require).to_dict()
    if out is None:
        return result
    out = Path(out)
    write_results(result, out / "audit.json")
    names = (f"{Path(reference).name} (reference)", f"{Path(candidate).name} (candidate)")
    write_audit_report(result, out / "audit.html", model_a, model_b,
                       getattr(loader, "dataset", None), names)
    return result


def explain(model_dir: str | Path | list, image_path: str | Path, out: str | Path,
            methods=("gradcam",), class_names: list[str] | None = None,
            label: str = "") -> list[Path]:
    """Heatmap overlays (one PNG per method and class) of a checkpoint on one image file.

    Classes: the named ones, else every class the model predicts (logit > 0; a softmax
    classifier's top-1), else its top-1. ``model_dir`` may be a list of checkpoints /
    ``pretrained:`` specs: each PNG then shows them one under the other, explaining the first
    model's classes. ``label`` prefixes each figure title (a model's name).
    """
    from ..report import save_overlay

    if isinstance(model_dir, (list, tuple)) and len(model_dir) > 1:
        return _explain_side_by_side(model_dir, image_path, out, methods, class_names)
    model_dir = model_dir[0] if isinstance(model_dir, (list, tuple)) else model_dir
    return [save_overlay(image, amap, Path(out) / file, title)
            for file, (image, amap, title) in _overlays(model_dir, image_path, methods,
                                                        class_names, label)]


def _overlays(ref, image_path, methods, class_names, label: str = "") -> list[tuple]:
    """What :func:`explain` draws for one model: ``(file name, (image, map, title))`` per
    method and class."""
    from ..attribution import EXPLAINERS, upsample

    model, meta = load_model(ref)
    for m in methods:
        if m not in EXPLAINERS:
            raise ValueError(f"unknown explainer {m!r}; known: {', '.join(EXPLAINERS)}")
    check_explainers(model, methods)
    size = meta["data"]["size"]
    x = _read_image(image_path, size)
    names = meta["classes"]
    if class_names:
        unknown = [c for c in class_names if c not in names]
        if unknown:
            known = names if len(names) <= 50 else difflib.get_close_matches(unknown[0], names)
            raise ValueError(f"unknown class {unknown[0]!r}; "
                             f"{'classes' if len(names) <= 50 else 'close'}: {', '.join(known)}")
        classes = [names.index(c) for c in class_names]
    else:
        with torch.no_grad():
            logits = model(x)[0]
        classes = [] if is_single_label(model) else \
            (logits > 0).nonzero()[:, 0].tolist()
        classes = classes or [int(logits.argmax())]
    cls = torch.tensor(classes)
    kind = "softmax" if is_single_label(model) else "sigmoid"
    rows = []
    for m in methods:
        maps, logits = EXPLAINERS[m](model, x, torch.zeros_like(cls), cls)
        maps = upsample(maps, (size, size))
        probs = class_probabilities(model, logits.detach())[0]
        for c, amap in zip(classes, maps):
            title = f"{label}{m}: {names[c]} (p={float(probs[c]):.2f}, {kind})"
            rows.append((f"{Path(image_path).stem}_{_file_part(names[c])}_{m}.png",
                         (x[0], amap, title)))
    return rows


def _file_part(name: str) -> str:
    """A class name usable in a file name (ImageNet's have spaces, commas, apostrophes)."""
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "class"


def _explain_side_by_side(refs, image_path, out, methods, class_names) -> list[Path]:
    """One PNG per method and class: each model's overlay (``explain``'s figure) stacked,
    all explaining the first model's classes."""
    from ..report import save_overlays

    model, meta = load_model(refs[0])
    if not class_names:
        x = _read_image(image_path, meta["data"]["size"])
        with torch.no_grad():
            logits = model(x)[0]
        class_names = [meta["classes"][int(logits.argmax())]]
    parts = [_overlays(ref, image_path, methods, class_names,
                       label=f"{_model_label(ref)}: ") for ref in refs]
    return [save_overlays([row for _, row in column], Path(out) / column[0][0])
            for column in zip(*parts)]


def _model_label(ref) -> str:
    """How a figure names a model: a checkpoint by its folder, a ``pretrained:`` spec by its
    model (and the folder its classes come from)."""
    if not is_pretrained(str(ref)):
        return Path(ref).name
    head, _, classes = str(ref).removeprefix("pretrained:").partition(",classes=")
    return head + (f" ({Path(classes).name} classes)" if classes else "")


def _read_image(path, size: int) -> torch.Tensor:
    """1 x 3 x size x size in [0, 1] (resized, aspect not kept); ``ValueError`` if unreadable."""
    from PIL import Image

    img = open_rgb(Path(path)).resize((size, size), Image.BILINEAR)  # bombs named too
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None] / 255.0


def versions() -> dict:
    import captum
    import torchvision
    return {"attrpreserve": __version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "captum": captum.__version__,
            "python": platform.python_version()}


def is_finished(directory: str | Path, cfg) -> bool:
    """True if ``directory`` holds a checkpoint trained with exactly ``cfg`` (the settings that
    change its result), so a rerun can reuse it (demo, sweeps, benchmarks)."""
    directory = Path(directory)
    side = directory / "model.json"
    if not side.is_file() or not (directory / "model.safetensors").is_file():
        return False
    return made_with(json.loads(side.read_text()).get("config", {}), cfg)


def reusable(directory: str | Path, cfg, force: bool = False) -> bool:
    """True when ``directory`` holds this very run (``is_finished``), which a rerun reuses;
    False when it holds none. A finished run made with other settings is a ``ValueError``
    unless ``force``: a rerun must not replace one experiment with another without a word."""
    if is_finished(directory, cfg):
        return True
    if force or not (Path(directory) / "model.json").is_file():
        return False
    raise ValueError(f"{directory} holds a finished run made with other settings: add --force "
                     "to replace it, or choose another --out")


def made_with(saved: dict, cfg) -> bool:
    """True if a checkpoint's saved ``config`` is ``cfg`` in every setting that changes its
    result."""
    return _settings(saved) == _settings(json.loads(json.dumps(asdict(cfg), default=str)))


# Settings added after checkpoints were written, with the value those checkpoints were made
# with: a config holding that value matches a checkpoint that lacks the key.
ADDED_SETTINGS = {"recalibrate_bn": 0, "resolution": "layer", "model_options": {},
                  "rollout": "none", "form": "cosine", "input_map": "none"}


def _settings(config: dict) -> dict:
    """A stage's config without what does not change its result (progress bars, workers, the
    device a photo cache serves batches on, the memory layout: float rounding only) or keys at
    their ``ADDED_SETTINGS`` value."""
    return {k: _settings(v) if isinstance(v, dict) else v for k, v in config.items()
            if k not in ("progress", "workers", "device", "channels_last")
            and not (k in ADDED_SETTINGS and v == ADDED_SETTINGS[k])}


def write_results(results: dict, path: str | Path) -> None:
    """results.json / audit.json, written atomically (a reader never sees half of it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(results, indent=2))


# (header, words.metric key): the task (single-label models: top-1; multi-label ones: mAP, F1
# at 0.5 and at the val split's threshold), agreement with the teacher, localisation on the
# fixed pair sets, then the paper-comparable numbers (each model's own predicted pairs)
TABLE_COLUMNS = (("mAP", "mAP"), ("F1", "F1"), ("F1@val", "F1_at_val_threshold"),
                 ("top1", "top1"), ("top1 agr", "top1_agreement"), ("rho", "spearman"),
                 ("IoU10", "topk_iou"), ("peak px", "peak_distance"),
                 ("P(hit|T)", "hit_given_teacher_hit"), ("PG all", "all/pointing_game"),
                 ("AUC all", "all/auc"), ("PG T-ok", "teacher_correct/pointing_game"),
                 ("AUC T-ok", "teacher_correct/auc"), ("PG paper", "pointing_game"),
                 ("AUC paper", "auc"))
TABLE_GAPS = (("PG", "pointing_game"), ("AUC", "auc"), ("rho", "spearman"))


def format_table(results: dict, explainer: str = "gradcam") -> str:
    """Plain-text results table: one row per run, the task, agreement with the teacher, then
    pointing game / AUC on all ground-truth pairs and on the teacher's correct pairs, then the
    paper-comparable pointing game / AUC (each model's own predicted pairs); columns without a
    value (mAP / F1 of single-label models, localisation without masks) are left out. Under
    it, each matched run's gap recovered on all pairs with its 95% interval, or "no gap", then
    with a control run the share of the compression-caused gap (control minus naive); the
    same for every other explainer evaluated, its name first.
    ``top1``: share of images whose top-scored class is one of their labels (top-1 accuracy;
    on unlabeled photos, agreement with the teacher's top-1)."""
    columns = [(h, k) for h, k in TABLE_COLUMNS
               if any(metric(r, k, explainer) is not None for r in results["runs"])]
    cols = ["run", *(h for h, _ in columns), "params", "MMACs", "ms"]
    rows = [cols]
    for r in results["runs"]:
        rows.append([r["name"], *(metric(r, k, explainer) for _, k in columns),
                     r["cost"]["params"], r["cost"]["macs"] / 1e6, r["cost"]["latency_ms"]])
    text = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in text) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                       enumerate(zip(row, widths))) for row in text]
    lines += _gap_lines(results, explainer, "")
    others = [e for e in results["runs"][0]["attribution"] if e != explainer]
    for other in others:  # each other explainer's gaps (the ones the loss never saw)
        lines += _gap_lines(results, other, f"{other}: ")
    return "\n".join(lines)


def _gap_lines(results: dict, explainer: str, label: str) -> list[str]:
    """The gap-recovered lines of ``explainer``'s maps (against the teacher, then beyond the
    control), each run's line prefixed with ``label``."""
    gaps = [(r, r["attribution"].get(explainer, {}).get("gap_recovered"))
            for r in results["runs"]]
    gaps = [(r, g) for r, g in gaps if g]
    if not gaps:
        return []
    lines = [] if label else [
        "gap recovered = (run - naive) / (teacher - naive), all ground-truth pairs, pooled, "
        "95% CI; no gap = the gap's interval includes 0"]
    width = max(len(r["name"]) for r, _ in gaps)
    for against in ("teacher", "control"):
        for r, g in gaps:
            entries = [gap_entry(r, k, explainer, against=against) for _, k in TABLE_GAPS]
            if not any(entries):
                continue
            beyond = "" if against == "teacher" else " (beyond the control: control - naive)"
            lines.append(f"  {label}{r['name']:<{width}}  vs {g['naive']}{beyond}: " + "; ".join(
                f"{h} {gap_words(e)}" for (h, _), e in zip(TABLE_GAPS, entries)))
    return lines


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def report(results: dict, path: str | Path, models: dict[str, str | Path | Loaded],
           title: str = "attrpreserve report") -> Path:
    """``report.html`` for an evaluation: tables, plots, curves, and heatmap grids of a few
    images of the evaluated split, drawn with ``models`` (name -> :class:`Loaded`, as
    :func:`evaluate` used them; a folder or spec is loaded here, and one that cannot be read is
    noted on the page instead of drawn)."""
    from ..report import ReportImages, write_report  # here: matplotlib loads only when drawn
    from ..report.maps import heatmaps
    from ..report.results_page import column_order
    from ..report.words import explainers_in

    loaded, skipped = {}, []
    for name, value in models.items():
        try:
            loaded.update(load_models({name: value}))
        except (OSError, ValueError) as exc:  # a report should not die on one bad checkpoint
            skipped.append(f"{name}: {exc}")
    ds = results["dataset"]
    data = DataConfig(**{k: ds[k] for k in ("spec", "size", "seed", "n_train", "n_val",
                                            "n_test", "batch_size")})
    dataset = data.loader(ds["split"]).dataset
    if hasattr(dataset, "with_classes") and loaded:  # photos: labeled as evaluated
        first = next(iter(loaded.values()))
        dataset = labels_for(first.model, first.meta["classes"])(dataset)
    hm = heatmaps({n: loaded[n].model for n in column_order(results, loaded)},
                  ReportImages.from_dataset(dataset), explainers_in(results) or ["gradcam"],
                  skipped=skipped)
    return write_report(results, path, title=title, heatmaps=hm,
                        histories={n: e.meta["history"] for n, e in loaded.items()})
