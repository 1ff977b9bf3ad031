"""bench/demo_seeds.py honours --lam / --drop in the recipes whose weights the demo tuned."""

import importlib.util
from pathlib import Path

from attrpreserve.pipeline import QUICK

spec = importlib.util.spec_from_file_location(
    "demo_seeds", Path(__file__).resolve().parents[1] / "bench" / "demo_seeds.py")
demo_seeds = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo_seeds)


def test_lam_and_drop_reach_tuned_recipes():
    tuned_lam, tuned_drop = QUICK.tuned["structured"]["wcam"]
    cfg = demo_seeds.wcam_override(QUICK, 123.0, None)
    assert cfg.tuned["structured"]["wcam"] == (123.0, tuned_drop)
    assert cfg.tuned["structured"]["at"] == QUICK.tuned["structured"]["at"]  # AT untouched
    cfg = demo_seeds.wcam_override(QUICK, None, 0.3)
    assert cfg.tuned["structured"]["wcam"] == (tuned_lam, 0.3)
    assert demo_seeds.wcam_override(QUICK, None, None) is QUICK


def test_reused_stages_name_the_copied_teacher_and_leave_the_source_alone(tmp_path):
    import json

    source, out = tmp_path / "old" / "seed0", tmp_path / "new" / "seed0"
    for stage, teacher in (("teacher", None), ("control", str(source / "teacher")),
                           ("other", "pretrained:x")):
        (source / stage).mkdir(parents=True)
        (source / stage / "model.json").write_text(json.dumps({"config": {"teacher": teacher}}))
    out.mkdir(parents=True)
    demo_seeds.reuse_stages(source, out)
    read = lambda d, s: json.loads((d / s / "model.json").read_text())["config"]["teacher"]
    assert read(out, "control") == str(out / "teacher")
    assert read(source, "control") == str(source / "teacher")
    assert read(out, "other") == "pretrained:x"
