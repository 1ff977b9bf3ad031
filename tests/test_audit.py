"""The audit API and the evaluator's new keys on a tiny VGG and synthetic scenes."""

import json
import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from attrpreserve.data import build_dataset
from attrpreserve.evaluate import audit, evaluate_models, per_class_mean, randomize_model
from attrpreserve.models import create_model
from attrpreserve.results_schema import validate_audit


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = create_model("vgg", num_classes=8, width=8, input_size=32).eval()
    data = build_dataset("scenes", "test", size=32, seed=0, n=16)
    return model, randomize_model(model, seed=1), DataLoader(data, batch_size=8)


def _zero_width(entry, value=0.0, abs_tol=1e-9):
    return (entry["ci_low"] == pytest.approx(value, abs=abs_tol)
            and entry["ci_high"] == pytest.approx(value, abs=abs_tol))


def test_audit_of_a_model_against_itself_is_perfect(setup):
    model, _, loader = setup
    res = audit(model, model, loader, explainers=("gradcam", "gradient"), n_boot=200,
                progress=False)
    json.dumps(res, allow_nan=False)  # JSON-safe
    validate_audit(res)
    assert res["images"] == 16 and res["localization"] is True
    assert res["task"]["decision_agreement"] == 1.0
    assert res["task"]["label_set_agreement"] == 1.0
    for e in ("gradcam", "gradient"):
        rep = res["explainers"][e]
        for k in ("spearman", "argmax_agree", "ssim", "topk_iou"):
            assert rep["agreement"][k]["mean"] == pytest.approx(1.0)
            assert _zero_width(rep["agreement"][k], 1.0)
        for metric, d in rep["localization"].items():
            assert d["delta"] == 0.0 and _zero_width(d), metric
            assert d["a"] == d["b"]
        for row in rep["per_class"].values():
            assert row["argmax_agree"]["mean"] == 1.0
            assert row["spearman"]["mean"] in (1.0, None) or \
                row["spearman"]["mean"] == pytest.approx(1.0)
        hidden = rep["hidden_disagreement"]
        assert hidden["same_decision_pairs"] == res["pairs"]
        assert hidden["share_low_among_same_decision"]["mean"] == 0.0
        assert all(r["predictions_agreed"] for r in rep["per_image"])


def test_audit_against_a_randomized_copy_reports_disagreement(setup):
    model, randomized, loader = setup
    res = audit(model, randomized, loader, n_boot=200, top=5, progress=False)
    validate_audit(res)
    rep = res["explainers"]["gradcam"]
    spearman = rep["agreement"]["spearman"]
    assert spearman["mean"] < 0.3
    assert spearman["ci_low"] <= spearman["mean"] <= spearman["ci_high"]
    assert rep["agreement"]["argmax_agree"]["mean"] < 0.5
    assert rep["hidden_disagreement"]["share_low_among_same_decision"]["mean"] > 0.5
    moved = rep["most_moved"]
    assert len(moved) == 5
    values = [m["spearman"] for m in moved]
    assert values == sorted(values) and values[0] < 0
    labels = loader.dataset.labels
    for m in moved:
        assert m["classes"] == labels[m["index"]].nonzero()[:, 0].tolist()
        assert {p["class"] for p in m["pairs"]} == set(m["classes"])
    rows = rep["per_image"]
    assert [r["index"] for r in rows] == list(range(16))
    assert sum(len(r["classes"]) for r in rows) == res["pairs"]


@pytest.mark.numerics
def test_audit_agrees_with_the_evaluator(setup):
    """Two paths to the same numbers: the audit's shared-replicate table and the evaluator's
    per-metric bootstrap (same seed, same images)."""
    model, randomized, loader = setup
    res = audit(model, randomized, loader, n_boot=300, seed=3, progress=False)
    ev = evaluate_models({"a": model, "b": randomized}, loader, reference="a", n_boot=300,
                         seed=3, progress=False)
    rep, b = res["explainers"]["gradcam"], ev["b"]["attribution"]["gradcam"]
    a = ev["a"]["attribution"]["gradcam"]
    for metric in ("pointing_game", "pointing_game_std", "auc", "relevance_rank"):
        assert rep["localization"][metric]["a"] == pytest.approx(a[metric])
        assert rep["localization"][metric]["b"] == pytest.approx(b[metric])
        for k in ("delta", "ci_low", "ci_high"):
            assert rep["localization"][metric][k] == pytest.approx(b["delta"][metric][k])
    assert rep["agreement"]["ssim"]["mean"] == pytest.approx(b["agreement"]["ssim"])


def test_audit_without_masks_skips_localization(setup):
    model, randomized, loader = setup
    images, labels, masks = next(iter(loader))
    void = DataLoader(TensorDataset(images, labels, torch.full_like(masks, 255)), batch_size=4)
    res = audit(model, randomized, void, n_boot=50, progress=False)
    assert res["localization"] is False
    rep = res["explainers"]["gradcam"]
    assert rep["localization"] is None
    assert rep["agreement"]["spearman"]["mean"] is not None
    assert all(set(row) == {"pairs", "spearman", "topk_iou", "topk_intersection", "cosine",
                            "ssim", "argmax_agree", "com_shift", "peak_distance",
                            "hit_given_teacher_hit"}
               for row in rep["per_class"].values())
    no_masks = [(images, labels, None)]  # any iterable of batches works
    res2 = audit(model, randomized, no_masks, n_boot=50, progress=False)
    validate_audit(res)
    validate_audit(res2)
    assert res2["explainers"]["gradcam"]["agreement"] == rep["agreement"]
    json.dumps(res2, allow_nan=False)


def test_evaluator_new_keys(setup):
    model, randomized, loader = setup
    images, labels, masks = next(iter(loader))  # 8 images keep the faithfulness pass short
    small = DataLoader(TensorDataset(images, labels, masks), batch_size=4)
    res = evaluate_models({"t": model, "s": randomized}, small, reference="t",
                          faithfulness=True, faithfulness_steps=4, per_image=True, n_boot=100,
                          progress=False)
    t, s = res["t"]["attribution"]["gradcam"], res["s"]["attribution"]["gradcam"]
    assert "delta" not in t and "agreement" not in t
    assert {"relevance_mass", "relevance_rank", "deletion_auc", "insertion_auc"} <= set(s)
    assert "ssim" in s["agreement"] and set(s["agreement_ci"]) == set(s["agreement"])
    assert set(s["delta"]) == {"pointing_game", "pointing_game_std", "auc", "energy_pg",
                               "relevance_mass", "relevance_rank", "deletion_auc",
                               "insertion_auc"}
    for d in s["delta"].values():
        assert d["ci_low"] <= d["delta"] <= d["ci_high"]
    # per class: keys are class indices; the class-balanced mean is the standard pointing game
    per_class = s["per_class"]
    assert sum(per_class["pairs"].values()) == s["pairs"]
    std = [v for v in per_class["pointing_game_std"].values() if not math.isnan(v)]
    assert sum(std) / len(std) == pytest.approx(s["pointing_game_std"])
    assert per_class_mean(torch.tensor(std), torch.arange(len(std))) == pytest.approx(
        s["pointing_game_std"])
    assert len(s["per_image"]["spearman"]) == 8
    plain = evaluate_models({"t": model}, small, progress=False)["t"]["attribution"]["gradcam"]
    assert "deletion_auc" not in plain and "per_image" not in plain


def test_audit_faithfulness_opt_in(setup):
    model, randomized, loader = setup
    images, labels, masks = next(iter(loader))
    small = DataLoader(TensorDataset(images[:4], labels[:4], masks[:4]), batch_size=4)
    res = audit(model, model, small, n_boot=50, faithfulness=True, progress=False)
    validate_audit(res)
    faith = res["explainers"]["gradcam"]["faithfulness"]
    assert set(faith) == {"deletion_auc", "insertion_auc"}
    for d in faith.values():
        assert 0.0 <= d["a"] <= 1.0 and d["delta"] == 0.0 and _zero_width(d)
    assert audit(model, randomized, small, n_boot=10,
                 progress=False)["explainers"]["gradcam"]["faithfulness"] is None
