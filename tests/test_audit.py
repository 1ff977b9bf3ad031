"""The audit API and the evaluator's new keys on a tiny VGG and synthetic scenes."""

import copy
import json
import math
import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from attrpreserve.data import build_dataset
from attrpreserve.evaluate import (audit, evaluate_models, per_class_mean, randomize_model,
                                   top1_agreement)
from attrpreserve.models import create_model
from attrpreserve.models.layers import default_layer
from attrpreserve.report import audit_headline, write_audit_report
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
    # vanished explanations first (here the untrained reference's blank maps), then by Spearman
    flags = [m["vanished"] for m in moved]
    assert flags == sorted(flags, reverse=True)
    values = [m["spearman"] for m in moved if not m["vanished"]]
    assert values == sorted(values) and min(m["spearman"] for m in moved) < 0
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
                            "hit_given_teacher_hit", "peak_cells"}
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


MARK = -1.0  # a pixel value no scene has: marks the image whose candidate map goes blank
BLANK, UNLABELLED = 11, 3


def _blank_on_mark(model):
    """A copy of ``model`` whose explained layer outputs zeros for images marked with ``MARK``
    at pixel (0, 0, 0): their Grad-CAM maps are blank, every other map is ``model``'s."""
    other = copy.deepcopy(model)
    marked = {}
    other.register_forward_pre_hook(
        lambda m, args: marked.update(rows=args[0][:, 0, 0, 0] == MARK))
    other.get_submodule(default_layer(other)).register_forward_hook(
        lambda m, args, out: out.masked_fill(marked["rows"].view(-1, 1, 1, 1), 0.0))
    return other


class _Photos(Dataset):
    """16 scenes with file names, as photo folders have; image ``BLANK`` marked, image
    ``UNLABELLED`` without a label (no pair)."""

    def __init__(self):
        self.base = build_dataset("scenes", "test", size=32, seed=0, n=16)
        self.classes = self.base.classes
        self.files = [Path("photos") / f"IMG_{i:04d}.jpg" for i in range(len(self.base))]

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        image, labels, mask = self.base[i]
        if i == BLANK:
            image = image.clone()
            image[0, 0, 0] = MARK
        return image, labels * (i != UNLABELLED), mask


def _rows(html: str, section: str) -> list[list[str]]:
    """The body rows (cell texts) of the tables in one section of a page."""
    part = html[html.index(f'<section id="{section}">'):]
    part = part[:part.index("</section>")]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
            for row in re.findall(r"<tr>(.*?)</tr>", part, re.S) if "<td" in row]


def test_a_blank_candidate_map_is_flagged_first_and_every_count_matches(setup, tmp_path):
    """The photo whose candidate Grad-CAM is blank scores Spearman 0 (it used to be NaN and
    dropped), is flagged by name in the headline, comes first in "explanation forgotten", and
    the headline, the per-image table and the histogram count the same 15 images (the 16th
    has no label, so no pair)."""
    model = setup[0]
    data = _Photos()
    candidate = _blank_on_mark(model)
    res = audit(model, candidate, DataLoader(data, batch_size=8), n_boot=100, progress=False)
    validate_audit(res)
    json.dumps(res, allow_nan=False)
    rep = res["explainers"]["gradcam"]
    rows = rep["per_image"]
    assert [r["index"] for r in rows if r["vanished"]] == [BLANK]
    assert rows[BLANK]["blank"] == ["b"] and rows[BLANK]["name"] == f"IMG_{BLANK:04d}.jpg"
    assert rows[BLANK]["spearman"] == pytest.approx(0.0, abs=1e-12)
    assert rep["vanished_pairs"] == 1 and rows[UNLABELLED]["classes"] == []
    # every pair is scored: all others identical (1), the vanished one 0
    n = res["pairs"]
    assert rep["agreement"]["spearman"]["mean"] == pytest.approx((n - 1) / n, abs=1e-9)
    first = rep["most_moved"][0]
    assert first["index"] == BLANK and first["vanished"]
    assert first["pairs"][0]["blank"] == "b" and first["pairs"][0]["spearman"] == 0.0

    head = audit_headline(res, "gradcam")
    assert (f"1 of 15 images: candidate's gradcam map is blank (constant) where reference's "
            f"is not: IMG_{BLANK:04d}.jpg.") in head["summary"]
    assert "stayed close" not in head["summary"] and not head["perfect"]
    assert f"over {n} (image, class) pairs on 15 images" in head["sentences"][0]

    html = write_audit_report(res, tmp_path / "audit.html", model, candidate, data,
                              names=("reference", "candidate")).read_text(encoding="utf-8")
    per_image = _rows(html, "distribution")
    assert len(per_image) == 15 and f"IMG_{UNLABELLED:04d}.jpg" not in [r[0] for r in per_image]
    assert "1 of 16 images have no ground-truth class" in html
    gallery = _rows(html, "gallery")[0]
    assert gallery[1] == f"IMG_{BLANK:04d}.jpg" and "B" in gallery


def test_peak_agreement_is_in_native_map_cells(setup):
    """Peaks are compared in cells of each explainer's own map: Grad-CAM's 4 x 4 layer map at
    32 px (8 px a cell), the gradient's input-resolution map (1 px a cell)."""
    model, randomized, loader = setup
    res = audit(model, randomized, loader, explainers=("gradcam", "gradient"), n_boot=20,
                progress=False)
    validate_audit(res)
    assert res["settings"]["peak_tolerance_cells"] == 1.5
    cam, grad = res["explainers"]["gradcam"], res["explainers"]["gradient"]
    assert cam["grid"] == {"a": [4, 4], "b": [4, 4]} and cam["cell_px"] == 8.0
    assert grad["grid"] == {"a": [32, 32], "b": [32, 32]} and grad["cell_px"] == 1.0
    for rep in (cam, grad):
        agr = rep["agreement"]
        assert agr["peak_cells"]["mean"] == pytest.approx(
            agr["peak_distance"]["mean"] / rep["cell_px"], rel=1e-9)
        pairs = [p for m in rep["most_moved"] for p in m["pairs"]]
        assert pairs and all(p["argmax_agree"] == (p["peak_cells"] <= 1.5) for p in pairs)
    assert "peaks within 1.5 cells (12 px) of each other" in \
        audit_headline(res, "gradcam")["sentences"][0]
    loose = audit(model, randomized, loader, n_boot=20, progress=False, peak_tolerance=10.0)
    assert loose["explainers"]["gradcam"]["agreement"]["argmax_agree"]["mean"] == 1.0


def test_one_verdict_per_explainer(setup):
    """A high mean Spearman with many low-agreement pairs is not "stayed close" beside a
    contradicting sentence: one verdict, the rest stated as facts."""
    model, _, loader = setup
    res = audit(model, model, loader, n_boot=20, progress=False)
    rep = res["explainers"]["gradcam"]
    hidden = rep["hidden_disagreement"]
    rep["agreement"]["spearman"]["mean"] = 0.994
    hidden["share_low"]["mean"] = hidden["share_low_among_same_decision"]["mean"] = 0.22
    hidden["same_decision_low_agreement_pairs"] = 7
    head = audit_headline(res, "gradcam")
    text = " ".join([head["summary"], *head["sentences"]])
    assert "stayed close" not in text and "different reason" not in text
    assert head["summary"].startswith("Candidate's gradcam explanations moved on some images: "
                                      "mean Spearman 0.994, but low agreement on 22% of pairs")
    hidden["share_low"]["mean"] = 0.05
    assert "stayed close" in audit_headline(res, "gradcam")["summary"]


def test_single_label_audit_compares_top1(setup, tmp_path):
    """Softmax classifiers: top-1 of each model and top-1 agreement, never sigmoid F1, mAP or
    label-set agreement."""
    model, randomized, loader = setup
    a, b = copy.deepcopy(model), copy.deepcopy(randomized)
    a.single_label = b.single_label = True
    images, labels, masks = next(iter(loader))
    onehot = torch.nn.functional.one_hot(labels.argmax(dim=1), labels.shape[1]).float()
    data = TensorDataset(images, onehot, masks)
    res = audit(a, b, DataLoader(data, batch_size=4), n_boot=20, progress=False)
    validate_audit(res)
    task = res["task"]
    assert task["single_label"] and set(task["a"]) == set(task["b"]) == {"top1"}
    assert not {"label_set_agreement", "decision_agreement"} & set(task)
    with torch.no_grad():
        top_a, top_b = a(images).argmax(dim=1), b(images).argmax(dim=1)
    assert task["top1_agreement"] == pytest.approx(top1_agreement(a(images), b(images)))
    assert task["a"]["top1"] == pytest.approx(float((top_a == labels.argmax(dim=1)).double()
                                                    .mean()))
    rep = res["explainers"]["gradcam"]
    for r in rep["per_image"]:
        i = r["index"]
        assert (r["top1_a"], r["top1_b"]) == (int(top_a[i]), int(top_b[i]))
        assert r["predictions_agreed"] == (top_a[i] == top_b[i])
    assert rep["hidden_disagreement"]["same_decision_pairs"] == int((top_a == top_b).sum())
    head = audit_headline(res, "gradcam", ("A", "B"))
    assert any("the same top-1 class on" in t for t in head["sentences"])
    html = write_audit_report(res, tmp_path / "audit.html", a, b, data).read_text(
        encoding="utf-8")
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)  # the figures' bytes
    assert "top-1 accuracy" in text and "same top-1" in text
    assert "label set" not in text and "F1" not in text and "mAP" not in text
