"""End to end on a tiny demo: results.json carries the fixed-pair-set statistics and gap
recovered, the text table and the report's headline lead with agreement."""

import json

from attrpreserve import pipeline
from attrpreserve.results_schema import validate_results


def test_tiny_demo_reports_fixed_pair_sets_and_gap_recovered(tmp_path):
    cfg = pipeline.DemoConfig(teacher="train", recipes=("kd",), width=4, teacher_epochs=1,
                              student_epochs=1, n_train=32, n_val=16, n_test=16, matchings=("none", "wcam"))
    res = pipeline.demo(tmp_path, seed=0, progress=False, cfg=cfg)
    saved = validate_results(json.loads((tmp_path / "results.json").read_text()))
    runs = {r["name"]: r["attribution"]["gradcam"] for r in saved["runs"]}
    # the same pairs for every model
    for s in ("all", "teacher_correct"):
        assert len({g["pair_sets"][s]["pairs"] for g in runs.values()}) == 1
    assert runs["teacher"]["pair_sets"]["all"]["pairs"] == runs["teacher"]["pairs"]
    assert "gap_recovered" not in runs["teacher"] and "gap_recovered" not in runs["kd"]
    gap = runs["kd+wcam"]["gap_recovered"]
    assert gap["naive"] == "kd"
    for s in ("all", "teacher_correct"):
        for how in ("pooled", "class_balanced"):
            for key, entry in gap[s][how].items():
                assert entry["status"] in ("ok", "no gap", "undefined")
                if entry["status"] == "ok":
                    # (a percentile interval of a ratio need not contain the estimate)
                    assert entry["recovered"] is not None, key
                    assert entry["ci_low"] <= entry["ci_high"], key
                    assert entry["gap_ci_low"] > 0 or entry["gap_ci_high"] < 0
                else:
                    assert entry["recovered"] is None
    # old keys still there (reports and bench scripts read them)
    assert {"pointing_game", "auc", "agreement", "agreement_ci", "delta"} <= set(runs["kd+wcam"])

    table = pipeline.format_table(res).splitlines()
    assert table[0].index("rho") < table[0].index("PG all") < table[0].index("PG paper")
    assert any(line.strip().startswith("kd+wcam  vs kd: PG ") for line in table)

    page = (tmp_path / "report.html").read_text()
    headline = page[page.index('id="headline"'):page.index('id="results"')]
    # agreement first, then the gaps (apostrophes are escaped in the page)
    assert 0 < headline.index("<li>Agreement with the teacher") < headline.index(
        "<li>Pointing game on all ground-truth pairs")
    assert "recovered" in headline or "no gap" in headline


def test_a_one_recipe_demo_has_a_control_and_the_gap_beyond_it(tmp_path):
    """The quick demo's shape (one pruning recipe) fine-tunes a control with nothing removed,
    trained exactly like the runs; matched runs report the gap recovered against it too."""
    cfg = pipeline.DemoConfig(teacher="train", recipes=("structured",), width=4,
                              teacher_epochs=1, n_train=32, n_val=16, n_test=16,
                              matchings=("none", "wcam"))
    res = pipeline.demo(tmp_path, seed=0, progress=False, cfg=cfg)
    runs = {r["name"]: r for r in validate_results(res)["runs"]}
    assert list(runs) == ["teacher", "control", "structured", "structured+wcam"]
    assert runs["control"]["role"] == "control"
    assert runs["control"]["cost"]["params"] == runs["teacher"]["cost"]["params"]
    control = json.loads((tmp_path / "control" / "model.json").read_text())
    pruned = json.loads((tmp_path / "structured" / "model.json").read_text())
    assert control["config"]["train"] == pruned["config"]["train"]  # trained alike
    gap = runs["structured+wcam"]["attribution"]["gradcam"]["gap_recovered_vs_control"]
    assert gap["level"] == "control" and gap["naive"] == "structured"
    table = pipeline.format_table(res)
    assert "\ncontrol " in table and "structured+wcam  vs structured (beyond the control" in table
