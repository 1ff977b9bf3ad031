"""results_schema: a malformed results or audit document is rejected with a message naming the
bad place (by the validator and by both pages), and the report's prose loads without
matplotlib. That every document the pipeline writes follows the schema is checked where the
tests write them (test_pipeline.py, test_audit.py, the pages of test_report.py)."""

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import attrpreserve
from attrpreserve.report import write_audit_report, write_report
from attrpreserve.results_schema import SchemaError, validate_audit, validate_results


def _run(name, method, matching):
    return {"name": name, "role": "teacher" if method == "none" else "compressed",
            "checkpoint": f"runs/{name}", "compression": {"method": method, "matching": matching},
            "cost": {"params": 10, "nonzero_params": 10, "macs": 100, "bytes": None,
                     "latency_ms": 0.1},
            "task": {"mAP": 0.5, "F1": None, "per_class_AP": [0.5, None]},
            "attribution": {"gradcam": {"pointing_game": 0.5, "pointing_game_std": 0.5,
                                        "auc": None, "energy_pg": 0.2}},
            "training": {"best_epoch": None, "best_val_mAP": None}}


def _results():
    return {"runs": [_run("teacher", "none", "none"), _run("kd", "kd", "none")],
            "dataset": {"spec": "scenes", "size": 32, "seed": 0, "n_train": None,
                        "n_val": None, "n_test": 4, "batch_size": 4, "split": "test",
                        "images": 4, "classes": ["a", "b"]},
            "seed": 0, "versions": {"attrpreserve": attrpreserve.__version__}}


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["runs"][1]["cost"].pop("latency_ms"),
     "results.runs[1].cost: missing required key 'latency_ms'"),
    (lambda d: d["runs"][0]["task"].update(mAP="0.5"),
     "results.runs[0].task.mAP: expected a number or null, got str '0.5'"),
    (lambda d: d["runs"][1]["attribution"]["gradcam"].update(agreement=None),
     "results.runs[1].attribution.gradcam.agreement: expected an object, got NoneType None"),
    (lambda d: d["dataset"].update(images=True),
     "results.dataset.images: expected an integer, got bool True"),
    (lambda d: d.update(runs={}), "results.runs: expected a list, got dict {}"),
    (lambda d: d.pop("versions"), "results: missing required key 'versions'"),
])
def test_malformed_results_are_rejected_naming_the_place(edit, message):
    doc = _results()
    assert validate_results(doc) is doc
    edit(doc)
    with pytest.raises(SchemaError) as err:
        validate_results(doc)
    assert str(err.value) == message
    assert isinstance(err.value, ValueError)  # the CLI reports it as a one-line usage error


def test_optional_keys_may_be_missing_required_ones_may_be_null():
    doc = _results()
    doc["runs"][1]["attribution"]["gradcam"]["agreement"] = {
        "spearman": None, "topk_iou": 0.1, "cosine": 0.2, "argmax_agree": 0.0}
    doc["runs"][0]["attribution"] = {}  # a run without any explainer
    doc["notes"] = ["a note"]
    doc["sweeps"] = [{"recipe": "structured", "matching": "none", "strength": 0.5}]
    validate_results(doc)


def _gap(status="ok"):
    entry = dict.fromkeys(("teacher", "naive", "matched", "gap", "gap_ci_low", "gap_ci_high",
                           "gain", "gain_ci_low", "gain_ci_high", "recovered", "ci_low",
                           "ci_high"), 0.5)
    return {"status": status, **entry}


@pytest.mark.parametrize("edit, message", [
    (lambda g: g["all"]["pooled"]["auc"].update(status="maybe"),
     "results.runs[1].attribution.gradcam.gap_recovered.all.pooled.auc.status: expected one of "
     "'ok', 'no gap', 'undefined', got str 'maybe'"),
    (lambda g: g["all"]["pooled"]["auc"].pop("gap_ci_low"),
     "results.runs[1].attribution.gradcam.gap_recovered.all.pooled.auc: missing required key "
     "'gap_ci_low'"),
    (lambda g: g.pop("naive"),
     "results.runs[1].attribution.gradcam.gap_recovered: missing required key 'naive'"),
    (lambda g: g["teacher_correct"].pop("class_balanced"),
     "results.runs[1].attribution.gradcam.gap_recovered.teacher_correct: missing required key "
     "'class_balanced'"),
])
def test_pair_sets_and_gap_recovered_follow_the_schema(edit, message):
    doc = _results()
    att = doc["runs"][1]["attribution"]["gradcam"]
    ci = {"mean": 0.5, "ci_low": 0.4, "ci_high": None}
    att["pair_sets"] = {s: {"pairs": 4, "pooled": {"auc": ci}, "class_balanced": {"auc": ci}}
                        for s in ("all", "teacher_correct")}
    att["gap_recovered"] = {"naive": "kd", **{
        s: {"pooled": {"auc": _gap()}, "class_balanced": {"auc": _gap("no gap")}}
        for s in ("all", "teacher_correct")}}
    validate_results(doc)
    edit(att["gap_recovered"])
    with pytest.raises(SchemaError) as err:
        validate_results(doc)
    assert str(err.value) == message


def test_write_report_rejects_a_malformed_document(tmp_path):
    doc = _results()
    del doc["runs"][1]["cost"]
    with pytest.raises(SchemaError, match=r"^results\.runs\[1\]: missing required key 'cost'$"):
        write_report(doc, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


@pytest.fixture(scope="module")
def audit_result():
    from torch.utils.data import DataLoader

    from attrpreserve.data import build_dataset
    from attrpreserve.evaluate import audit, randomize_model
    from attrpreserve.models import create_model

    torch.manual_seed(0)
    model = create_model("vgg", num_classes=8, width=4, input_size=32).eval()
    data = build_dataset("scenes", "test", size=32, seed=0, n=4)
    return audit(model, randomize_model(model, seed=1), DataLoader(data, batch_size=4),
                 n_boot=10, top=2, progress=False)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["explainers"]["gradcam"]["agreement"].pop("ssim"),
     "audit.explainers.gradcam.agreement: missing required key 'ssim'"),
    (lambda d: d["explainers"]["gradcam"]["most_moved"][0]["pairs"][0].update({"class": "x"}),
     "audit.explainers.gradcam.most_moved[0].pairs[0].class: expected an integer, got str 'x'"),
    (lambda d: d["settings"].update(confidence=None),
     "audit.settings.confidence: expected a number, got NoneType None"),
])
def test_malformed_audits_are_rejected_naming_the_place(audit_result, edit, message, tmp_path):
    doc = copy.deepcopy(audit_result)
    doc["explainers"]["gradcam"]["note"] = "keys not in the schema are allowed"
    validate_audit(doc)
    edit(doc)
    with pytest.raises(SchemaError) as err:
        validate_audit(doc)
    assert str(err.value) == message
    with pytest.raises(SchemaError, match=f"^{re.escape(message)}$"):
        write_audit_report(doc, tmp_path / "a.html")


def test_the_verdict_loads_without_matplotlib_or_torch():
    """The CLI prints the audit verdict (report.words) without loading the plotting stack."""
    code = ("import sys\n"
            "import attrpreserve.report.words\n"
            "assert 'matplotlib' not in sys.modules and 'torch' not in sys.modules\n"
            "import attrpreserve.cli\n"
            "assert 'matplotlib' not in sys.modules\n")
    src = str(Path(attrpreserve.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [src] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
