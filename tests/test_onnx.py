"""ONNX export (compress.onnx, pipeline.onnx_export): the file computes what the PyTorch model
does in onnxruntime, a fake-quant model goes out as int8 QDQ, and the CLI exports a checkpoint
and audits the file beside its PyTorch source."""

import json

import pytest
import torch

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from conftest import assert_close_reordered  # noqa: E402

from attrpreserve.cli import main  # noqa: E402
from attrpreserve.compress import convert_int8, prepare_qat  # noqa: E402
from attrpreserve.compress.onnx import (OnnxModel, export_onnx, load_onnx,  # noqa: E402
                                        sidecar_path)
from attrpreserve.loading import load_model  # noqa: E402
from attrpreserve.models import create_model  # noqa: E402
from attrpreserve.results_schema import validate_audit  # noqa: E402

TINY = ["--n-train", "64", "--n-val", "32", "--n-test", "16", "--batch-size", "32",
        "--no-progress"]


def _vgg():
    torch.manual_seed(0)
    return create_model("vgg", num_classes=5, width=4, input_size=32,
                        input_norm=[[0.4, 0.5, 0.6], [0.2, 0.25, 0.3]]).eval()


def _ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.numerics
def test_float_export_computes_the_models_logits(tmp_path):
    """Same function in onnxruntime, any batch size: within float32 reordering of the sums
    (conftest's tolerance), including the input normalisation the model carries."""
    model = _vgg()
    assert export_onnx(model, tmp_path / "m.onnx", 32) == "float"
    ort_model = OnnxModel(tmp_path / "m.onnx")
    for batch in (1, 7):
        x = torch.rand(batch, 3, 32, 32)
        with torch.no_grad():
            expected = model(x)
        assert_close_reordered(ort_model(x), expected)
    other = _vgg()  # the check can fail: another model's weights are far outside it
    with torch.no_grad():
        other.features[0].weight.mul_(1.5)
        assert (ort_model(x) - other(x)).abs().max() > 1e-3 * expected.abs().max()


@pytest.mark.numerics
def test_qat_model_exports_as_int8_qdq(tmp_path):
    """A fake-quant VGG goes out as QuantizeLinear / DequantizeLinear with int8 weights; in
    onnxruntime it computes torch's int8 model up to requantization rounding (a few steps of
    the output grid) and keeps its top-1 decisions."""
    torch.manual_seed(0)
    calib = torch.rand(64, 3, 32, 32)
    qat = prepare_qat(_vgg(), calibration=calib).eval()
    assert export_onnx(qat, tmp_path / "q.onnx", 32) == "int8 QDQ"
    export_onnx(_vgg(), tmp_path / "f.onnx", 32)
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(tmp_path / "q.onnx")
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    int8 = [a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute
            if a.t.data_type == onnx.TensorProto.INT8 and len(a.t.dims) == 4]
    assert len(int8) == sum(isinstance(m, torch.nn.Conv2d) for m in _vgg().modules())
    assert (tmp_path / "q.onnx").stat().st_size < 0.6 * (tmp_path / "f.onnx").stat().st_size

    x = torch.rand(64, 3, 32, 32)
    ort_out = OnnxModel(tmp_path / "q.onnx")(x)
    torch_int8 = convert_int8(qat)
    with torch.no_grad():
        fake, real = qat(x), torch_int8(x)
    step = torch_int8.classifier[-1].scale  # the output grid of the int8 head
    assert (ort_out - real).abs().max() <= 4 * step + 1e-6
    assert (ort_out.argmax(1) == fake.argmax(1)).float().mean() >= 0.95


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny scenes teacher (CLI) and its ONNX export."""
    root = tmp_path_factory.mktemp("onnx")
    assert main(["train", "--data", "scenes", "--width", "4", "--epochs", "1", *TINY,
                 "--out", str(root / "teacher")]) == 0
    assert main(["export", "--model", str(root / "teacher"), "--format", "onnx", "--n", "24",
                 "--out", str(root / "teacher.onnx")]) == 0
    return root


def test_cli_export_writes_the_file_and_its_check(exported, capsys):
    side = json.loads(sidecar_path(exported / "teacher.onnx").read_text())
    check = side["onnx"]["check"]
    assert check["images"] == 24 and check["split"] == "val" and check["data"] == "scenes"
    assert check["top1_agreement"] == 1.0 and check["max_abs_logit_diff"] < 1e-4
    assert side["onnx"]["source"] == str(exported / "teacher")
    assert side["onnx"]["input_size"] == 64 and side["data"]["spec"] == "scenes"
    assert {"torch", "onnx", "onnxruntime"} <= set(side["onnx"]["versions"])
    model, meta = load_model(exported / "teacher.onnx")
    assert isinstance(model, OnnxModel) and meta["classes"] == side["classes"]
    # its parameters are the file's weights: the source's with each BatchNorm folded into its
    # convolution (the BN's scale into the weights, its shift becoming the conv's bias)
    source = load_model(exported / "teacher")[0]
    scales = sum(m.weight.numel() for m in source.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert sum(p.numel() for p in model.parameters()) == \
        sum(p.numel() for p in source.parameters()) - scales


def test_cli_audit_scores_the_onnx_file_and_its_source(exported, capsys):
    out = exported / "audit"
    assert main(["audit", "--reference", str(exported / "teacher"), "--candidate",
                 str(exported / "teacher.onnx"), "--explainers", "occlusion", "--n-boot", "20",
                 "--n-test", "4", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "its PyTorch source" in printed
    result = validate_audit(json.loads((out / "audit.json").read_text()))
    onnx_rho = result["explainers"]["occlusion"]["agreement"]["spearman"]["mean"]
    source = result["source_candidate"]
    torch_rho = source["explainers"]["occlusion"]["agreement"]["spearman"]["mean"]
    assert source["candidate"] == str(exported / "teacher")
    # a float export of the reference itself: both explain exactly like the reference
    assert torch_rho == pytest.approx(1.0) and onnx_rho > 0.99


def test_gradient_explainer_of_an_onnx_model_is_one_line(exported, capsys):
    code = main(["audit", "--reference", str(exported / "teacher"), "--candidate",
                 str(exported / "teacher.onnx"), "--explainers", "gradcam",
                 "--out", str(exported / "refused")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "'gradcam'" in err and "teacher.onnx" in err and "occlusion" in err


def test_an_onnx_teacher_is_refused_in_one_line(exported, tmp_path, capsys):
    assert main(["compress", "--teacher", str(exported / "teacher.onnx"), "--method", "kd",
                 "--out", str(tmp_path / "student")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "forward only" in err


def test_export_errors_are_one_line(exported, tmp_path, capsys):
    assert main(["export", "--model", str(exported / "teacher"),
                 "--out", str(tmp_path / "model.pt")]) == 2
    assert ".onnx" in capsys.readouterr().err
    (tmp_path / "bare.onnx").write_bytes((exported / "teacher.onnx").read_bytes())
    with pytest.raises(ValueError, match="sidecar"):
        load_onnx(tmp_path / "bare.onnx")


def test_qat_checkpoint_export_records_the_int8_check(exported, capsys):
    """A fake-quant checkpoint exports as int8 QDQ; the sidecar holds its check against the
    fake-quant model and torch's int8 model, in steps of the int8 output grid."""
    from attrpreserve.loading import load_checkpoint
    from attrpreserve.models import save_checkpoint

    teacher, meta = load_checkpoint(exported / "teacher")
    qat = prepare_qat(teacher, calibration=torch.rand(32, 3, 64, 64)).eval()
    meta = {k: v for k, v in meta.items() if k != "model"}  # the QAT model's spec is its own
    save_checkpoint(exported / "qat", qat, {**meta, "role": "compressed"})
    assert main(["export", "--model", str(exported / "qat"), "--n", "16",
                 "--out", str(exported / "qat.onnx")]) == 0
    assert "output steps" in capsys.readouterr().out
    side = json.loads(sidecar_path(exported / "qat.onnx").read_text())["onnx"]
    assert side["form"] == "int8 QDQ"
    int8 = side["check_int8"]
    assert int8["output_step"] > 0 and int8["images"] == 16
    assert int8["max_abs_logit_diff_steps"] == pytest.approx(
        int8["max_abs_logit_diff"] / int8["output_step"])
    assert int8["max_abs_logit_diff_steps"] <= 4 and side["check"]["top1_agreement"] >= 0.9


def test_evaluate_scores_an_onnx_file(exported, capsys):
    from attrpreserve.results_schema import validate_results

    out = exported / "eval.json"
    assert main(["evaluate", "--teacher", str(exported / "teacher"), "--model",
                 str(exported / "teacher.onnx"), "--explainers", "occlusion", "--n-test", "4",
                 "--n-val", "4", "--no-progress", "--out", str(out)]) == 0
    runs = {r["name"]: r for r in validate_results(json.loads(out.read_text()))["runs"]}
    run = runs["teacher.onnx"]
    assert run["cost"]["bytes"] == (exported / "teacher.onnx").stat().st_size
    assert run["attribution"]["occlusion"]["agreement"]["spearman"] > 0.99


def test_a_failed_check_leaves_no_file_without_its_sidecar(exported, tmp_path, capsys,
                                                           monkeypatch):
    from attrpreserve.pipeline import onnx_export

    def fails(*args, **kwargs):
        raise ValueError("the check failed")

    monkeypatch.setattr(onnx_export, "_checked", fails)
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", str(exported / "teacher"), "--format", "onnx", "--n",
                 "4", "--out", str(out)]) == 2
    assert "the check failed" in capsys.readouterr().err
    assert sorted(tmp_path.iterdir()) == []  # neither the file nor a temporary
