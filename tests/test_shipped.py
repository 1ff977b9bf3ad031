"""The demo teachers shipped in the package (the VGG's and the ViT demo's): each loads, scores on
the test split as bench/teacher.py recorded when it shipped it (scores.json,
docs/benchmarks.md), meets its targets there (issue 15's, issue 25's), and the demo installs it
only for the settings it was trained with."""

import json
from dataclasses import replace

import pytest

from attrpreserve.pipeline import DEMOS, demo_teacher_config, is_finished
from attrpreserve.pipeline.shipped import (SCORES, TARGETS, VIT_TARGETS,
                                           install_shipped_teacher, score_teacher, shipped_folder)


@pytest.mark.parametrize("family, targets", [("vgg", TARGETS), ("vit", VIT_TARGETS)])
def test_shipped_teacher_scores_as_recorded_against_its_targets(family, targets):
    cfg = demo_teacher_config(progress=False, family=family)
    folder = shipped_folder(DEMOS[family].shipped)
    want = json.loads((folder / SCORES).read_text())["test"]
    got = score_teacher(folder, cfg.data, "test", targets)
    assert got["pairs"] == want["pairs"]
    # Another CPU's kernels change logits in their last bits: a near-tie argmax may move to a
    # neighbouring pixel (one pair of ~900 is 0.0011) and average precision may swap a tie.
    assert got["pointing_game"] == pytest.approx(want["pointing_game"], abs=0.006)
    assert got["mAP"] == pytest.approx(want["mAP"], abs=0.003)
    for name, value in want["pointing_game_per_class"].items():
        assert got["pointing_game_per_class"][name] == pytest.approx(value, abs=0.03)
    if "pointing_game_grad_rollout" in want:
        assert got["pointing_game_grad_rollout"] == pytest.approx(
            want["pointing_game_grad_rollout"], abs=0.006)
    assert want["meets_targets"] and got["meets_targets"]


def test_demo_installs_the_shipped_teacher_only_for_its_own_settings(tmp_path):
    cfg = demo_teacher_config(progress=False)
    install_shipped_teacher(tmp_path / "teacher", cfg)
    assert is_finished(tmp_path / "teacher", cfg)
    other = replace(cfg, width=cfg.width * 2)
    assert not is_finished(tmp_path / "teacher", other)
    with pytest.raises(ValueError, match="other settings"):
        install_shipped_teacher(tmp_path / "other", other)



class Stop(Exception):
    pass


@pytest.mark.parametrize("family", ["vgg", "vit"])
def test_demo_starts_from_the_shipped_teacher_without_training(tmp_path, monkeypatch, family):
    from attrpreserve import pipeline

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(pipeline.stages, "train_teacher", lambda *a, **k: pytest.fail("trained"))
    monkeypatch.setattr(pipeline.stages, "compress", stop)  # stop after the teacher stage
    with pytest.raises(Stop):
        pipeline.demo(tmp_path, progress=False, cfg=pipeline.DEMOS[family])
    shipped = shipped_folder(pipeline.DEMOS[family].shipped)
    assert (tmp_path / "teacher" / "model.safetensors").read_bytes() == \
        (shipped / "model.safetensors").read_bytes()
