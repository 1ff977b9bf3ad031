"""Command line: ``attrpreserve demo|train|compress|evaluate``; flags override a YAML ``--config``.

No logic lives here: each command parses its flags into the pipeline's config objects.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import functools
import glob
import inspect
import os
import shlex
import sys
import warnings
from contextlib import nullcontext
from dataclasses import fields
from pathlib import Path

import yaml

from . import distributed, logs, outputs, pipeline, state
from .attribution import EXPLAINERS
from .data import PREPROCESS, SCENES_DEFAULT_N, get_preprocess
from .data.images import check_readable
from .evaluate import gate
from .engine import OPTIMIZERS, TrainConfig
from .matching import MATCHERS
from .pipeline import onnx_export
from .pipeline.configs import read_paths
from .pipeline.photos import STRENGTHS as PHOTO_STRENGTHS
from .recipes import option_flag
from .report.words import audit_headline

MATCHINGS = tuple(MATCHERS)


def _data_args(p: argparse.ArgumentParser, inherit: str = "") -> None:
    """Data flags, defaults from ``DataConfig``; with ``inherit`` (whose, e.g. "the
    teacher's") every unset flag keeps that checkpoint's value."""
    d = pipeline.DataConfig()
    g = p.add_argument_group("data" + (f" (unset flags: {inherit} data)" if inherit else ""))

    def add(flag, default, help, unset=None, inherited=inherit, **kwargs):
        """``unset``: what a default of None means; ``inherited``: the same with ``inherit``."""
        unset = inherited if inherit else unset
        g.add_argument(flag, default=None if inherit else default,
                       help=help + (f" (default: {unset})" if unset else ""), **kwargs)

    add("--data", d.spec, "'scenes' (built-in synthetic scenes), 'masks:PATH' (image+mask "
        "folder), 'images:FOLDER' (photos, unlabeled or in class subfolders) or "
        "'coco128:PATH' (COCO photos + masks); docs/pretrained.md")
    add("--size", None, "input size in px", type=int,
        unset=f"the --preprocess preset's size, else {d.size}",
        inherited=f"{inherit}; a 'pretrained:' model's native size, e.g. 224 for Lite0")
    add("--preprocess", d.preprocess, "named preset (docs/data.md): 'none', or 'paper' = 227 px, "
        "VOC mean/std inside the model, random-resized crop + flip of training images",
        choices=tuple(PREPROCESS))
    add("--data-seed", d.seed, "seed of the generated scenes", type=int)
    for split, n in SCENES_DEFAULT_N.items():
        add(f"--n-{split}", None, f"use N {split} images: photo folders N spread evenly over the "
            "split (each class keeping its share), other datasets the first N", type=int,
            unset=f"all; scenes {n}", metavar="N")
    add("--batch-size", d.batch_size, "images per batch (per optimizer step)", type=int)
    add("--workers", d.workers, "DataLoader worker processes (0: load in the main process); "
        "photos decode in parallel, worth it on a GPU machine. Random crops differ between "
        "values, so resume with the same one", type=int)


def _recipe_args(p: argparse.ArgumentParser) -> None:
    """Each recipe's options as flags, generated from its ``Options`` fields (one group per
    recipe; only the chosen ``--method``'s are used)."""
    for recipe in pipeline.RECIPES.values():
        g = p.add_argument_group(f"--method {recipe.name} ({recipe.label})")
        for f in fields(recipe.Options):
            g.add_argument(option_flag(f), dest=f"{recipe.name}.{f.name}", type=type(f.default),
                           default=f.default, choices=f.metadata.get("choices"),
                           metavar=None if f.metadata.get("choices") else f.name.upper(),
                           help=f.metadata["help"])


def _matcher_args(p: argparse.ArgumentParser) -> None:
    """The matchers' settings as flags, generated from their ``Options`` fields (a setting two
    matchers share, WCAM's and LRP's target, is one flag)."""
    seen = set()
    for name in MATCHERS:
        for f in fields(MATCHERS[name].Options) if MATCHERS[name] is not None else ():
            if f.name not in seen:
                seen.add(f.name)
                p.add_argument(option_flag(f), dest=f.name, type=type(f.default),
                               default=f.default, choices=f.metadata.get("choices"),
                               help=f.metadata["help"])


def _recipe_options(args: argparse.Namespace) -> dict:
    """The chosen recipe's options from the parsed flags; another recipe's flag set to a value
    other than its default is an error (it would be silently ignored)."""
    for recipe in pipeline.RECIPES.values():
        for f in fields(recipe.Options) if recipe.name != args.method else ():
            if getattr(args, f"{recipe.name}.{f.name}") != f.default:
                raise ValueError(f"{option_flag(f)} is an option of --method {recipe.name}, "
                                 f"not of --method {args.method}")
    recipe = pipeline.RECIPES[args.method]
    return {f.name: getattr(args, f"{recipe.name}.{f.name}") for f in fields(recipe.Options)}


def _train_args(p: argparse.ArgumentParser, t: TrainConfig) -> None:
    """Optimiser flags, defaults from the command's ``TrainConfig`` ``t``."""
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=t.epochs,
                   help="epochs of each training phase (each pruning round fine-tunes this many)")
    g.add_argument("--lr", type=float, default=t.lr, help="peak learning rate")
    g.add_argument("--momentum", type=float, default=t.momentum, help="SGD momentum (sgd only)")
    g.add_argument("--weight-decay", type=float, default=t.weight_decay,
                   help="weight decay (sgd: L2; adamw: decoupled)")
    g.add_argument("--schedule", choices=("cosine", "constant", "multistep"), default=t.schedule,
                   help="learning-rate schedule: cosine decay to 0, constant, or multistep "
                        "(x --gamma at --milestones)")
    g.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default=t.optimizer,
                   help="sgd (with --momentum, the paper's) or adamw")
    g.add_argument("--augment", action="store_true",
                   help="random 90-degree rotations and flips of each training batch (photo "
                        "folders get random-resized crops and flips without it)")
    g.add_argument("--freeze-bn", action="store_true",
                   help="BatchNorm keeps its running statistics while fine-tuning "
                        "(pretrained models on a few photos)")
    g.add_argument("--recalibrate-bn", type=int, default=t.recalibrate_bn, metavar="N",
                   help="re-estimate BatchNorm statistics from N training batches before "
                        "fine-tuning starts (after pruning surgery; 0 = keep them)")
    g.add_argument("--milestones",
                   help="--schedule multistep: comma-separated epochs where the lr is multiplied "
                        "by --gamma, e.g. 10,30,40 (default: none)")
    g.add_argument("--gamma", type=float, default=t.gamma, help="--schedule multistep: lr factor")
    g.add_argument("--max-steps", type=int, metavar="N",
                   help="stop each training phase (teacher, student, pruning round) after N "
                        "optimizer steps, e.g. for smoke tests (default: no limit)")
    g.add_argument("--amp", action="store_true",
                   help="bfloat16 mixed precision for the training steps (CUDA only)")
    g.add_argument("--channels-last", action="store_true",
                   help="train in the channels_last memory layout: the same arithmetic in "
                        "another order, 1.2-1.6x faster fine-tuning on CPU here; saved weights "
                        "are laid out as usual")
    g.add_argument("--seed", type=int, default=t.seed,
                   help="seed of training: initialisation, batch order, augmentation, WCAM's "
                        "channel drop")
    _progress_arg(g)


def _run_args(p: argparse.ArgumentParser) -> None:
    """Resume, checkpoint and device flags of the training commands."""
    g = p.add_argument_group("training state and devices")
    g.add_argument("--resume", action="store_true",
                   help="continue the unfinished run whose state is in OUT/.state (same flags)")
    g.add_argument("--checkpoint-every", type=int, metavar="N",
                   help="snapshot the training state every N optimizer steps "
                        "(default: after every epoch)")
    _device_arg(g, "under torchrun, cuda means cuda:LOCAL_RANK and the NCCL backend (gloo on "
                   "CPU)")


def _progress_arg(p) -> None:
    p.add_argument("--no-progress", action="store_true",
                   help="no progress reports (else: bars on a terminal; in a log or a pipe, one "
                        "line per epoch and per long phase)")


def _force_arg(p, what: str) -> None:
    p.add_argument("--force", action="store_true",
                   help=f"replace {what} (without it such an output is refused: exit 2, nothing "
                        "written)")


MODEL_REF = ("a checkpoint folder, or an ImageNet model 'pretrained:efficientnet-lite0' / "
             "'pretrained:ARCH=WEIGHTS.pth' / 'timm:NAME[=WEIGHTS]' (docs/pretrained.md)")


def _config_arg(p) -> None:
    p.add_argument("--config", help="YAML file whose keys are this command's long flags "
                                    "(default: none, flags only)")


def _split_arg(p, params) -> None:
    p.add_argument("--split", default=params["split"].default, choices=("train", "val", "test"),
                   help="the data split scored")


def _explainers_arg(p, flag: str, default: tuple[str, ...]) -> None:
    p.add_argument(flag, default=",".join(default),
                   help="comma-separated explainers: " + ", ".join(EXPLAINERS))


def _photo_strength(recipe: str) -> float | None:
    """``demo --photos``'s strength of ``recipe`` when --strength is not given (None for a
    recipe the photo presets have none for, e.g. one registered by a user)."""
    if recipe == pipeline.PHOTOS_CPU.recipe:
        return pipeline.PHOTOS_CPU.strength
    return PHOTO_STRENGTHS[recipe][0] if recipe in PHOTO_STRENGTHS else None


def _device_arg(p, what: str) -> None:
    p.add_argument("--device", default="auto",
                   help=f"cpu, cuda, or auto: cuda when available, else cpu; {what}")


class _Help(argparse.HelpFormatter):
    """Help showing each option's default as ``(default X)``, taken from the parser itself so it
    cannot drift from the code. An option whose default is unset (None, "") says what that
    means in its own help, as ``(default: ...)``; flags (store_true) are off unless given."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default in (None, "", argparse.SUPPRESS) \
                or not action.option_strings or action.nargs == 0:
            return text
        return f"{text} (default %(default)s)".strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attrpreserve",
        description="Compress vision models without breaking their explanations, and prove it.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command = functools.partial(sub.add_parser, formatter_class=_Help)
    teacher, compressing = pipeline.TeacherConfig(), pipeline.CompressConfig()
    demo, evaluate, audit, explain = (inspect.signature(f).parameters for f in (
        pipeline.demo, pipeline.evaluate, pipeline.audit, pipeline.explain))

    p = command("demo", help="teacher + every recipe x naive/AT/WCAM on built-in scenes",
                       description="Start from the shipped teacher of the built-in scenes (it "
                       "localises every class; bench/teacher.py retrains it), compress it with "
                       "every recipe (distillation, structured and unstructured pruning, "
                       "quantization), each naive, with AT and with WCAM; evaluate all on held-out "
                       "data (Grad-CAM, EBP, LRP and RAP, the paper's explainers; --quick: "
                       "Grad-CAM), write OUT/results.json and OUT/report.html and print a table. "
                       "Finished stages are reused when OUT already holds them.")
    p.add_argument("--quick", action="store_true",
                   help="the few-minute CPU setting: 30%% filter pruning only, Grad-CAM")
    p.add_argument("--family", choices=sorted(pipeline.DEMOS), default="vgg",
                   help="the teacher's family: vgg (the paper's) or vit, a small hybrid Vision "
                        "Transformer shipped like the VGG (its quick demo, --quick implied: heads "
                        "and MLP channels pruned; Grad-CAM on the token grid, attention rollout "
                        "and gradient-weighted rollout evaluated)")
    p.add_argument("--sweeps", action="store_true",
                   help="full demo only: also sweep each pruning / quantization recipe's "
                        "strength, naive vs WCAM (24 more fine-tuning runs), and draw the "
                        "curves in the report (OUT/sweep)")
    p.add_argument("--out", help=f"output folder (default: {demo['out'].default}; with --photos "
                                 "runs/photos)")
    _force_arg(p, "runs in OUT made with other settings (another seed, preset or recipe "
                  "strength); runs made with the same settings are reused, not retrained")
    p.add_argument("--seed", type=int, default=demo["seed"].default,
                   help="seed of the compression runs (the scenes, the shipped teacher and the "
                        "bootstrap stay those of seed 0)")
    _progress_arg(p)
    cpu = pipeline.PHOTOS_CPU
    g = p.add_argument_group(
        "real photos", "--photos FOLDER runs the CPU preset instead (pipeline.photos; a few "
        "minutes on 2 free cores): a pretrained EfficientNet-Lite0 restricted to the folder's "
        f"classes, fine-tuned on {cpu.n_train} of its photos at {cpu.size} px as a control "
        "(nothing compressed) and compressed by one recipe naive vs WCAM (matched at "
        f"{cpu.layer}, lambda {cpu.lam:g}), evaluated on {cpu.n_test} (top-1, Grad-CAM "
        "agreement at the head with the gap beyond the control, box localisation where the "
        "folder has a boxes.csv, top-1 on unseen photos)")
    g.add_argument("--photos", metavar="FOLDER",
                   help="a class-folder layout (Imagenette: train/ and val/ with wnid folders) "
                        "(default: none, the scenes demo)")
    g.add_argument("--recipe", choices=sorted(pipeline.RECIPES),
                   help="--photos: the recipe (kd: a half-width Lite0 from random init) "
                        f"(default: {pipeline.PHOTOS_CPU.recipe})")
    g.add_argument("--strength", type=float,
                   help="--photos: the recipe's strength (default: " + ", ".join(
                       f"{r} {_photo_strength(r):g}" for r in sorted(pipeline.RECIPES)
                       if _photo_strength(r) is not None) + ")")
    _device_arg(g, "--photos only: where training, the photo cache and explainers run")

    p = command("train", help="train a teacher", description="Train a teacher classifier "
                       "(multi-label, BCE), keep the epoch with the best validation mAP.")
    _config_arg(p)
    _data_args(p)
    p.add_argument("--model", default=teacher.model,
                   help="registered model name (vgg, vgg16, resnet18, ...) or timm:NAME (a timm "
                        "architecture, random init unless --init)")
    p.add_argument("--width", type=int, default=teacher.width, help="base width of the small VGG")
    p.add_argument("--width-divisor", type=float, default=teacher.width_divisor,
                   help="every width divided by R (vgg16: the paper's x2/x4/x8 layouts)")
    p.add_argument("--dropout", type=float, default=teacher.dropout,
                   help="dropout before the Linear head (0: it slowed the small VGG)")
    p.add_argument("--init", metavar="PATH",
                   help="initial weights: a state dict file (.safetensors, or .pt/.pth read "
                        "with weights_only=True: code in a pickle is refused) (default: random)")
    _train_args(p, teacher.train)
    _run_args(p)
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    _force_arg(p, "a finished checkpoint in OUT (--resume continues an unfinished one)")

    p = command("compress", help="compress a teacher, optionally matching attributions",
                       description="Compress a teacher checkpoint with a recipe (--method) "
                       "and optional attribution matching (none, AT, WCAM, LRP). Each recipe's "
                       "own flags are listed in its group below.")
    _config_arg(p)
    p.add_argument("--teacher", required=True, help="teacher: " + MODEL_REF)
    p.add_argument("--method", default=compressing.method, choices=tuple(pipeline.RECIPES),
                   help="; ".join(f"{r.name}: {r.summary}" for r in pipeline.RECIPES.values()))
    p.add_argument("--matching", default=compressing.matching, choices=MATCHINGS,
                   help="attribution matching: none (plain compression), at (attention "
                        "transfer), wcam (the paper's Grad-CAM matching) or lrp "
                        "(LRP-AlphaBeta(1,0) relevance at the matched layer)")
    p.add_argument("--lambda", dest="lam", type=float, default=compressing.lam,
                   help="weight of the matching loss (100 is the paper's)")
    p.add_argument("--layer", help="matched layer name, or several separated by commas (their "
                                   "losses averaged; top1 target) (default: each model's last "
                                   "feature block's output, models.default_layer)")
    _matcher_args(p)
    p.add_argument("--temperature", type=float, default=compressing.temperature,
                   help="distillation temperature T")
    p.add_argument("--alpha", type=float, default=compressing.alpha,
                   help="weight of the distillation term; 1 - alpha weighs the task loss on "
                        "labels")
    _recipe_args(p)
    _data_args(p, inherit="the teacher's")
    _train_args(p, compressing.train)
    _run_args(p)
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    _force_arg(p, "a finished checkpoint in OUT (--resume continues an unfinished one)")

    p = command("evaluate", help="score checkpoints: task, localisation, agreement, cost",
                       description="Evaluate one or more checkpoints on a split; agreement is "
                       "measured against --teacher.")
    _config_arg(p)
    p.add_argument("--model", action="append", required=True,
                   help=MODEL_REF + " (repeatable)")
    p.add_argument("--teacher", help="reference for agreement metrics: " + MODEL_REF
                                     + " (default: none, no agreement metrics)")
    p.add_argument("--control", metavar="MODEL",
                   help="one of the --model arguments: the teacher fine-tuned like the "
                        "compressed models with nothing compressed; matched runs then also "
                        "report the share of the compression-caused gap (control minus naive) "
                        "they recover (default: none)")
    _data_args(p, inherit="the teacher's (else the first model's)")
    _split_arg(p, evaluate)
    _explainers_arg(p, "--explainers", evaluate["explainers"].default)
    p.add_argument("--seed", type=int, default=evaluate["seed"].default,
                   help="seed of the bootstrap intervals, recorded in results.json")
    _progress_arg(p)
    p.add_argument("--out", required=True, help="results JSON file to write")
    _force_arg(p, "an existing --out or --report file")
    p.add_argument("--report", help="HTML report to write (default: --out with .html)")
    _device_arg(p, "where the explainers run (size and latency are always measured on the CPU)")

    p = command("audit", help="how far one model's explanations moved from another's",
                       description="Compare the explanations of --candidate with those of "
                       "--reference on a data split: agreement with bootstrap CIs, localisation "
                       "deltas, per class and per image, the images whose explanations moved "
                       "most, and whether agreeing predictions hide disagreeing explanations. "
                       "Writes OUT/audit.json and OUT/audit.html.")
    _config_arg(p)
    p.add_argument("--reference", required=True, help="reference (A): " + MODEL_REF)
    p.add_argument("--candidate", required=True, help="candidate (B): " + MODEL_REF)
    _data_args(p, inherit="the reference's")
    _split_arg(p, audit)
    _explainers_arg(p, "--explainers", audit["explainers"].default)
    p.add_argument("--n-boot", type=int, default=audit["n_boot"].default,
                   help="bootstrap replicates (0: no CIs)")
    p.add_argument("--top", type=int, default=audit["top"].default,
                   help="how many most-moved images to show")
    _device_arg(p, "where the explainers run")
    p.add_argument("--faithfulness", action="store_true",
                   help="also compare deletion / insertion AUC (slower)")
    p.add_argument("--seed", type=int, default=audit["seed"].default,
                   help="seed of the bootstrap")
    p.add_argument("--require", action="append", metavar="SPEC",
                   help="a release gate: comma-separated requirements [EXPLAINER:]MEASURE"
                        "[.low|.high] OP NUMBER, OP one of >= > <= <, e.g. "
                        "'spearman>=0.8,top1_agreement>=0.98' or 'gradcam:spearman.low>=0.7' "
                        "(.low / .high: the CI's ends; no prefix: every audited explainer). "
                        "The verdict goes into audit.json; exit status 1 with one line per "
                        "failed requirement, and a missing or undefined measure fails. "
                        "Measures: docs/metrics.md, 'Release gates'. Repeatable "
                        "(default: none, no gate)")
    _progress_arg(p)
    p.add_argument("--out", required=True, help="output folder")
    _force_arg(p, "OUT/audit.json and OUT/audit.html of an earlier audit")

    exporting = inspect.signature(onnx_export.export).parameters
    p = command("export", help="write a model as ONNX and check the file in onnxruntime",
                description="Write a model as an ONNX file: float, or int8 QDQ for a "
                "quantization-aware checkpoint (its int8 weights and learnt ranges; onnxruntime "
                "runs int8 kernels), and check the file in onnxruntime against the PyTorch "
                "model on the first --n images of the model's data (top-1 agreement, max "
                "|logit difference|). Writes OUT and OUT.json (classes, data, input size, the "
                "check, versions). OUT then works wherever a model is asked for, with the "
                "black-box explainers occlusion and rise; 'audit --candidate OUT' also scores "
                "the PyTorch model it came from. Needs the onnx extra: pip install "
                "'attrpreserve[onnx]'.")
    _config_arg(p)
    p.add_argument("--model", required=True, help="model to export: " + MODEL_REF)
    p.add_argument("--format", choices=("onnx",), default="onnx", help="file format")
    _data_args(p, inherit="the model's")
    p.add_argument("--split", default=exporting["split"].default,
                   choices=("train", "val", "test"), help="the split whose images check the file")
    p.add_argument("--n", type=int, default=exporting["n"].default,
                   help="images the check runs (the split's first N)")
    p.add_argument("--out", required=True, help="ONNX file to write (FILE.onnx; its sidecar "
                                                "FILE.onnx.json is written beside it)")
    _force_arg(p, "an existing --out file")

    p = command("explain", help="heatmap overlays of a checkpoint on an image (PNG)",
                       description="Draw each explainer's map over an image file: one PNG per "
                       "method and class, named IMAGE_CLASS_METHOD.png.")
    _config_arg(p)
    p.add_argument("--model", action="append", required=True,
                   help=MODEL_REF + "; repeat it to draw the models one under the other in "
                        "each PNG (the first one's classes)")
    p.add_argument("--image", required=True, help="image file (any size; resized to the model's)")
    p.add_argument("--class", dest="class_names", action="append",
                   help="class name to explain, repeatable (default: every class the model "
                        "predicts; a softmax model's top-1)")
    _explainers_arg(p, "--methods", explain["methods"].default)
    p.add_argument("--out", required=True, help="folder for the PNG files")
    _force_arg(p, "PNG files of the same image already in OUT")
    return parser


def _config_path(argv: list[str]) -> str | None:
    for i, tok in enumerate(argv):
        if tok == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if tok.startswith("--config="):
            return tok.split("=", 1)[1]
    return None


def _apply_config(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; keys of a ``--config`` YAML become defaults that flags still override."""
    path = _config_path(argv)
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001
    if not path or not argv or argv[0] not in commands:
        return parser.parse_args(argv)
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file {path} not found")
    values = _read_yaml(p) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of flag names to values")
    sub = commands[argv[0]]
    aliases = {opt.lstrip("-").replace("-", "_"): a for a in sub._actions  # noqa: SLF001
               for opt in a.option_strings if opt.startswith("--")}
    aliases.pop("config", None)
    aliases.pop("help", None)
    for key, value in values.items():
        action = aliases.get(str(key).replace("-", "_"))
        if action is None:
            close = difflib.get_close_matches(str(key).replace("-", "_"), list(aliases), n=1)
            raise ValueError(f"{path}: unknown key {key!r}"
                             + (f"; did you mean {close[0]!r}?" if close else ""))
        sub.set_defaults(**{action.dest: _config_value(path, key, action, value)})
        action.required = False  # a required flag given by the config is satisfied
    return parser.parse_args(argv)


def _read_yaml(path: Path):
    """The YAML document of ``path``; a ``ValueError`` naming the file and line if malformed."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"{path}{line}: not valid YAML ({problem})") from None


def _config_value(path: str, key, action: argparse.Action, value):
    """A YAML value checked like the flag would check its text (type, choices, booleans)."""
    def bad(expected: str):
        return ValueError(f"{path}: key {key!r} expects {expected}, got {value!r}")

    if action.nargs == 0:  # store_true flags
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if action.type in (int, float) and value is not None:
        if isinstance(value, bool) or (action.type is int and isinstance(value, float)):
            raise bad("an integer" if action.type is int else "a number")
        try:
            value = action.type(value)
        except (TypeError, ValueError):
            raise bad("an integer" if action.type is int else "a number") from None
    if action.choices is not None and value not in action.choices:
        raise bad("one of " + ", ".join(map(str, action.choices)))
    if action.type is None and isinstance(value, (dict, list)) and action.nargs is None:
        raise bad("a single value")
    return value


DATA_FLAGS = {"data": "spec", "size": "size", "data_seed": "seed", "n_train": "n_train",
              "n_val": "n_val", "n_test": "n_test", "batch_size": "batch_size",
              "preprocess": "preprocess", "workers": "workers"}


def _data(args) -> pipeline.DataConfig:
    values = {field: getattr(args, flag) for flag, field in DATA_FLAGS.items()}
    if values["size"] is None:
        values["size"] = get_preprocess(values["preprocess"]).size or 64
    return pipeline.DataConfig(**values)


def _data_overrides(args) -> dict:
    """Only the data flags given: the rest is taken from the teacher checkpoint."""
    return {field: getattr(args, flag) for flag, field in DATA_FLAGS.items()
            if getattr(args, flag) is not None}


def _train_cfg(args) -> TrainConfig:
    return TrainConfig(epochs=args.epochs, lr=args.lr, momentum=args.momentum,
                       weight_decay=args.weight_decay, schedule=args.schedule, seed=args.seed,
                       optimizer=args.optimizer, augment=args.augment,
                       freeze_bn=args.freeze_bn, recalibrate_bn=args.recalibrate_bn,
                       progress=not args.no_progress,
                       milestones=_ints(args.milestones, "--milestones"), gamma=args.gamma,
                       max_steps=args.max_steps, amp=args.amp,
                       channels_last=args.channels_last)


def _ints(value, flag: str) -> list[int]:
    """``"10,30,40"`` -> ``[10, 30, 40]``; a one-line error otherwise."""
    try:
        return [int(v) for v in str(value or "").split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} expects comma-separated integers, got {value!r}") from None


def _names(text: str) -> tuple[str, ...]:
    """``"a, b,c"`` -> ``("a", "b", "c")``."""
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _model_names(refs: list[str]) -> dict[str, str]:
    """``{name: ref}`` of evaluate's --model arguments, in order: each one's folder name, with
    as many parent folders as tell two apart (``runs/a/wcam`` and ``runs/b/wcam`` become
    ``a/wcam`` and ``b/wcam``); the same model given twice is an error."""
    seen: dict[str, str] = {}
    for ref in refs:
        key = os.path.realpath(ref)
        if key in seen:
            also = "" if seen[key] == ref else f" (as {seen[key]})"
            raise ValueError(f"--model {ref} is given twice{also}: give each model once")
        seen[key] = ref
    parts = {ref: Path(ref).parts or (ref,) for ref in refs}
    depth = dict.fromkeys(refs, 1)
    while True:
        names = {ref: "/".join(parts[ref][-depth[ref]:]) for ref in refs}
        clash = [r for r in refs if list(names.values()).count(names[r]) > 1]
        longer = [r for r in clash if depth[r] < len(parts[r])]
        if not longer:  # no clash left, or only the full paths themselves differ
            return {(ref if ref in clash else names[ref]): ref for ref in refs}
        for ref in longer:
            depth[ref] += 1


def _run_options(args) -> dict:
    """``resume`` / ``checkpoint_every`` / ``device`` for the pipeline, checked up front.

    An existing training state without ``--resume`` is a usage error: rerunning a command must
    not silently throw away an interrupted run.
    """
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every must be a positive number of steps, "
                         f"got {args.checkpoint_every}")
    args.device = distributed.resolve_device(args.device)
    if args.amp and not args.device.startswith("cuda"):
        raise ValueError("--amp (mixed precision) needs CUDA; this run is on the CPU "
                         "(drop --amp, or run where a GPU is available)")
    if state.exists(args.out) and not args.resume:
        raise ValueError(f"{state.state_dir(args.out)} holds the state of an unfinished run: "
                         f"add --resume to continue it, or delete that folder to start over")
    distributed.init_from_env(args.device)
    return {"resume": args.resume, "checkpoint_every": args.checkpoint_every,
            "device": args.device}


def _say(text: str) -> None:
    """Print on rank 0 only (every rank runs the same command under torchrun)."""
    if distributed.is_main():
        print(text)


def _say_classes(scope: str | None) -> None:
    """Which classes a ``pretrained:`` model was scored over (``pipeline.scope_to_folder``)."""
    if scope:
        print(f"classes: {scope}")


def _photos_demo(args) -> dict:
    """``demo --photos``: the CPU preset of ``pipeline.photos`` (one recipe, naive vs WCAM)."""
    if args.quick or args.sweeps:
        raise ValueError("--photos runs its own preset: drop --quick / --sweeps")
    recipe = args.recipe or pipeline.PHOTOS_CPU.recipe
    strength = args.strength if args.strength is not None else _photo_strength(recipe)
    if strength is None:
        raise ValueError(f"--photos --recipe {recipe}: the photo presets have no strength for "
                         "it; give --strength")
    cfg = pipeline.photos.with_overrides(pipeline.PHOTOS_CPU, recipe=recipe, strength=strength)
    return pipeline.photos_demo(args.photos, args.out or "runs/photos", cfg, seed=args.seed,
                                progress=not args.no_progress,
                                device=distributed.resolve_device(args.device), force=args.force)


def run(args: argparse.Namespace) -> int:
    """Check the command's outputs before any work, then run it holding their folder's lock."""
    folder = _claim(args)
    with outputs.lock(folder, f"attrpreserve {args.command}") if folder else nullcontext():
        return _run_command(args)


def _io(args) -> tuple[list[outputs.Output], list[tuple[str, str]]]:
    """The command's outputs (the first one's folder is locked) and the paths it reads."""
    Out, c = outputs.Output, args.command
    reads = [("--config", getattr(args, "config", None))]
    reads += [("--data", p) for p in read_paths(getattr(args, "data", None))]
    refs = {"compress": ["teacher"], "audit": ["reference", "candidate"], "train": ["init"],
            "evaluate": ["model", "teacher"], "explain": ["model", "image"],
            "export": ["model"], "demo": ["photos"]}.get(c, [])
    for name in refs:
        values = getattr(args, name, None)
        for value in values if isinstance(values, list) else [values]:
            reads += [(f"--{name}", p) for p in read_paths(value)]
    if c == "evaluate":
        return [Out("--out", args.out, False), Out("--report", _report(args), False)], reads
    if c == "export":
        return [Out("--out", args.out, False)], reads
    if c == "demo":
        return [Out("--out", args.out or ("runs/photos" if args.photos else "runs/demo"))], reads
    return [Out("--out", args.out)], reads


def _report(args) -> str | None:
    """evaluate's report file: ``--report``, else ``--out`` with ``.html``."""
    return args.report or (args.out and str(Path(args.out).with_suffix(".html")))


def _claim(args) -> Path | None:
    """``outputs.check`` of the command's outputs, and a finished result already there refused
    without ``--force``; returns the folder to lock (a file output's folder)."""
    outs, reads = _io(args)
    outputs.check(outs, reads)
    done = _finished(args)
    if done is not None and not getattr(args, "force", False):
        raise ValueError(f"{done} holds a finished result: add --force to replace it, or "
                         "choose another output")
    first = Path(outs[0].path)
    return first if outs[0].folder else first.parent


def _finished(args) -> Path | None:
    """The finished result the command would replace (None: nothing to replace; the demo
    checks each of its runs itself, ``stages.reusable``)."""
    c, out = args.command, Path(args.out or ".")
    if c in ("train", "compress") and not (args.resume and state.exists(out)):
        candidates = [out / "model.json"]  # --resume with nothing to resume starts over
    elif c == "evaluate":
        candidates = [out, Path(_report(args))] if args.out else []
    elif c == "audit":
        candidates = [out / "audit.json", out / "audit.html"]
    elif c == "explain":
        candidates = sorted(out.glob(f"{glob.escape(Path(args.image).stem)}_*.png"))[:1]
    elif c == "export":
        candidates = [out]
    else:
        candidates = []
    return next((p for p in candidates if p.exists()), None)


def _run_command(args: argparse.Namespace) -> int:
    if args.command == "demo":
        if args.sweeps and (args.quick or args.family != "vgg"):
            raise ValueError("--sweeps needs the full demo (a quick one runs one recipe; the "
                             "full one is the VGG's): drop "
                             + ("--quick" if args.quick else "--family"))
        if args.photos:
            results, out = _photos_demo(args), args.out or "runs/photos"
        else:
            out = args.out or "runs/demo"
            cfg = None if args.family == "vgg" else pipeline.DEMOS[args.family]
            results = pipeline.demo(out, quick=args.quick, seed=args.seed,
                                    progress=not args.no_progress, sweeps=args.sweeps,
                                    force=args.force, cfg=cfg)
        print(pipeline.format_table(results))
        print(f"wrote {Path(out) / 'results.json'} and report.html "
              f"({results['wall_seconds']:.0f} s)")
    elif args.command == "train":
        cfg = pipeline.TeacherConfig(data=_data(args), model=args.model, width=args.width,
                                     dropout=args.dropout, train=_train_cfg(args),
                                     init=args.init, width_divisor=args.width_divisor)
        _, meta = pipeline.train_teacher(cfg, args.out, **_run_options(args))
        _say(f"teacher saved to {args.out} (val mAP {meta['history']['best_val_mAP']:.3f}, "
             f"epoch {meta['history']['best_epoch']})")
    elif args.command == "compress":
        cfg = pipeline.CompressConfig(
            teacher=args.teacher, method=args.method, matching=args.matching, drop=args.drop,
            lam=args.lam, target=args.target, resolution=args.resolution,
            rollout=args.rollout, form=args.form, input_map=args.input_map,
            temperature=args.temperature, alpha=args.alpha, layer=args.layer, options=_recipe_options(args), data=_data_overrides(args),
            train=_train_cfg(args))
        _, meta = pipeline.compress(cfg, args.out, **_run_options(args))
        extra = (f", sparsity {meta['compression']['sparsity']:.3f}"
                 if "sparsity" in meta["compression"] else "")
        _say(f"compressed model saved to {args.out} "
             f"(val mAP {meta['history']['best_val_mAP']:.3f}{extra})")
    elif args.command == "evaluate":
        models = _model_names(args.model)
        control = None
        if args.control:
            if args.control not in args.model:
                raise ValueError(f"--control {args.control} is not one of the --model "
                                 "arguments")
            control = next(name for name, ref in models.items() if ref == args.control)
        teacher = None
        if args.teacher:
            teacher = Path(args.teacher).name + (" (teacher)" if Path(args.teacher).name in models
                                                 else "")
            models = {teacher: args.teacher, **models}
        explainers, device = _names(args.explainers), distributed.resolve_device(args.device)
        refs, scope = pipeline.scope_to_folder(list(models.values()), _data_overrides(args))
        models = pipeline.load_models(dict(zip(models, refs)))  # once, for scores and report
        with logs.phase("evaluate", not args.no_progress):
            results = pipeline.evaluate(models, teacher, _data_overrides(args), args.split,
                                        explainers, seed=args.seed,
                                        progress=logs.bars(not args.no_progress), device=device,
                                        control=control)
        pipeline.write_results(results, args.out)
        report = pipeline.report(results, _report(args),
                                 models)
        _say_classes(scope)
        for e in explainers:
            print(f"[{e}]\n{pipeline.format_table(results, e)}")
        print(f"wrote {args.out} and {report}")
    elif args.command == "audit":
        explainers = _names(args.explainers)
        requirements = gate.parse(args.require) if args.require else None  # before any work
        gate.require_explainers(requirements or (), explainers)
        (reference, candidate), scope = pipeline.scope_to_folder(
            [args.reference, args.candidate], _data_overrides(args))
        with logs.phase("audit", not args.no_progress):
            result = pipeline.audit(reference, candidate, args.out,
                                    _data_overrides(args), args.split, explainers,
                                    n_boot=args.n_boot, top=args.top, seed=args.seed,
                                    faithfulness=args.faithfulness,
                                    progress=logs.bars(not args.no_progress),
                                    device=distributed.resolve_device(args.device),
                                    require=requirements)
        _say_classes(scope)
        for e in explainers:
            print(f"[{e}] " + audit_headline(result, e)["summary"])
            if "source_candidate" in result:  # an ONNX candidate beside its PyTorch source
                print(onnx_export.source_line(result, e))
        print(f"wrote {Path(args.out) / 'audit.json'} and {Path(args.out) / 'audit.html'}")
        if requirements:
            return _gate_status(result["gate"])
    elif args.command == "export":
        sidecar = onnx_export.export(args.model, args.out, _data_overrides(args), args.split,
                                     args.n)
        print(onnx_export.export_lines(sidecar, args.out))
    elif args.command == "explain":
        methods = _names(args.methods)
        check_readable([Path(args.image)])  # a bomb or unreadable image, named, before loading
        for path in pipeline.explain(args.model, args.image, args.out, methods,
                                     args.class_names):
            print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    formatter, warnings.formatwarning = warnings.formatwarning, _warning_line
    args = None
    try:
        args = _apply_config(parser, argv)
        _refuse_ignored(args)
        code = run(args)
    except (ValueError, FileNotFoundError) as exc:  # usage: bad flags, config, paths
        code = _error(exc, 2)
    except OSError as exc:  # writing an output: disk full, read-only, a file in the way
        if not exc.errno:
            raise
        code = _error(_os_error(exc, getattr(args, "out", None)), 2)
    except FloatingPointError as exc:  # training diverged; the last good state is kept
        code = _error(exc, 1)
    except KeyboardInterrupt:
        code = _interrupted(argv, args)
    finally:
        warnings.formatwarning = formatter
    distributed.shutdown(wait=code == 0)
    return code


# Errors of writing (the rest are "cannot access": a permission, a missing parent).
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EEXIST, errno.ENOTDIR,
                errno.EISDIR, errno.ENAMETOOLONG, errno.EFBIG}


def _gate_status(verdict: dict) -> int:
    """``audit --require``: 0 and one "gate passed" line, or 1 and one stderr line per failed
    requirement (``attrpreserve: gate: gradcam spearman 0.61, required >= 0.8``)."""
    failed = [c["line"] for c in verdict["checks"] if not c["passed"]]
    if not failed:
        print("gate passed: " + "; ".join(c["line"] for c in verdict["checks"]))
        return 0
    for line in failed:
        print(f"{_prefix('gate')}{line}", file=sys.stderr)
    return 1


def _os_error(exc: OSError, out: str | None) -> str:
    """``cannot write PATH: <reason>``: the path the error names, else the command's --out."""
    verb = "cannot write" if exc.errno in WRITE_ERRNOS else "cannot access"
    where = f" {exc.filename}" if exc.filename else f" under {out}" if out else ""
    return f"{verb}{where}: {exc.strerror or os.strerror(exc.errno)}"


def _interrupted(argv: list[str], args) -> int:
    """Ctrl-C: one line; a training run with a snapshot in OUT/.state says how to continue it
    (the same command with --resume). Exit status 130, the shell's for SIGINT."""
    out = getattr(args, "out", None)
    line = "interrupted"
    if getattr(args, "command", None) in ("train", "compress") and out and state.exists(out):
        again = ["attrpreserve", *(a for a in argv if a != "--resume"), "--resume"]
        line += f"; continue with: {shlex.join(again)}"
    print(f"attrpreserve: {line}", file=sys.stderr)
    return 130


def _refuse_ignored(args) -> None:
    """A flag the command would ignore is an error (``demo``'s --photos options without it,
    its --family with it)."""
    if args.command != "demo":
        return
    if args.photos and args.family != "vgg":
        raise ValueError("--family applies to the scenes demo only (--photos fine-tunes a "
                         "pretrained EfficientNet-Lite0): drop --family or --photos")
    if not args.photos:
        given = [flag for flag, value, default in (
            ("--device", args.device, "auto"), ("--recipe", args.recipe, None),
            ("--strength", args.strength, None)) if value != default]
        if given:
            raise ValueError(f"{given[0]} applies to demo --photos only: add --photos FOLDER "
                             f"or drop {given[0]}")


def _prefix(kind: str) -> str:
    """``"attrpreserve: error: "``, with the rank when there are several."""
    rank = f"[rank {distributed.rank()}] " if distributed.world_size() > 1 else ""
    return f"attrpreserve: {rank}{kind}: "


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """A warning as one line (``warnings.formatwarning``): no file, line number or source."""
    return f"{_prefix('warning')}{message}\n"


def _error(exc: Exception, code: int) -> int:
    """One line on stderr (prefixed with the rank when there are several); returns ``code``."""
    print(f"{_prefix('error')}{exc}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
