"""Recipes as registered objects: options generate the CLI flags, the pipeline builds the one
fine-tuning step, and a recipe added by registration alone runs end to end from the CLI."""

from dataclasses import dataclass, fields

import pytest
import torch

from attrpreserve import pipeline
from attrpreserve.cli import build_parser, main
from attrpreserve.engine import TrainConfig
from attrpreserve.loading import load_checkpoint
from attrpreserve.matching import WCAM
from attrpreserve.models import create_model
from attrpreserve.recipes import (RECIPES, DistillStep, LabelStep, Recipe, SoftmaxDistillStep,
                                  fine_tuning_step, option, option_flag, trainable_copy)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("recipes") / "teacher"
    data = pipeline.DataConfig(n_train=32, n_val=16, n_test=16, batch_size=16)
    pipeline.train_teacher(pipeline.TeacherConfig(
        data=data, width=4, train=TrainConfig(epochs=1, progress=False)), out)
    return out


def _compress_action(flag: str):
    sub = build_parser()._subparsers._group_actions[0].choices["compress"]  # noqa: SLF001
    return next(a for a in sub._actions if flag in a.option_strings)  # noqa: SLF001


def test_every_option_is_a_flag_with_its_default_and_help():
    for recipe in RECIPES.values():
        for f in fields(recipe.Options):
            action = _compress_action(option_flag(f))
            assert action.default == f.default and f.metadata["help"] in action.help
            assert action.dest == f"{recipe.name}.{f.name}"


def test_flags_keep_their_names_and_reach_the_chosen_recipe(teacher_dir, monkeypatch):
    seen = {}

    def compress(cfg, out, **kw):
        seen["cfg"] = cfg
        return None, {"history": {"best_val_mAP": 0.5}, "compression": {}}

    monkeypatch.setattr(pipeline, "compress", compress)
    argv = ["compress", "--teacher", str(teacher_dir), "--out", "x", "--method", "structured",
            "--rate", "0.3", "--structured-rounds", "2", "--prune-layers", "paper"]
    assert main(argv) == 0
    opts = seen["cfg"].options
    assert (opts.rate, opts.rounds, opts.prune_layers, opts.importance) == (0.3, 2, "paper", "l1")
    assert type(opts).__name__ == "StructuredOptions"


def test_config_validates_options_and_naive_means_lambda_zero():
    cfg = pipeline.CompressConfig(method="unstructured", matching="none", lam=10, drop=0.3,
                                  options={"rounds": 2})
    assert cfg.lam == 0.0 and cfg.drop == 0.0 and cfg.options.rounds == 2
    assert pipeline.CompressConfig(matching="at", drop=0.3).drop == 0.0
    with pytest.raises(ValueError, match="unstructured has no option rate"):
        pipeline.CompressConfig(method="unstructured", options={"rate": 0.5})
    with pytest.raises(ValueError, match="bits must be in"):
        pipeline.CompressConfig(method="quantization", options={"bits": 9})
    with pytest.raises(ValueError, match="unknown compression method 'prune'"):
        pipeline.CompressConfig(method="prune")


@pytest.mark.parametrize("method, value, rounds, expected", [
    ("kd", 8, 1, {"width_divisor": 8.0}), ("structured", 0.7, 1, {"rate": 0.7}),
    ("quantization", 4, 1, {"bits": 4}),
    ("unstructured", 0.96, 2, {"rounds": 2, "per_round": 0.8})])
def test_strength_sets_the_recipe_options(method, value, rounds, expected):
    opts = pipeline.CompressConfig(method=method).with_strength(value, rounds).options
    got = {k: getattr(opts, k) for k in expected}
    assert got == pytest.approx(expected)


def test_the_step_is_chosen_by_teacher_and_recipe():
    multi = create_model("vgg", num_classes=3, width=4)
    assert type(fine_tuning_step(multi, None, 0.0, distils=True)) is DistillStep
    assert type(fine_tuning_step(multi, WCAM(), 5.0)) is LabelStep
    multi.single_label = True
    step = fine_tuning_step(multi, WCAM(), 5.0, temperature=2.0)
    assert type(step) is SoftmaxDistillStep and step.temperature == 2.0 and step.lam == 5.0


@dataclass
class _ShrinkOptions:
    scale: float = option(0.5, "multiply the head's weights by this before fine-tuning")


class _Shrink(Recipe):
    """A recipe defined in a test: a copy of the teacher with a scaled head, fine-tuned."""

    name, label, Options, summary = "shrink", "head shrinking", _ShrinkOptions, "scale the head"

    def strength(self, value, rounds=1):
        return {"scale": float(value)}

    def run(self, teacher, data, finetune, options):
        student = trainable_copy(teacher)
        with torch.no_grad():
            student.classifier[-1].weight.mul_(options.scale)
        history = finetune(student, data, desc="shrink").to_dict()
        return student, history, {"scale": options.scale, "step": type(finetune.step).__name__}


def test_a_registered_recipe_runs_from_the_cli(teacher_dir, tmp_path):
    """Adding a recipe is its class plus one registration: flag, config, step and checkpoint
    follow."""
    RECIPES.register("shrink", _Shrink(), label=_Shrink.label)
    try:
        out = tmp_path / "shrunk"
        assert main(["compress", "--teacher", str(teacher_dir), "--method", "shrink",
                     "--scale", "0.25", "--matching", "wcam", "--lambda", "5", "--epochs", "1",
                     "--n-train", "16", "--n-val", "16", "--no-progress", "--out",
                     str(out)]) == 0
        _, meta = load_checkpoint(out)
        comp = meta["compression"]
        assert comp == {**comp, "method": "shrink", "scale": 0.25, "step": "LabelStep",
                        "matching": "wcam", "lambda": 5.0}
        assert meta["config"]["options"] == {"scale": 0.25}
    finally:
        RECIPES.unregister("shrink")


def test_kd_into_another_family():
    """A single-label teacher distilled into a random-init student of another family, matched
    at each model's own layer (maps of different sizes)."""
    from torch.utils.data import DataLoader, TensorDataset

    from attrpreserve.models.students import create_student
    from attrpreserve.recipes import FineTuning, Loaders

    teacher = create_student("mobilenet_v3_small", 3, input_size=64).eval()
    g = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.rand(8, 3, 64, 64, generator=g),
                                    torch.eye(3)[torch.arange(8) % 3]), batch_size=4)
    step = fine_tuning_step(teacher, WCAM(), 10.0, distils=True)
    assert type(step) is SoftmaxDistillStep
    kd = RECIPES["kd"]
    student, history, settings = kd.run(
        teacher, Loaders(data, data), FineTuning(step, TrainConfig(epochs=1, progress=False)),
        kd.options({"student": "resnet18"}))
    assert student.spec["kwargs"]["arch"] == "resnet18"
    assert student(torch.rand(1, 3, 64, 64)).shape == (1, 3)
    assert settings["student"] == "resnet18" and history["epochs"][0]["match"] > 0
    with pytest.raises(ValueError, match="unknown student"):
        kd.options({"student": "vit"})
    multi = create_model("vgg", num_classes=3, width=4)
    with pytest.raises(ValueError, match="single-label"):
        kd.run(multi, Loaders(data, data), FineTuning(fine_tuning_step(multi, None, 0.0)),
               kd.options({"student": "resnet18"}))


@pytest.mark.numerics
def test_channels_last_step_has_the_plain_loss_and_gradients():
    # float64: the two layouts' reordered sums agree far below the tolerance
    from attrpreserve.engine import _layout

    torch.manual_seed(0)
    teacher = create_model("vgg", num_classes=20, width=4).double().eval()
    student = create_model("vgg", num_classes=20, width=4).double()
    step = LabelStep(teacher, WCAM(drop=0.0), lam=10.0)
    images, labels = torch.rand(4, 3, 64, 64, dtype=torch.float64), torch.zeros(4, 20).double()
    labels[:, 3] = 1

    def loss_and_grads(x):
        student.zero_grad()
        torch.manual_seed(1)  # the same dropout masks
        loss, _ = step(student, x, labels)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in student.named_parameters()
                               if p.grad is not None}

    plain = loss_and_grads(images)
    with _layout(TrainConfig(channels_last=True), student, step):
        assert student.features[0].weight.is_contiguous(memory_format=torch.channels_last)
        nhwc = loss_and_grads(images.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(nhwc[0], plain[0])
    assert nhwc[1].keys() == plain[1].keys()
    for n, g in plain[1].items():
        torch.testing.assert_close(nhwc[1][n], g, msg=n)
    assert all(p.is_contiguous() for m in (student, teacher) for p in m.parameters())


def test_only_wcam_keeps_input_resolution_and_a_bad_one_is_refused():
    cfg = pipeline.CompressConfig(method="unstructured", matching="at", resolution="input")
    assert cfg.resolution == "layer"  # AT takes no resolution: the saved config says so
    assert pipeline.CompressConfig(method="unstructured", resolution="input").resolution == \
        "input"
    with pytest.raises(ValueError, match="resolution"):
        pipeline.CompressConfig(method="unstructured", resolution="pixels")
