"""Command line: ``attrpreserve demo|train|compress|evaluate``; flags override a YAML ``--config``.

No logic lives here: each command parses its flags into the pipeline's config objects.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import warnings
from dataclasses import fields
from pathlib import Path

import yaml

from . import distributed, logs, pipeline, state
from .data import PREPROCESS, get_preprocess
from .engine import TrainConfig
from .matching import MATCHERS
from .pipeline.photos import STRENGTHS as PHOTO_STRENGTHS
from .recipes import option_flag
from .report.words import audit_headline

MATCHINGS = tuple(MATCHERS)


def _data_args(p: argparse.ArgumentParser, inherit: bool = False) -> None:
    """Data flags; with ``inherit`` every unset flag keeps the teacher checkpoint's value."""
    g = p.add_argument_group("data" + (" (unset flags: the teacher's data)" if inherit else ""))
    g.add_argument("--data", default=None if inherit else "scenes",
                   help="'scenes' (built-in synthetic scenes), 'masks:PATH' (image+mask folder), "
                        "'images:FOLDER' (photos, unlabeled or in class subfolders) or "
                        "'coco128:PATH' (COCO photos + masks); docs/pretrained.md")
    g.add_argument("--size", type=int, default=None,
                   help="input size in px (default: the preprocess preset's, else 64)")
    g.add_argument("--preprocess", choices=tuple(PREPROCESS), default=None if inherit else "none",
                   help="named preset (docs/data.md): 'none', or 'paper' = 227 px, VOC mean/std "
                        "inside the model, random-resized crop + flip of training images")
    g.add_argument("--data-seed", type=int, default=None if inherit else 0,
                   help="seed of the generated scenes")
    g.add_argument("--n-train", type=int, help="use only the first N training images")
    g.add_argument("--n-val", type=int, help="use only the first N validation images")
    g.add_argument("--n-test", type=int, help="use only the first N test images")
    g.add_argument("--batch-size", type=int, default=None if inherit else 64)
    g.add_argument("--workers", type=int, default=None if inherit else 0,
                   help="DataLoader worker processes (default 0: load in the main process); "
                        "photos decode in parallel, worth it on a GPU machine. Random crops "
                        "differ between values, so resume with the same one")


def _recipe_args(p: argparse.ArgumentParser) -> None:
    """Each recipe's options as flags, generated from its ``Options`` fields (one group per
    recipe; only the chosen ``--method``'s are used)."""
    for recipe in pipeline.RECIPES.values():
        g = p.add_argument_group(f"--method {recipe.name} ({recipe.label})")
        for f in fields(recipe.Options):
            g.add_argument(option_flag(f), dest=f"{recipe.name}.{f.name}", type=type(f.default),
                           default=f.default, choices=f.metadata.get("choices"),
                           metavar=None if f.metadata.get("choices") else f.name.upper(),
                           help=f"{f.metadata['help']} (default {f.default})")


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


def _train_args(p: argparse.ArgumentParser, epochs: int, lr: float) -> None:
    g = p.add_argument_group("optimisation (SGD with momentum)")
    g.add_argument("--epochs", type=int, default=epochs)
    g.add_argument("--lr", type=float, default=lr)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight-decay", type=float, default=5e-4)
    g.add_argument("--schedule", choices=("cosine", "constant", "multistep"), default="cosine")
    g.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd",
                   help="sgd (with momentum, the paper's) or adamw")
    g.add_argument("--augment", action="store_true",
                   help="random 90-degree rotations and flips of each training batch (photo "
                        "folders get random-resized crops and flips without it)")
    g.add_argument("--freeze-bn", action="store_true",
                   help="BatchNorm keeps its running statistics while fine-tuning "
                        "(pretrained models on a few photos)")
    g.add_argument("--recalibrate-bn", type=int, default=0, metavar="N",
                   help="re-estimate BatchNorm statistics from N training batches before "
                        "fine-tuning starts (after pruning surgery; 0 = keep them)")
    g.add_argument("--milestones", default="",
                   help="--schedule multistep: comma-separated epochs where the lr is multiplied by "
                        "--gamma (e.g. 10,30,40)")
    g.add_argument("--gamma", type=float, default=0.1, help="--schedule multistep: lr factor")
    g.add_argument("--max-steps", type=int, metavar="N",
                   help="stop each training phase (teacher, student, pruning round) after N "
                        "optimizer steps (smoke tests)")
    g.add_argument("--amp", action="store_true",
                   help="bfloat16 mixed precision for the training steps (CUDA only)")
    g.add_argument("--seed", type=int, default=0)
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


def _device_arg(p, what: str) -> None:
    p.add_argument("--device", default="auto",
                   help=f"auto (default: cuda when available, else cpu), cpu or cuda; {what}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attrpreserve",
        description="Compress vision models without breaking their explanations, and prove it.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="teacher + every recipe x naive/AT/WCAM on built-in scenes",
                       description="Start from the shipped teacher of the built-in scenes (it "
                       "localises every class; bench/teacher.py retrains it), compress it with "
                       "every recipe (distillation, structured and unstructured pruning, "
                       "quantization), each naive, with AT and with WCAM; evaluate all on held-out "
                       "data (Grad-CAM, EBP, LRP and RAP, the paper's explainers; --quick: "
                       "Grad-CAM), write OUT/results.json and OUT/report.html and print a table. "
                       "Finished stages are reused when OUT already holds them.")
    p.add_argument("--quick", action="store_true",
                   help="the few-minute CPU setting: 30%% filter pruning only, Grad-CAM")
    p.add_argument("--sweeps", action="store_true",
                   help="full demo only: also sweep each pruning / quantization recipe's "
                        "strength, naive vs WCAM (24 more fine-tuning runs), and draw the "
                        "curves in the report (OUT/sweep)")
    p.add_argument("--out", help="output folder (default runs/demo, with --photos runs/photos)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the compression runs and the bootstrap (the scenes and the "
                        "shipped teacher stay those of seed 0)")
    _progress_arg(p)
    g = p.add_argument_group(
        "real photos", "--photos FOLDER runs the CPU preset instead (pipeline.photos; about three "
        "minutes on 2 free cores): a pretrained EfficientNet-Lite0 restricted to the folder's "
        "classes, compressed by one recipe naive vs WCAM on 800 of its photos at 128 px, "
        "evaluated on 400 (Grad-CAM agreement, top-1, also on unseen photos)")
    g.add_argument("--photos", metavar="FOLDER",
                   help="a class-folder layout (Imagenette: train/ and val/ with wnid folders)")
    g.add_argument("--recipe", choices=sorted(pipeline.RECIPES),
                   help="--photos: the recipe (default unstructured; kd: a half-width Lite0 "
                        "from random init)")
    g.add_argument("--strength", type=float,
                   help="--photos: the recipe's strength (default: unstructured 0.5, "
                        "structured 0.3, kd 0.5, quantization 8)")
    _device_arg(g, "--photos only: where training, the photo cache and explainers run")

    p = sub.add_parser("train", help="train a teacher", description="Train a teacher classifier "
                       "(multi-label, BCE), keep the epoch with the best validation mAP.")
    p.add_argument("--config", help="YAML file whose keys are this command's long flags")
    _data_args(p)
    p.add_argument("--model", default="vgg", help="registered model name (vgg, vgg16)")
    p.add_argument("--width", type=int, default=16, help="base width of the small VGG")
    p.add_argument("--width-divisor", type=float, default=1.0,
                   help="every width divided by R (vgg16: the paper's x2/x4/x8 layouts)")
    p.add_argument("--dropout", type=float, default=0.0,
                   help="dropout before the Linear head (default 0: it slowed the small VGG)")
    p.add_argument("--init", metavar="PATH",
                   help="initial weights: a state dict file (.safetensors, or .pt/.pth read "
                        "with weights_only=True: code in a pickle is refused)")
    _train_args(p, epochs=15, lr=0.05)
    _run_args(p)
    p.add_argument("--out", required=True, help="checkpoint folder to write")

    p = sub.add_parser("compress", help="compress a teacher, optionally matching attributions",
                       description="Compress a teacher checkpoint with a recipe (--method) "
                       "and optional attribution matching (none, AT, WCAM, LRP). Each recipe's "
                       "own flags are listed in its group below.")
    p.add_argument("--config", help="YAML file whose keys are this command's long flags")
    p.add_argument("--teacher", required=True,
                   help="teacher checkpoint folder, or 'pretrained:efficientnet-lite0' / "
                        "'pretrained:ARCH=WEIGHTS.pth' (ImageNet; docs/pretrained.md)")
    p.add_argument("--method", default="kd", choices=tuple(pipeline.RECIPES),
                   help="; ".join(f"{r.name}: {r.summary}" for r in pipeline.RECIPES.values()))
    p.add_argument("--matching", default="wcam", choices=MATCHINGS,
                   help="attribution matching: none, at (attention transfer), wcam (the paper's "
                   "Grad-CAM matching, default) or lrp (LRP-AlphaBeta(1,0) relevance at the "
                   "matched layer)")
    p.add_argument("--drop", type=float, default=0.3,
                   help="WCAM: fraction of teacher channels dropped per step (default 0.3)")
    p.add_argument("--lambda", dest="lam", type=float, default=100.0,
                   help="weight of the matching loss (default 100, the paper's)")
    p.add_argument("--target", choices=("top1", "labels"), default="top1",
                   help="WCAM classes: teacher's top-1 (paper) or every positive label")
    p.add_argument("--layer", help="matched layer name (default: last conv block's output)")
    p.add_argument("--temperature", type=float, default=4.0, help="KD temperature T")
    p.add_argument("--alpha", type=float, default=0.9, help="KD weight alpha")
    _recipe_args(p)
    _data_args(p, inherit=True)
    _train_args(p, epochs=15, lr=0.05)
    _run_args(p)
    p.add_argument("--out", required=True, help="checkpoint folder to write")

    p = sub.add_parser("evaluate", help="score checkpoints: task, localisation, agreement, cost",
                       description="Evaluate one or more checkpoints on a split; agreement is "
                       "measured against --teacher.")
    p.add_argument("--config", help="YAML file whose keys are this command's long flags")
    p.add_argument("--model", action="append", required=True,
                   help="checkpoint folder (repeatable)")
    p.add_argument("--teacher", help="reference checkpoint folder (or 'pretrained:...' spec) "
                                      "for agreement metrics")
    _data_args(p, inherit=True)
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--explainers", default="gradcam", help="comma-separated (default gradcam)")
    p.add_argument("--seed", type=int, default=0)
    _progress_arg(p)
    p.add_argument("--out", required=True, help="results JSON file to write")
    p.add_argument("--report", help="HTML report to write (default: --out with .html)")
    _device_arg(p, "where the explainers run (size and latency are always measured on the CPU)")

    p = sub.add_parser("audit", help="how far one model's explanations moved from another's",
                       description="Compare the explanations of --candidate with those of "
                       "--reference on a data split: agreement with bootstrap CIs, localisation "
                       "deltas, per class and per image, the images whose explanations moved "
                       "most, and whether agreeing predictions hide disagreeing explanations. "
                       "Writes OUT/audit.json and OUT/audit.html.")
    p.add_argument("--config", help="YAML file whose keys are this command's long flags")
    p.add_argument("--reference", required=True,
                   help="reference checkpoint folder (A), or a 'pretrained:...' spec")
    p.add_argument("--candidate", required=True, help="candidate checkpoint folder (B)")
    _data_args(p, inherit=True)
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--explainers", default="gradcam", help="comma-separated (default gradcam)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (0: no CIs)")
    p.add_argument("--top", type=int, default=12, help="how many most-moved images to show")
    _device_arg(p, "where the explainers run")
    p.add_argument("--faithfulness", action="store_true",
                   help="also compare deletion / insertion AUC (slower)")
    p.add_argument("--seed", type=int, default=0)
    _progress_arg(p)
    p.add_argument("--out", required=True, help="output folder")

    p = sub.add_parser("explain", help="heatmap overlays of a checkpoint on an image (PNG)",
                       description="Draw each explainer's map over an image file: one PNG per "
                       "method and class, named IMAGE_CLASS_METHOD.png.")
    p.add_argument("--config", help="YAML file whose keys are this command's long flags")
    p.add_argument("--model", action="append", required=True,
                   help="checkpoint folder or 'pretrained:...' spec; repeat it to draw the "
                        "models one under the other in each PNG (the first one's classes)")
    p.add_argument("--image", required=True, help="image file (any size; resized to the model's)")
    p.add_argument("--class", dest="class_names", action="append",
                   help="class name to explain (repeatable; default: every predicted class)")
    p.add_argument("--methods", default="gradcam",
                   help="comma-separated explainers (default gradcam): gradcam, gradient, "
                        "input_x_gradient, ig, lrp, lrp_a1b0, ebp, rap, occlusion, rise")
    p.add_argument("--out", required=True, help="folder for the PNG files")
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
    values = yaml.safe_load(p.read_text()) or {}
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
                       max_steps=args.max_steps, amp=args.amp)


def _ints(value, flag: str) -> list[int]:
    """``"10,30,40"`` -> ``[10, 30, 40]``; a one-line error otherwise."""
    try:
        return [int(v) for v in str(value or "").split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} expects comma-separated integers, got {value!r}") from None


def _names(text: str) -> tuple[str, ...]:
    """``"a, b,c"`` -> ``("a", "b", "c")``."""
    return tuple(n.strip() for n in text.split(",") if n.strip())


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


def _photos_demo(args) -> dict:
    """``demo --photos``: the CPU preset of ``pipeline.photos`` (one recipe, naive vs WCAM)."""
    if args.quick or args.sweeps:
        raise ValueError("--photos runs its own preset: drop --quick / --sweeps")
    recipe = args.recipe or pipeline.PHOTOS_CPU.recipe
    strength = args.strength if args.strength is not None else (
        pipeline.PHOTOS_CPU.strength if recipe == pipeline.PHOTOS_CPU.recipe
        else PHOTO_STRENGTHS[recipe][0])
    cfg = pipeline.photos.with_overrides(pipeline.PHOTOS_CPU, recipe=recipe, strength=strength)
    return pipeline.photos_demo(args.photos, args.out or "runs/photos", cfg, seed=args.seed,
                                progress=not args.no_progress,
                                device=distributed.resolve_device(args.device))


def run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        if args.sweeps and args.quick:
            raise ValueError("--sweeps needs the full demo (the quick one runs one recipe); "
                             "drop --quick")
        if args.photos:
            results, out = _photos_demo(args), args.out or "runs/photos"
        else:
            out = args.out or "runs/demo"
            results = pipeline.demo(out, quick=args.quick, seed=args.seed,
                                    progress=not args.no_progress, sweeps=args.sweeps)
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
            lam=args.lam, target=args.target, temperature=args.temperature, alpha=args.alpha,
            layer=args.layer, options=_recipe_options(args), data=_data_overrides(args),
            train=_train_cfg(args))
        _, meta = pipeline.compress(cfg, args.out, **_run_options(args))
        extra = (f", sparsity {meta['compression']['sparsity']:.3f}"
                 if "sparsity" in meta["compression"] else "")
        _say(f"compressed model saved to {args.out} "
             f"(val mAP {meta['history']['best_val_mAP']:.3f}{extra})")
    elif args.command == "evaluate":
        models = {Path(m).name or m: m for m in args.model}
        teacher = None
        if args.teacher:
            teacher = Path(args.teacher).name + (" (teacher)" if Path(args.teacher).name in models
                                                 else "")
            models = {teacher: args.teacher, **models}
        explainers, device = _names(args.explainers), distributed.resolve_device(args.device)
        models = pipeline.load_models(models)  # once, for the evaluation and the report
        with logs.phase("evaluate", not args.no_progress):
            results = pipeline.evaluate(models, teacher, _data_overrides(args), args.split,
                                        explainers, seed=args.seed,
                                        progress=logs.bars(not args.no_progress), device=device)
        pipeline.write_results(results, args.out)
        report = pipeline.report(results, args.report or Path(args.out).with_suffix(".html"),
                                 models)
        for e in explainers:
            print(f"[{e}]\n{pipeline.format_table(results, e)}")
        print(f"wrote {args.out} and {report}")
    elif args.command == "audit":
        explainers = _names(args.explainers)
        with logs.phase("audit", not args.no_progress):
            result = pipeline.audit(args.reference, args.candidate, args.out,
                                    _data_overrides(args), args.split, explainers,
                                    n_boot=args.n_boot, top=args.top, seed=args.seed,
                                    faithfulness=args.faithfulness,
                                    progress=logs.bars(not args.no_progress),
                                    device=distributed.resolve_device(args.device))
        for e in explainers:
            print(f"[{e}] " + audit_headline(result, e)["summary"])
        print(f"wrote {Path(args.out) / 'audit.json'} and {Path(args.out) / 'audit.html'}")
    elif args.command == "explain":
        methods = _names(args.methods)
        for path in pipeline.explain(args.model, args.image, args.out, methods,
                                     args.class_names):
            print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    formatter, warnings.formatwarning = warnings.formatwarning, _warning_line
    try:
        args = _apply_config(parser, argv)
        code = run(args)
    except (ValueError, FileNotFoundError) as exc:  # usage: bad flags, config, paths
        code = _error(exc, 2)
    except FloatingPointError as exc:  # training diverged; the last good state is kept
        code = _error(exc, 1)
    finally:
        warnings.formatwarning = formatter
    distributed.shutdown(wait=code == 0)
    return code


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
