"""How evaluate scores a model: single-label (softmax) models by top-1, multi-label ones by mAP and
F1 (also at a threshold chosen on val); each localisation metric beside its centre baseline; the
console table and the explain PNG's title (probabilities, not logits)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from attrpreserve.attribution import EXPLAINERS, upsample
from attrpreserve.data import build_dataset
from attrpreserve.evaluate import evaluate_models
from attrpreserve.evaluate import localization as loc
from attrpreserve.evaluate.faithfulness import deletion_auc
from attrpreserve.evaluate.runner import LOCALIZATION, collect_pairs
from attrpreserve.evaluate.task import best_f1_threshold, per_class_top1, sample_f1
from attrpreserve.models import create_model, save_checkpoint
from attrpreserve.pipeline import stages
from attrpreserve.results_schema import CENTER_BASELINE

SIZE, K = 32, 3


def _vgg(seed: int, single_label: bool, classes: int = K):
    torch.manual_seed(seed)
    model = create_model("vgg", num_classes=classes, width=4, input_size=SIZE).eval()
    model.single_label = single_label
    return model


def _photos(n: int = 12, seed: int = 0):
    """Noise photos, one label each (class i % K), no masks (all void): single-label data."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, SIZE, SIZE, generator=gen)
    labels = torch.nn.functional.one_hot(torch.arange(n) % K, K).float()
    masks = torch.full((n, SIZE, SIZE), 255, dtype=torch.long)
    return list(zip(images, labels, masks))


def test_single_label_model_is_scored_by_top1():
    """A softmax model on single-label photos: top-1 (and per class) against the labels, top-1
    agreement with the reference, its "predicted" pairs are its top-1; no mAP / F1. The same
    weights read as multi-label keep mAP / F1."""
    data = _photos()
    teacher, student = _vgg(0, True), _vgg(1, True)
    multi = _vgg(1, False)
    rows = evaluate_models({"t": teacher, "s": student, "m": multi}, DataLoader(data, 5),
                           reference="t", n_boot=0, progress=False)
    images = torch.stack([d[0] for d in data])
    labels = torch.stack([d[1] for d in data])
    with torch.no_grad():
        top_t, top_s = teacher(images).argmax(1), student(images).argmax(1)
    truth = labels.argmax(1)
    task = rows["s"]["task"]
    assert task["scoring"] == "single-label"
    assert math.isnan(task["mAP"]) and math.isnan(task["F1"]) and task["per_class_AP"] == []
    assert task["top1"] == pytest.approx(float((top_s == truth).double().mean()), abs=1e-12)
    assert task["top1_agreement"] == pytest.approx(float((top_s == top_t).double().mean()),
                                                   abs=1e-12)
    for k in range(K):
        assert task["per_class_top1"][k] == pytest.approx(
            float((top_s[truth == k] == k).double().mean()), abs=1e-12)
    att = rows["s"]["attribution"]["gradcam"]
    assert att["predicted_pairs"] == int((top_s == truth).sum())  # top-1, not logit > 0
    assert rows["m"]["task"]["scoring"] == "multi-label"
    assert not math.isnan(rows["m"]["task"]["F1"]) and "per_class_top1" not in rows["m"]["task"]
    # no masks: no localisation and no centre baseline
    assert att["auc"] is None or math.isnan(att["auc"])
    assert math.isnan(att["auc" + CENTER_BASELINE])


def test_single_label_faithfulness_uses_softmax():
    data = _photos(4)
    model = _vgg(0, True)
    got = collect_pairs({"t": model}, DataLoader(data, 4), "t", faithfulness=True,
                        faithfulness_steps=4, progress=False)
    images = torch.stack([d[0] for d in data])
    idx, cls = torch.stack([d[1] for d in data]).nonzero(as_tuple=True)
    raw, _ = EXPLAINERS["gradcam"](model, images, idx, cls, None)
    maps = upsample(raw, (SIZE, SIZE)).float()
    want = deletion_auc(model, images, idx, cls, maps, steps=4, score="softmax")
    torch.testing.assert_close(got["pairs"]["t"]["gradcam"]["deletion_auc"], want,
                               rtol=0, atol=1e-6)


def test_f1_threshold_hand_case():
    # at 0.5 neither image predicts anything (F1 0); in (0.35, 0.40] both label sets are exact
    probs = torch.tensor([[0.40, 0.10], [0.35, 0.45]])
    labels = torch.tensor([[1, 0], [0, 1]])
    assert sample_f1(probs, labels) == 0.0
    assert best_f1_threshold(probs, labels) == 0.40  # ties: the one nearest 0.5
    assert sample_f1(probs, labels, 0.40) == 1.0
    assert per_class_top1(probs, labels) == [1.0, 1.0]


def test_multi_label_f1_at_a_threshold_chosen_on_val():
    data = build_dataset("scenes", "test", size=SIZE, seed=0, n=12)
    val = build_dataset("scenes", "val", size=SIZE, seed=0, n=12)
    model = _vgg(0, False, len(data.classes))
    rows = evaluate_models({"m": model}, DataLoader(data, 6), n_boot=0, progress=False,
                           threshold_loader=DataLoader(val, 6))
    task = rows["m"]["task"]
    with torch.no_grad():
        p_val = torch.sigmoid(model(torch.stack([v[0] for v in val])))
        p_test = torch.sigmoid(model(torch.stack([d[0] for d in data])))
    y_val = torch.stack([torch.as_tensor(v[1]) for v in val])
    y_test = torch.stack([torch.as_tensor(d[1]) for d in data])
    t = best_f1_threshold(p_val, y_val)
    assert task["F1_val_threshold"] == t
    assert task["F1_at_val_threshold"] == pytest.approx(sample_f1(p_test, y_test, t), abs=1e-12)
    assert task["F1"] == pytest.approx(sample_f1(p_test, y_test), abs=1e-12)
    # without a val loader: no threshold keys
    plain = evaluate_models({"m": model}, DataLoader(data, 6), n_boot=0, progress=False)
    assert "F1_at_val_threshold" not in plain["m"]["task"]


def test_center_baselines_beside_each_localisation_metric():
    """Every localisation metric has its centre baseline: the centred Gaussian's score on the
    same pairs, aggregated as the metric (the model's predicted pairs for paper-mode PG / AUC,
    per-class means for the 15 px PG), and on the fixed pair sets."""
    data = build_dataset("scenes", "test", size=SIZE, seed=0, n=10)
    models = {"t": _vgg(0, False, len(data.classes)), "s": _vgg(1, False, len(data.classes))}
    rows = evaluate_models(models, DataLoader(data, 5), reference="t", n_boot=20,
                           progress=False)
    masks = torch.stack([torch.as_tensor(d[2]) for d in data])
    labels = torch.stack([torch.as_tensor(d[1]) for d in data])
    img, cls = labels.nonzero(as_tuple=True)
    obj, valid = masks[img] == (cls + 1)[:, None, None], masks[img] != 255
    center = loc.center_point_maps(len(cls), SIZE, SIZE)
    auc, energy = loc.roc_auc(center, obj, valid), loc.energy_pointing_game(center, obj, valid)
    hit15 = loc.pointing_hits_tolerance(center, obj, 15.0, valid)
    with torch.no_grad():
        logits = models["s"](torch.stack([d[0] for d in data]))
    pred = logits[img, cls] > 0
    att = rows["s"]["attribution"]["gradcam"]

    def mean(x):
        x = x[~torch.isnan(x)]
        return float(x.mean())

    assert att["auc" + CENTER_BASELINE] == pytest.approx(mean(auc[pred]), abs=1e-12)
    assert att["energy_pg" + CENTER_BASELINE] == pytest.approx(mean(energy), abs=1e-12)
    assert att["pointing_game_std" + CENTER_BASELINE] == pytest.approx(
        loc.per_class_mean(hit15, cls), abs=1e-12)
    assert {out + CENTER_BASELINE for out, *_ in LOCALIZATION} <= set(att)
    pooled = att["pair_sets"]["all"]["pooled"]
    assert pooled["auc" + CENTER_BASELINE]["mean"] == pytest.approx(mean(auc), abs=1e-12)
    # the same pairs for every run: the same baseline
    assert rows["t"]["attribution"]["gradcam"]["pair_sets"]["all"]["pooled"][
        "energy_pg" + CENTER_BASELINE] == pooled["energy_pg" + CENTER_BASELINE]


def test_format_table_of_single_label_runs_has_no_map_or_f1():
    runs = []
    for name, top1, agree in (("teacher", 0.9, None), ("student", 0.8, 0.85)):
        task = {"scoring": "single-label", "mAP": None, "F1": None, "per_class_AP": [],
                "top1": top1, **({"top1_agreement": agree} if agree else {})}
        runs.append({"name": name, "task": task, "attribution": {"gradcam": {}},
                     "cost": {"params": 10, "macs": 2e6, "latency_ms": 1.0}})
    header, *rows = stages.format_table({"runs": runs}).splitlines()
    assert header.split()[:3] == ["run", "top1", "top1"] and "agr" in header
    assert "mAP" not in header and "F1" not in header and "PG" not in header
    assert rows[1].split()[:3] == ["student", "0.800", "0.850"]


def test_explain_titles_show_probabilities(tmp_path):
    model = _vgg(0, False)
    ckpt = save_checkpoint(tmp_path / "m", model, {"classes": ["a", "b", "c"],
                                                   "data": {"size": SIZE},
                                                   "compression": {"method": "none",
                                                                   "matching": "none"}})
    image = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
                    ).save(image)
    rows = stages._overlays(ckpt, image, ("gradcam",), ["b"])
    (_, (x, _, title)), = rows
    with torch.no_grad():
        p = torch.sigmoid(model(x[None]))[0, 1]
    assert title == f"gradcam: b (p={float(p):.2f}, sigmoid)"
    assert "logit" not in title
    assert stages._model_label("pretrained:efficientnet-lite0,classes=data/imagenette") == \
        "efficientnet-lite0 (imagenette classes)"
    assert stages._model_label(tmp_path / "m") == "m"
