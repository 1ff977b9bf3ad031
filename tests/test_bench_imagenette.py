"""bench/imagenette.py's plan (which (seed, recipe, strength) groups run, at which strength
tuning runs), its BatchNorm-mode and lambda-reuse flags (hand-written cases; no photos needed)."""

import argparse
import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "bench_imagenette", Path(__file__).resolve().parents[1] / "bench" / "imagenette.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


def args(**kw):
    return argparse.Namespace(**{"seeds": "0,1", "recipes": "quantization,kd",
                                 "strengths": None, "smoke": False, **kw})


def test_plan_runs_every_recipe_of_a_seed_before_the_next_seed():
    assert bench.plan(args()) == [(0, "quantization", 8), (0, "quantization", 4), (0, "kd", 0.5),
                                  (1, "quantization", 8), (1, "quantization", 4), (1, "kd", 0.5)]
    assert bench.plan(args(smoke=True)) == [(0, "quantization", 8), (0, "kd", 0.5)]


def test_tuning_runs_at_the_first_strength_given():
    a = args(recipes="quantization", strengths="4,8", seeds="2")
    assert bench.plan(a) == [(2, "quantization", 4.0), (2, "quantization", 8.0)]
    assert bench.recipe_strengths(a, "quantization")[0] == 4.0
    assert bench.recipe_strengths(args(), "quantization")[0] == 8


def test_unknown_recipe_is_refused_by_name():
    with pytest.raises(SystemExit, match="unknown recipe 'prune'"):
        bench.plan(args(recipes="prune"))


def test_unknown_batchnorm_mode_is_refused(capsys):
    with pytest.raises(SystemExit):
        bench.parse(["--tune-bn", "kept,warm"])
    assert "--tune-bn: unknown mode warm; known: kept, recalibrated, trained" in \
        capsys.readouterr().err
    assert bench.parse(["--tune-bn", "trained,kept"]).tune_bn == "trained,kept"
    assert bench.parse([]).tune_bn is None


def test_lambdas_from_reads_an_earlier_choice(tmp_path):
    tune = tmp_path / "unstructured@0.5" / "tune"
    tune.mkdir(parents=True)
    (tune / "chosen.json").write_text('{"at": {"lam": 10.0}, "wcam": {"lam": 100.0}, '
                                      '"naive_top1": 0.95, "split": "val"}')
    chosen = bench.chosen_lambdas(tmp_path, "unstructured", 0.5)
    assert chosen == {"at": {"lam": 10.0}, "wcam": {"lam": 100.0}}
    cfg = bench.recipe_cfg(args(kd_epochs=15), bench.PRESETS["cpu"], "unstructured", chosen)
    assert (cfg.at_lam, cfg.lam) == (10.0, 100.0)
    with pytest.raises(SystemExit, match="no .*unstructured@0.8/tune/chosen.json; tune"):
        bench.chosen_lambdas(tmp_path, "unstructured", 0.8)
