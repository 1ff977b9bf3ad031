"""Fixed pair sets (all ground-truth pairs, the teacher's correct ones) on hand cases, and the
evaluator's pair_sets / gap_recovered entries on a tiny VGG and synthetic scenes."""

import copy

import pytest
import torch
from torch.utils.data import DataLoader

from attrpreserve.data import build_dataset
from attrpreserve.evaluate import evaluate_models, pair_set_masks, randomize_model
from attrpreserve.evaluate.runner import AGREEMENT, GAP_METRICS
from attrpreserve.models import create_model


def test_teacher_correct_pairs_multi_label_hand_case():
    # 3 images, 3 classes; ground-truth pairs (0, 0), (0, 2), (1, 1), (2, 0), (2, 1)
    logits = torch.tensor([[2.0, -1.0, -0.5],    # predicts class 0 only
                           [-1.0, 0.0, 3.0],     # logit 0 is not a prediction
                           [0.1, 0.2, -4.0]])    # predicts 0 and 1
    image = torch.tensor([0, 0, 1, 2, 2])
    classes = torch.tensor([0, 2, 1, 0, 1])
    sets = pair_set_masks(logits, image, classes)
    assert sets["all"].tolist() == [True] * 5
    assert sets["teacher_correct"].tolist() == [True, False, False, True, True]


def test_teacher_correct_pairs_single_label_hand_case():
    # single-label: correct = the ground-truth class is the teacher's top-1 (first argmax),
    # whatever the sign of its logit
    logits = torch.tensor([[-3.0, -1.0, -2.0],   # top-1 class 1 though every logit < 0
                           [5.0, 5.0, 1.0],      # tie: the first argmax, class 0
                           [0.0, 0.0, 9.0]])
    image = torch.tensor([0, 1, 2])
    classes = torch.tensor([1, 1, 0])
    sets = pair_set_masks(logits, image, classes, single_label=True)
    assert sets["teacher_correct"].tolist() == [True, False, False]
    # the same logits read as multi-label: only positive logits count
    assert pair_set_masks(logits, image, classes)["teacher_correct"].tolist() == \
        [False, True, False]


@pytest.fixture(scope="module")
def evaluated():
    torch.manual_seed(0)
    data = build_dataset("scenes", "test", size=32, seed=0, n=16)
    model = create_model("vgg", num_classes=len(data.classes), width=8, input_size=32).eval()
    models = {"t": model, "naive": randomize_model(model, seed=1), "matched": copy.deepcopy(model),
              "twin": copy.deepcopy(model)}
    res = evaluate_models(models, DataLoader(data, batch_size=8), reference="t", n_boot=200,
                          progress=False, baselines={"matched": "naive", "twin": "matched"})
    return res


def test_pair_sets_agree_with_the_classic_numbers(evaluated):
    t = evaluated["t"]["attribution"]["gradcam"]
    naive = evaluated["naive"]["attribution"]["gradcam"]
    sets = t["pair_sets"]
    assert set(sets) == {"all", "teacher_correct"}
    assert sets["all"]["pairs"] == t["pairs"]
    assert sets["teacher_correct"]["pairs"] == t["predicted_pairs"]
    # the teacher on its own correct pairs is the paper mode; all pairs balanced = PG15
    tc, every = sets["teacher_correct"]["pooled"], sets["all"]
    assert tc["pointing_game"]["mean"] == pytest.approx(t["pointing_game"], nan_ok=True)
    assert tc["auc"]["mean"] == pytest.approx(t["auc"], nan_ok=True)
    assert every["class_balanced"]["pointing_game_std"]["mean"] == pytest.approx(
        t["pointing_game_std"])
    assert every["pooled"]["energy_pg"]["mean"] == pytest.approx(t["energy_pg"])
    assert "spearman" not in every["pooled"]  # no agreement with itself
    # the same pair set for every model: the naive run's counts are the teacher's
    assert naive["pair_sets"]["teacher_correct"]["pairs"] == sets["teacher_correct"]["pairs"]
    for k in AGREEMENT:
        entry = naive["pair_sets"]["all"]["pooled"][k]
        assert entry["mean"] == pytest.approx(naive["agreement"][k], nan_ok=True)
        if entry["mean"] == entry["mean"]:  # not NaN
            assert entry["ci_low"] <= entry["mean"] <= entry["ci_high"]


def test_gap_recovered_of_a_perfect_copy_and_of_no_gap(evaluated):
    assert "gap_recovered" not in evaluated["naive"]["attribution"]["gradcam"]
    gap = evaluated["matched"]["attribution"]["gradcam"]["gap_recovered"]
    assert gap["naive"] == "naive"
    for s in ("all", "teacher_correct"):
        for how in ("pooled", "class_balanced"):
            assert set(gap[s][how]) == set(GAP_METRICS)
            for k, entry in gap[s][how].items():
                if entry["status"] == "ok":  # the matched model is the teacher: all recovered
                    assert entry["recovered"] == pytest.approx(1.0, abs=1e-6), (s, how, k)
                    assert entry["ci_low"] == pytest.approx(1.0, abs=1e-6)
                    assert entry["ci_high"] == pytest.approx(1.0, abs=1e-6)
    assert gap["all"]["pooled"]["spearman"]["status"] == "ok"  # a randomized net moved far
    # naive = matched = the teacher's copies: teacher minus naive is 0, so no gap
    twin = evaluated["twin"]["attribution"]["gradcam"]["gap_recovered"]
    for k in ("pointing_game", "auc", "spearman", "peak_distance"):
        entry = twin["all"]["pooled"][k]
        assert entry["status"] == "no gap", k
        assert entry["recovered"] != entry["recovered"]  # NaN: no ratio is reported


def test_baselines_must_name_compared_models(evaluated):
    with pytest.raises(ValueError, match="not a compared model"):
        evaluate_models({"t": torch.nn.Identity()}, [], reference="t",
                        baselines={"x": "t"})


def test_gap_against_the_control():
    """The compression-caused gap (control minus naive): a control that is the teacher's copy
    gives the teacher's gap back exactly; a control that is the naive model leaves no gap."""
    torch.manual_seed(0)
    data = build_dataset("scenes", "test", size=32, seed=0, n=16)
    model = create_model("vgg", num_classes=len(data.classes), width=8, input_size=32).eval()
    naive = randomize_model(model, seed=1)
    models = {"t": model, "naive": naive, "matched": copy.deepcopy(model),
              "ctrl": copy.deepcopy(model), "ctrl_naive": copy.deepcopy(naive)}
    loader = DataLoader(data, batch_size=8)
    res = evaluate_models(models, loader, reference="t", n_boot=100, progress=False,
                          baselines={"matched": "naive"}, control="ctrl")
    att = res["matched"]["attribution"]["gradcam"]
    vs_teacher = att["gap_recovered"]["all"]["pooled"]["spearman"]
    vs_control = att["gap_recovered_vs_control"]["all"]["pooled"]["spearman"]
    assert att["gap_recovered_vs_control"]["level"] == "ctrl"
    assert vs_control["status"] == "ok"
    for k in ("teacher", "naive", "matched", "gap", "recovered"):
        assert vs_control[k] == pytest.approx(vs_teacher[k], abs=1e-6), k
    res = evaluate_models(models, loader, reference="t", n_boot=100, progress=False,
                          baselines={"matched": "naive"}, control="ctrl_naive")
    entry = res["matched"]["attribution"]["gradcam"]["gap_recovered_vs_control"]
    assert entry["all"]["pooled"]["spearman"]["status"] == "no gap"
    with pytest.raises(ValueError, match="not a compared model"):
        evaluate_models(models, loader, reference="t", baselines={"matched": "naive"},
                        control="nope")
