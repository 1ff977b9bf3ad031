"""bench/powered.py's choice rule: the best admissible candidate, and a grid that grows past an
edge winner."""

import importlib.util
from pathlib import Path

import pytest
import torch

spec = importlib.util.spec_from_file_location(
    "powered", Path(__file__).resolve().parents[1] / "bench" / "powered.py")
powered = importlib.util.module_from_spec(spec)
spec.loader.exec_module(powered)


def row(lam, drop, spearman, admissible=True):
    return {"lam": lam, "drop": drop, "spearman": spearman, "admissible": admissible}


def test_the_best_admissible_candidate_wins():
    rows = [row(100, 0, 0.70), row(1000, 0, 0.90, admissible=False), row(1000, 0.3, 0.80)]
    assert powered.best_admissible(rows) == rows[2]
    assert powered.best_admissible([row(10, 0, 0.9, admissible=False)]) is None


def test_an_edge_winner_extends_the_grid_that_way():
    inner = [row(100, 0, 0.7), row(1000, 0, 0.8), row(10000, 0, 0.75)]
    assert powered.grid_extension(inner) is None
    top = [row(100, 0, 0.7), row(1000, 0, 0.8), row(10000, 0.3, 0.85)]
    assert powered.grid_extension(top) == 100000
    bottom = [row(100, 0.3, 0.9), row(1000, 0, 0.8), row(10000, 0, 0.75, admissible=False)]
    assert powered.grid_extension(bottom) == 10
    # the winner among admissible ones counts: an inadmissible top edge does not extend
    assert powered.grid_extension([row(100, 0, 0.7), row(1000, 0, 0.8),
                                   row(10000, 0, 0.95, admissible=False)]) is None


def test_the_plan_runs_control_naive_and_wcam_seed_by_seed():
    class Args:
        seeds, strength, variant = "0,1", 0.8, "stride-16"
    plan = powered.run_plan(Args, Path("out"), {"lam": 1000.0, "drop": 0.0})
    assert [(s, n) for s, n, *_ in plan] == [(0, "control"), (0, "naive"), (0, "wcam"),
                                             (1, "control"), (1, "naive"), (1, "wcam")]
    assert plan[0][3] == 0.0 and plan[1][3] == 0.8 and plan[2][4] == {"lam": 1000.0, "drop": 0.0}
    # no admissible WCAM: the control and naive runs still run
    assert [n for _, n, *_ in powered.run_plan(Args, Path("o"), {"lam": None, "drop": None})] \
        == ["control", "naive"] * 2
    # --roles splits a seed's runs between two processes
    Args.roles = "wcam"
    assert [(s, n) for s, n, *_ in powered.run_plan(Args, Path("o"), {"lam": 1.0, "drop": 0})] \
        == [(0, "wcam"), (1, "wcam")]
    assert powered.parse(["--roles", "control,naive"]).roles == "control,naive"
    with pytest.raises(SystemExit):
        powered.parse(["--roles", "teacher"])


def test_each_recipe_gets_its_own_default_strength():
    assert powered.parse([]).strength == 0.8
    args = powered.parse(["--recipe", "quantization"])
    assert (args.recipe, args.strength) == ("quantization", 4)
    assert powered.base_config(args).recipe == "quantization"
    assert powered.parse(["--recipe", "structured", "--strength", "0.5"]).strength == 0.5


def test_a_variant_trains_beside_the_same_control_and_naive_runs():
    class Args:
        seeds, strength, variant = "0", 0.8, "head-stride-16"
    plan = powered.run_plan(Args, Path("out"), {"lam": 1000.0, "drop": 0.3})
    assert [n for _, n, *_ in plan] == ["control", "naive", "wcam-head-stride-16"]
    assert plan[2][4] == {"lam": 1000.0, "drop": 0.3, "layer": "_head_act,_blocks.10"}
    Args.variant = "stride-16-at-input-resolution"  # lambda scaled by the pixel ratio
    assert powered.run_plan(Args, Path("out"), {"lam": 1000.0, "drop": 0.3})[2][4]["lam"] \
        == 256000.0
    assert powered.suffix("stride-16") == "" and powered.suffix("head") == "-head"


def test_an_edge_lr_extends_the_lr_grid_that_way():
    assert powered.lr_extension({3e-4: 0.80, 1e-3: 0.84}) == 3e-3
    assert powered.lr_extension({1e-4: 0.90, 3e-4: 0.89}) == float("3.33e-05")
    assert powered.lr_extension({1e-4: 0.899, 3e-4: 0.911, 1e-3: 0.799}) is None
    assert powered.best_lr({1e-4: 0.9, 3e-4: 0.9}) == 1e-4  # ties: the smaller lr


def test_tuning_seeds_pool_per_photo_scores_and_resample_photos():
    a0, a1 = {"correct": [1, 0, 1], "spearman": [0.1, 0.2, 0.3]}, {"correct": [1, 1, 0],
                                                                   "spearman": [0.4, 0.5, 0.6]}
    a = powered.pooled([a0, a1])
    assert a["photo"] == [0, 1, 2, 0, 1, 2] and a["correct"] == [1, 0, 1, 1, 1, 0]
    assert "cosine" not in a  # only keys every seed has
    b = powered.pooled([{"correct": [1, 1, 1], "spearman": [0] * 3},
                        {"correct": [1, 1, 1], "spearman": [0] * 3}])
    d = powered.paired_top1(a, b, n_boot=200)
    assert abs(d["delta"] - (1 - 4 / 6)) < 1e-12 and d["ci_low"] <= d["delta"] <= d["ci_high"]


def test_a_tuned_variant_scores_the_mean_over_its_matched_layers(tmp_path):
    """Tuning ``--variant head-stride-16``: each photo's Spearman and cosine are averaged over
    the head and the stride-16 stage (each layer's scores cached in its own file), top-1 kept."""
    def cached(name, correct, spearman, cosine):
        entry = {"correct": correct, "spearman": spearman, "cosine": cosine}
        powered.write_json(tmp_path / name, {"models": {"run": entry}})

    cached("heldout.json", [1, 0], [0.2, 0.4], [0.5, 0.7])  # the stride-16 stage
    cached("heldout-head-act.json", [1, 0], [0.6, 0.0], [0.9, 0.1])
    both = powered.heldout_matched(None, None, tmp_path, f"{powered.HEAD},{powered.LAYER}")
    assert both["correct"] == [1, 0]
    assert both["spearman"] == pytest.approx([0.4, 0.2])
    assert both["cosine"] == pytest.approx([0.7, 0.4])
    one = powered.heldout_matched(None, None, tmp_path, powered.LAYER)
    assert one["spearman"] == [0.2, 0.4]
    args = powered.parse(["--variant", "head-stride-16"])
    assert powered.variant_of(args)[1]["layer"] == f"{powered.HEAD},{powered.LAYER}"


def test_another_lambda_trains_and_scores_beside_the_chosen_one(tmp_path):
    """``--lam`` other than the chosen lambda gets its own run folder and evaluation file, so
    the chosen run and its results are never overwritten."""
    powered.write_json(tmp_path / "tune" / "chosen.json", {"lam": 1000.0, "drop": 0.3})
    chosen = powered.parse(["--variant", "head-stride-16"])
    assert powered.wcam_run(chosen, tmp_path) == ("wcam-head-stride-16", 1000.0,
                                                  "-head-stride-16")
    assert powered.wcam_run(powered.parse(["--variant", "head-stride-16", "--lam", "1000"]),
                            tmp_path)[0] == "wcam-head-stride-16"
    other = powered.parse(["--variant", "head-stride-16", "--lam", "100", "--roles", "wcam"])
    assert powered.wcam_run(other, tmp_path) == ("wcam-head-stride-16-l100", 100.0,
                                                 "-head-stride-16-l100")
    plan = powered.run_plan(other, tmp_path, {"lam": 1000.0, "drop": 0.3})
    assert [(n, e["lam"]) for _, n, _, _, e in plan] == [("wcam-head-stride-16-l100", 100.0)] * 3
    assert powered.wcam_run(powered.parse([]), tmp_path) == ("wcam", 1000.0, "")


def test_check_applies_the_top1_rule_at_the_full_budget(tmp_path):
    """The check phase scores each finished seed's WCAM run against its naive run on the
    held-out photos: a run 3 photos in 4 worse than naive is not admissible."""
    powered.write_json(tmp_path / "tune" / "chosen.json", {"lam": 1000.0, "drop": 0.3})
    n = 40
    for name, correct in (("naive", [1] * n), ("wcam-head-stride-16", [1] * 10 + [0] * 30)):
        run = tmp_path / "seed0" / name
        powered.write_json(run / "timing.json", {})
        for cache in ("heldout.json", "heldout-head-act.json"):
            powered.write_json(run / cache, {"models": {"run": {
                "correct": correct, "spearman": [0.5] * n, "cosine": [0.5] * n}}})
    args = powered.parse(["--variant", "head-stride-16", "--seeds", "0,1", "--n-boot", "200"])
    (row,) = powered.check(args, None, tmp_path)  # seed 1 has no finished runs: skipped
    assert row["seed"] == 0 and row["lam"] == 1000.0 and not row["admissible"]
    assert row["top1_delta"]["delta"] == pytest.approx(-0.75)
    assert (tmp_path / "check-head-stride-16.json").is_file()


def test_views_are_chosen_by_name():
    assert powered.parse(["--views", "matched layer,head"]).views == "matched layer,head"
    assert set(powered.parse([]).views.split(",")) == {v[0] for v in powered.VIEWS}
    with pytest.raises(SystemExit):
        powered.parse(["--views", "gradcam"])


def test_val_top1_against_naive_is_paired_and_hand_computable():
    """WCAM right on 3 of the 4 photos naive gets right, and on none naive misses: -1 in 8."""
    labels = torch.eye(2)[[0, 0, 0, 0, 1, 1, 1, 1]]
    right, wrong = torch.tensor([5.0, 0.0]), torch.tensor([0.0, 5.0])
    naive = torch.stack([right] * 8)  # class 0 everywhere: right on the first four only
    wcam = torch.stack([right] * 3 + [wrong] + [right] * 4)
    data = {"labels": labels, "logits": {"naive": naive, "wcam": wcam}}
    d = powered.top1_vs_naive(data, n_boot=500)
    assert d["delta"] == pytest.approx(-1 / 8)
    assert d["ci_low"] <= -1 / 8 <= d["ci_high"] <= 0
