"""The release gate (``audit --require``, ``attrpreserve.audit(require=...)``): its grammar, its
checks on a hand-built audit, the CLI's exit statuses, and a corrupted int8 model that keeps
its predictions but not its explanations, caught."""

import copy
import json
import math

import pytest
import torch
from torch.utils.data import DataLoader

import attrpreserve
from attrpreserve.cli import main
from attrpreserve.compress import prepare_qat
from attrpreserve.data import build_dataset
from attrpreserve.evaluate.gate import MEASURES, Requirement, Verdict, check, parse
from attrpreserve.models import create_model, save_checkpoint
from attrpreserve.models.checkpoint import read_sidecar
from attrpreserve.pipeline import DataConfig, load_models
from attrpreserve.pipeline.shipped import SHIPPED_TEACHER
from attrpreserve.results_schema import GATE, validate, validate_audit

TEACHER = str(SHIPPED_TEACHER)
SMALL = ["--n-test", "16", "--n-boot", "20", "--top", "0", "--no-progress"]


# --------------------------------------------------------------------------------------------
# grammar
# --------------------------------------------------------------------------------------------

def test_parse_reads_every_form():
    reqs = parse(" spearman>=0.8, gradcam:ssim.low > 0.5,top1_agreement<1,lrp:peak_cells.high<=2")
    assert reqs == (Requirement("spearman", ">=", 0.8),
                    Requirement("ssim", ">", 0.5, "low", "gradcam"),
                    Requirement("top1_agreement", "<", 1.0),
                    Requirement("peak_cells", "<=", 2.0, "high", "lrp"))
    assert [r.text for r in reqs] == ["spearman>=0.8", "gradcam:ssim.low>0.5",
                                      "top1_agreement<1", "lrp:peak_cells.high<=2"]
    assert parse(r.text for r in reqs) == reqs  # the normalised text parses back
    assert parse(["spearman>=0.8", "cosine>0.1"]) == (Requirement("spearman", ">=", 0.8),
                                                      Requirement("cosine", ">", 0.1))
    assert parse(None) == ()
    assert parse("delta_auc>=-0.05")[0].threshold == -0.05
    assert parse("ssim>0.1234567891")[0].text == "ssim>0.1234567891"


@pytest.mark.parametrize("spec, needle", [
    ("spearmen>=0.8", "unknown measure 'spearmen'.*did you mean 'spearman'.*known: spearman"),
    ("top1_agreement.low>=0.9", "top1_agreement has no interval"),
    ("vanished_pairs.high<1", "vanished_pairs has no interval"),
    ("spearman.mid>=0.9", "bad bound 'mid'"),
    ("gradcam:top1_agreement>=0.9", "task measure.*drop 'gradcam:'"),
    ("gradcum:spearman>=0.9", "unknown explainer 'gradcum'.*did you mean 'gradcam'"),
    ("spearman=0.8", "bad requirement 'spearman=0.8'"),
    ("spearman>=0.8,", "bad requirement ''"),
    ("spearman>=high", "bad threshold 'high'"),
    ("spearman>=nan", "bad threshold 'nan'"),
    ("spearman 0.8", "bad requirement"),
])
def test_parse_errors_name_the_requirement(spec, needle):
    with pytest.raises(ValueError, match=needle):
        parse(spec)


# --------------------------------------------------------------------------------------------
# checks on a hand-built audit
# --------------------------------------------------------------------------------------------

def _ci(mean, low, high):
    return {"mean": mean, "ci_low": low, "ci_high": high}


def _audit() -> dict:
    """The parts of an audit.json that requirements read: two explainers, no masks."""
    return {
        "task": {"single_label": False, "top1_agreement": 0.97, "decision_agreement": 0.9,
                 "a": {"mAP": 0.9, "F1": 0.8}, "b": {"mAP": 0.85, "F1": None}},
        "explainers": {
            "gradcam": {"agreement": {"spearman": _ci(0.85, 0.78, 0.9), "ssim": _ci(0.5, 0.4, 0.6)},
                        "vanished_pairs": 0, "localization": None, "faithfulness": None,
                        "hidden_disagreement": {"share_low": _ci(0.1, 0.05, 0.2)}},
            "lrp": {"agreement": {"spearman": _ci(0.6, 0.5, 0.7), "ssim": _ci(None, None, None)},
                    "vanished_pairs": 3, "localization": None, "faithfulness": None,
                    "hidden_disagreement": {"share_low": _ci(0.4, 0.3, float("nan"))}},
        },
    }


def _outcomes(verdict: Verdict) -> list[tuple]:
    return [(c.requirement.text, c.explainer, c.value, c.passed) for c in verdict.checks]


def test_a_requirement_without_prefix_applies_to_every_explainer_and_task_measures_once():
    verdict = check(_audit(), "spearman>=0.8,top1_agreement>=0.95")
    assert _outcomes(verdict) == [("spearman>=0.8", "gradcam", 0.85, True),
                                  ("spearman>=0.8", "lrp", 0.6, False),
                                  ("top1_agreement>=0.95", None, 0.97, True)]
    assert not verdict.passed and [c.explainer for c in verdict.failures] == ["lrp"]
    assert verdict.failures[0].line == "lrp spearman 0.6, required >= 0.8"


def test_prefix_and_interval_bounds():
    doc = _audit()
    assert _outcomes(check(doc, "gradcam:spearman>=0.8")) == [
        ("gradcam:spearman>=0.8", "gradcam", 0.85, True)]
    # the estimate passes, the interval's lower end does not
    assert _outcomes(check(doc, "gradcam:spearman.low>=0.8,gradcam:spearman.high<0.9")) == [
        ("gradcam:spearman.low>=0.8", "gradcam", 0.78, False),
        ("gradcam:spearman.high<0.9", "gradcam", 0.9, False)]
    # the operators at the boundary
    assert [c.passed for c in check(doc, "top1_agreement>=0.97,top1_agreement>0.97,"
                                         "top1_agreement<=0.97,top1_agreement<0.97").checks] \
        == [True, False, True, False]
    assert check(doc, "vanished_pairs<=0").failures[0].line == \
        "lrp vanished_pairs 3, required <= 0"
    assert check(doc, []).passed and check(doc, None).checks == ()


@pytest.mark.parametrize("spec, why", [
    ("delta_auc>=-0.05", "not measured (the data has no masks)"),
    ("gradcam:delta_deletion_auc>=0", "not measured (audited without faithfulness)"),
    ("lrp:ssim>0", "undefined (null)"),
    ("lrp:share_low.high<0.5", "undefined (null)"),  # NaN
    ("candidate_F1>=0.5", "undefined (null)"),
    ("candidate_top1>=0.5", "not measured for these models"),
    ("label_set_agreement>=0.5", "not measured by this audit"),
])
def test_a_missing_or_undefined_measure_fails(spec, why):
    verdict = check(_audit(), spec)
    assert not verdict.passed
    assert all(c.value is None and why in c.line for c in verdict.failures), verdict.failures


def test_a_prefixed_explainer_the_audit_lacks_fails():
    verdict = check(_audit(), "rise:spearman>=0")
    assert not verdict.passed and "was not audited" in verdict.failures[0].line


def test_verdict_round_trips_through_its_document():
    verdict = check(_audit(), "spearman>=0.8,lrp:share_low.high<0.5,decision_agreement>0.5")
    doc = json.loads(json.dumps(verdict.to_dict(), allow_nan=False))
    validate(doc, GATE, "gate")
    assert doc["passed"] is False and doc["requirements"][1] == "lrp:share_low.high<0.5"
    assert Verdict.from_dict(doc) == verdict


def test_every_measure_is_found_in_a_real_audit():
    """Each name in MEASURES reads a value of a real audit (masks, faithfulness, multi-label:
    only the single-label top-1 of each model is missing)."""
    from attrpreserve.evaluate import audit, randomize_model

    torch.manual_seed(0)
    model = create_model("vgg", num_classes=8, width=4, input_size=32).eval()
    loader = DataLoader(build_dataset("scenes", "test", size=32, seed=0, n=4), batch_size=4)
    doc = audit(model, randomize_model(model, seed=1), loader, n_boot=10, progress=False,
                faithfulness=True)
    verdict = check(doc, [f"{name}>=-1e9" for name in MEASURES])
    assert {c.requirement.measure for c in verdict.failures} == {"reference_top1",
                                                                 "candidate_top1"}


# --------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------

def _audit_cli(tmp_path, capsys, *extra, candidate=TEACHER, name="audit"):
    out = tmp_path / name
    code = main(["audit", "--reference", TEACHER, "--candidate", candidate, "--out", str(out),
                 *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err, out


def test_cli_gate_passes_with_status_0_and_records_the_verdict(tmp_path, capsys):
    code, out, err, folder = _audit_cli(
        tmp_path, capsys, *SMALL, "--require", "spearman>=0.99,top1_agreement>=1",
        "--require", "gradcam:ssim.low>0.99")
    assert code == 0, err
    assert out.strip().splitlines()[-1] == ("gate passed: gradcam spearman 1 >= 0.99; "
                                            "top1_agreement 1 >= 1; gradcam ssim.low 1 > 0.99")
    doc = validate_audit(json.loads((folder / "audit.json").read_text()))
    assert doc["gate"]["passed"] is True
    assert doc["gate"]["requirements"] == ["spearman>=0.99", "top1_agreement>=1",
                                           "gradcam:ssim.low>0.99"]
    assert "Release gate: passed" in (folder / "audit.html").read_text()


def test_cli_gate_fails_with_status_1_and_one_line_per_failure(tmp_path, capsys):
    code, _, err, folder = _audit_cli(
        tmp_path, capsys, *SMALL, "--require",
        "spearman>1,top1_agreement>=1,delta_auc>0.5,candidate_top1>0")
    assert code == 1
    assert err.strip().splitlines() == [
        "attrpreserve: gate: gradcam spearman 1, required > 1",
        "attrpreserve: gate: gradcam delta_auc 0, required > 0.5",
        "attrpreserve: gate: candidate_top1 not measured for these models (top1: "
        "single-label; mAP, F1: multi-label), required > 0"]
    doc = json.loads((folder / "audit.json").read_text())  # written before the verdict
    assert [c["passed"] for c in doc["gate"]["checks"]] == [False, True, False, False]
    assert "Release gate: failed (3 of 4 checks)" in (folder / "audit.html").read_text()


@pytest.mark.parametrize("spec, needle", [
    ("spearman>=0.8,top1_agreemnt>=0.9", "did you mean 'top1_agreement'"),
    ("lrp:spearman>=0.8", "names lrp, which is not audited"),
])
def test_cli_bad_spec_exits_2_with_one_line_before_any_work(tmp_path, capsys, spec, needle):
    code, out, err, folder = _audit_cli(tmp_path, capsys, *SMALL, "--require", spec,
                                        candidate=str(tmp_path / "no-such-model"))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and needle in err
    assert err.startswith("attrpreserve: error: ")
    assert not folder.exists() and not out


# --------------------------------------------------------------------------------------------
# the gate catches a corrupted int8 model
# --------------------------------------------------------------------------------------------

CORRUPTED = "features.8"  # the third conv block (fused Conv-BN-ReLU) of the shipped teacher
GATE_SPEC = "top1_agreement>=0.95,spearman>=0.96"


@pytest.fixture(scope="module")
def int8_copies(tmp_path_factory):
    """The shipped teacher's fake-quant int8 (QAT) copy, calibrated on 64 training scenes, and
    the same copy with one layer's activation quantization scale 16x too large (16 levels
    where there were 256): a plausible calibration bug."""
    entry = load_models({"t": TEACHER})["t"]
    data = DataConfig(**{**entry.meta["data"], "n_train": 64})
    qat = prepare_qat(entry.model, calibration=data.loader("train")).eval()
    corrupted = copy.deepcopy(qat)
    corrupted.get_submodule(CORRUPTED).activation_post_process.scale.mul_(16)
    root = tmp_path_factory.mktemp("int8")
    meta = {k: v for k, v in read_sidecar(TEACHER).items() if k != "model"}
    meta.update(role="compressed", compression={"method": "quantization", "matching": "none"})
    for name, model in (("int8", qat), ("int8-corrupted", corrupted)):
        save_checkpoint(root / name, model, meta)
    return root


def test_gate_catches_a_corrupted_quantization_scale(int8_copies, tmp_path, capsys):
    common = ["--n-test", "256", "--n-boot", "200", "--top", "0", "--no-progress",
              "--require", GATE_SPEC]
    code, _, err, folder = _audit_cli(tmp_path, capsys, *common,
                                      candidate=str(int8_copies / "int8"), name="int8")
    assert code == 0, err  # the faithful int8 copy passes
    good = json.loads((folder / "audit.json").read_text())
    code, _, err, folder = _audit_cli(tmp_path, capsys, *common,
                                      candidate=str(int8_copies / "int8-corrupted"),
                                      name="corrupted")
    bad = json.loads((folder / "audit.json").read_text())
    # the corrupted copy keeps its predictions ...
    assert bad["task"]["top1_agreement"] >= 0.95
    # ... while its Grad-CAM maps moved beyond the intervals of either audit
    rho_good = good["explainers"]["gradcam"]["agreement"]["spearman"]
    rho_bad = bad["explainers"]["gradcam"]["agreement"]["spearman"]
    assert rho_bad["ci_high"] < rho_good["ci_low"]
    # and the gate fails on Spearman alone, one line
    assert code == 1
    lines = err.strip().splitlines()
    assert lines == [f"attrpreserve: gate: gradcam spearman {rho_bad['mean']:.3g}, "
                     "required >= 0.96"]
    assert [c["passed"] for c in bad["gate"]["checks"]] == [True, False]


# --------------------------------------------------------------------------------------------
# the Python API
# --------------------------------------------------------------------------------------------

def test_python_api_returns_a_typed_result(int8_copies, tmp_path):
    result = attrpreserve.audit(TEACHER, str(int8_copies / "int8-corrupted"),
                                {"n_test": 64}, n_boot=50, top=0, require=GATE_SPEC,
                                out=tmp_path / "api")
    assert isinstance(result, attrpreserve.AuditResult)
    assert result.passed is False
    assert [(f.requirement.measure, f.explainer) for f in result.failures] == [
        ("spearman", "gradcam")]
    rho = result.agreement("spearman")
    assert rho.low <= rho.value <= rho.high and rho.value < 0.96
    assert result.top1_agreement == result.to_dict()["task"]["top1_agreement"]
    assert result.explainers == ("gradcam",) and result.headline().endswith(".")
    on_disk = json.loads((tmp_path / "api" / "audit.json").read_text())
    assert on_disk == json.loads(json.dumps(result.to_dict()))
    assert (tmp_path / "api" / "audit.html").is_file()
    with pytest.raises(Exception):
        result.document = {}  # frozen
    written = result.write(tmp_path / "again")
    assert json.loads(written.read_text()) == on_disk


def test_python_api_takes_modules_and_a_loader(tmp_path):
    entry = load_models({"t": TEACHER})["t"]
    model = entry.model
    candidate = copy.deepcopy(model)
    loader = DataLoader(build_dataset("scenes", "test", size=64, seed=3, n=16), batch_size=8)
    result = attrpreserve.audit(model, candidate, loader, explainers=("gradcam", "gradient"),
                                n_boot=20, require="spearman>=0.99,gradient:ssim.low>=0.99")
    assert result.passed and len(result.verdict.checks) == 3
    assert result.reference == "VGG (nn.Module)" and "split" not in result.to_dict()
    assert result.to_dict()["images"] == 16
    with pytest.raises(ValueError, match="did you mean 'spearman'"):
        attrpreserve.audit(model, candidate, loader, require="spearmann>0")
    with pytest.raises(ValueError, match="no data of its own"):
        attrpreserve.audit(model, candidate)
    # a dict of data fields over the checkpoint's, the split named
    result = attrpreserve.audit(TEACHER, candidate, {"spec": "scenes", "n_val": 8}, split="val",
                                n_boot=10)
    assert result.passed and result.requirements == () and result.to_dict()["split"] == "val"
    assert math.isclose(result.agreement("spearman").value, 1.0)


def test_an_interval_bound_without_bootstrap_says_why():
    doc = _audit()
    doc["settings"] = {**doc.get("settings", {}), "n_boot": 0}
    doc["explainers"]["gradcam"]["agreement"]["spearman"]["ci_low"] = None
    failure = check(doc, "gradcam:spearman.low>=0.5").failures[0]
    assert "undefined (null)" in failure.line and "--n-boot 0" in failure.line
