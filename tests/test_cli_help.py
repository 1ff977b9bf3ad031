"""--help tells the truth: every option of every command shows its default, equal to the
default of the config field or pipeline parameter it sets."""

import argparse
import inspect
import re
from dataclasses import fields

import pytest

from attrpreserve import pipeline
from attrpreserve.cli import DATA_FLAGS, build_parser
from attrpreserve.engine import TrainConfig
from attrpreserve.pipeline import onnx_export

INHERITED = object()  # a data flag left unset keeps the reference checkpoint's value


def _params(fn) -> dict:
    return {k: None if v.default is inspect.Parameter.empty else v.default
            for k, v in inspect.signature(fn).parameters.items()}


def _train(cfg: TrainConfig) -> dict:
    return {**{f.name: getattr(cfg, f.name) for f in fields(TrainConfig)},
            "no_progress": not cfg.progress, "resume": False, "checkpoint_every": None,
            "device": "auto"}


def code_defaults() -> dict[str, dict]:
    """Each command's option (by dest) -> the code's default for what it sets."""
    teacher, comp, data = pipeline.TeacherConfig(), pipeline.CompressConfig(), pipeline.DataConfig()
    own_data = {flag: getattr(data, name) for flag, name in DATA_FLAGS.items()}
    inherited = dict.fromkeys(DATA_FLAGS, INHERITED)
    recipes = {f"{r.name}.{f.name}": f.default for r in pipeline.RECIPES.values()
               for f in fields(r.Options)}
    demo, evaluate, audit, explain = map(_params, (pipeline.demo, pipeline.evaluate,
                                                   pipeline.audit, pipeline.explain))
    exporting = _params(onnx_export.export)
    return {
        "demo": {"quick": False, "sweeps": False, "out": demo["out"], "seed": demo["seed"],
                 "no_progress": not demo["progress"], "photos": None, "family": "vgg",
                 "recipe": pipeline.PHOTOS_CPU.recipe, "strength": pipeline.PHOTOS_CPU.strength,
                 "device": "auto"},
        "train": {**own_data, **_train(teacher.train),
                  **{k: getattr(teacher, k) for k in ("model", "width", "width_divisor",
                                                      "dropout", "init")}},
        "compress": {**inherited, **_train(comp.train), **recipes,
                     **{k: getattr(comp, k) for k in ("method", "matching", "drop", "lam",
                                                      "target", "resolution", "rollout", "form",
                                                      "input_map", "layer", "temperature",
                                                      "alpha")}},
        "evaluate": {**inherited, "teacher": evaluate["teacher"], "control": evaluate["control"],
                     "split": evaluate["split"],
                     "explainers": evaluate["explainers"], "seed": evaluate["seed"],
                     "no_progress": not evaluate["progress"], "report": None, "device": "auto"},
        "audit": {**inherited, **{k: audit[k] for k in ("split", "explainers", "n_boot", "top",
                                                        "seed", "faithfulness", "require")},
                  "no_progress": not audit["progress"], "device": "auto"},
        "explain": {"class_names": explain["class_names"], "methods": explain["methods"]},
        "export": {**inherited, "format": "onnx", "split": exporting["split"],
                   "n": exporting["n"]},
    }


def _commands():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


def _options(command: argparse.ArgumentParser):
    """Options with a default to show: not --help / --config, not required, not on/off flags."""
    return [a for a in command._actions if a.option_strings and a.nargs != 0
            and not a.required and a.dest not in ("help", "config")]


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_default_is_shown_and_is_the_codes(name):
    command, expected = _commands()[name], code_defaults()[name]
    formatter = command._get_formatter()
    for action in _options(command):
        flag = action.option_strings[0]
        text = " ".join(formatter._expand_help(action).split())
        assert not re.search(r"\(default:? ?\)", text), f"{name} {flag}: empty default"
        shown = re.search(r"\(default(:?) ([^()]*(?:\([^()]*\))?[^()]*)\)$", text)
        assert shown, f"{name} {flag}: no '(default ...)' at the end of {text!r}"
        assert action.dest in expected, f"{name} {flag}: map it to its code default here"
        code = expected[action.dest]
        code = ",".join(code) if isinstance(code, tuple) else code
        if action.default in (None, ""):  # unset: described in words
            assert shown[1] == ":", f"{name} {flag}: {text!r}"
            if code is INHERITED:
                assert shown[2].startswith("the "), f"{name} {flag}: {text!r}"
            elif code not in (None, [], ""):
                said = f"{code:g}" if isinstance(code, float) else str(code)
                assert said in shown[2], f"{name} {flag}: {text!r} does not say {code!r}"
        else:
            assert action.default == code, f"{name} {flag}: parser {action.default!r}, " \
                                           f"code {code!r}"
            assert shown[1] == "" and shown[2] == str(code), f"{name} {flag}: {text!r}"


def test_descriptions_fixed():
    help_text = {n: " ".join(c.format_help().split()) for n, c in _commands().items()}
    assert "SGD with momentum" not in help_text["compress"]
    assert "use only the first N" not in help_text["train"]
    assert "photo folders N spread evenly" in help_text["train"]
    refs = [("compress", "teacher"), ("evaluate", "model"), ("evaluate", "teacher"),
            ("audit", "reference"), ("audit", "candidate"), ("explain", "model")]
    for name, dest in refs:  # every model argument takes a pretrained: spec too
        (action,) = [a for a in _commands()[name]._actions if a.dest == dest]
        assert "checkpoint folder" in action.help and "'pretrained:" in action.help, (name, dest)
