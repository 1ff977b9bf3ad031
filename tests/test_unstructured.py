"""Iterative global magnitude pruning: exact counts, magnitude order, masks through fine-tuning,
frozen teacher, finalize + checkpoint round-trip."""

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from attrpreserve.compress import finalize, global_magnitude_prune, prunable, schedule, sparsity
from attrpreserve.engine import TrainConfig
from attrpreserve.evaluate.cost import count_nonzero_params
from attrpreserve.matching import WCAM
from attrpreserve.loading import load_checkpoint
from attrpreserve.models import create_model, save_checkpoint
from attrpreserve.recipes import FineTuning, LabelStep, Loaders, unstructured_prune


class TinyConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 5, 3)  # 90 weights
        self.c2 = nn.Conv2d(5, 7, 3)  # 315 weights
        self.fc = nn.Linear(7, 3)

    def forward(self, x):
        return self.fc(self.c2(torch.relu(self.c1(x))).mean((2, 3)))


def _mask_zeros(model):
    return sum(int((getattr(m, "weight_mask") == 0).sum()) for m, _ in prunable(model))


def test_prunable_selects_conv_and_optionally_linear():
    m = TinyConv()
    assert [mod for mod, _ in prunable(m)] == [m.c1, m.c2]
    assert [mod for mod, _ in prunable(m, include_linear=True)] == [m.c1, m.c2, m.fc]


def test_schedule_is_cumulative():
    s = schedule(16, 0.2)
    assert len(s) == 16
    assert s[0] == pytest.approx(0.2) and s[1] == pytest.approx(0.36)
    assert s[-1] == pytest.approx(1 - 0.8 ** 16) and round(s[-1], 3) == 0.972


@pytest.mark.parametrize("rounds", [1, 3, 16])
def test_round_sparsity_matches_remaining_fraction(rounds):
    model = create_model("vgg", num_classes=3, width=4)
    total = sum(m.weight.numel() for m, _ in prunable(model))
    remaining = total
    for r in range(1, rounds + 1):
        global_magnitude_prune(model, 0.2)
        remaining -= round(0.2 * remaining)  # torch: round(amount * n) over the unpruned entries
        assert _mask_zeros(model) == total - remaining
        assert sparsity(model) == (total - remaining) / total
        assert abs(sparsity(model) - schedule(r)[-1]) <= r / total  # 1 - 0.8^r up to rounding
    # Linear layers untouched unless asked.
    assert all(not hasattr(m, "weight_mask") for m in model.modules() if isinstance(m, nn.Linear))


def test_prunes_the_globally_smallest_magnitudes():
    model = TinyConv()
    weights = torch.cat([m.weight.detach().abs().flatten() for m, _ in prunable(model)])
    n = weights.numel()
    k1 = round(0.3 * n)
    thr1 = weights.sort().values[k1 - 1]
    global_magnitude_prune(model, 0.3)
    for m, _ in prunable(model):
        w = m.weight_orig.detach().abs()
        assert torch.equal(m.weight_mask == 0, w <= thr1)
    # Second round: 0.3 of the remaining, again the smallest among the survivors.
    survivors = weights[weights > thr1]
    k2 = round(0.3 * survivors.numel())
    thr2 = survivors.sort().values[k2 - 1]
    global_magnitude_prune(model, 0.3)
    for m, _ in prunable(model):
        assert torch.equal(m.weight_mask == 0, m.weight_orig.detach().abs() <= thr2)
    assert _mask_zeros(model) == k1 + k2


def _loader(n=16, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 64, 64, generator=g)
    labels = (torch.rand(n, classes, generator=g) < 0.4).float()
    labels[labels.sum(1) == 0, 0] = 1.0
    masks = torch.randint(0, classes + 1, (n, 64, 64), generator=g, dtype=torch.int64)
    return DataLoader(TensorDataset(images, labels, masks), batch_size=8, shuffle=False)


@pytest.mark.parametrize("matching", [None, "wcam"])
def test_masks_survive_finetuning_and_teacher_frozen(matching):
    teacher = create_model("vgg", num_classes=3, width=4).eval()
    student = copy.deepcopy(teacher)
    t_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    loader = _loader()
    cfg = TrainConfig(epochs=1, lr=0.05, progress=False)
    step = LabelStep(teacher, WCAM(drop=0.3) if matching else None, lam=10.0)
    records = unstructured_prune(student, Loaders(loader, loader), FineTuning(step, cfg),
                                 rounds=2, per_round=0.2)
    assert [r["round"] for r in records] == [1, 2]
    assert records[-1]["sparsity"] == pytest.approx(0.36, abs=2e-3)
    moved = False
    for m, _ in prunable(student):
        pruned = m.weight_mask == 0
        assert pruned.any()
        eff = m.weight_orig * m.weight_mask
        assert torch.all(eff[pruned] == 0)
        student(torch.zeros(1, 3, 64, 64))  # refresh the pre-hook's weight
        assert torch.all(m.weight.detach()[pruned] == 0)
    for k, v in student.state_dict().items():
        if k.endswith("weight_orig"):
            moved |= not torch.equal(v, t_state[k.replace("_orig", "")])
    assert moved, "fine-tuning did not update the student"
    assert not teacher.training
    assert all(not hasattr(m, "weight_mask") for m in teacher.modules())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, t_state[k]), k
    assert all(p.requires_grad for p in teacher.parameters())


def test_step_is_bce_plus_matching():
    teacher = create_model("vgg", num_classes=3, width=4).eval()
    student = copy.deepcopy(teacher)
    images, labels, _ = next(iter(_loader(n=4)))
    student.eval()
    loss, terms = LabelStep(teacher, None)(student, images, labels)
    ref = nn.functional.binary_cross_entropy_with_logits(student(images), labels)
    torch.testing.assert_close(loss, ref)
    loss, terms = LabelStep(teacher, WCAM(drop=0.0), lam=7.0)(student, images, labels)
    torch.testing.assert_close(loss, terms["bce"] + 7.0 * terms["match"])


def test_finalize_and_checkpoint_round_trip(tmp_path):
    model = create_model("vgg", num_classes=3, width=4).eval()
    for _ in range(3):
        global_magnitude_prune(model, 0.2)
    s = sparsity(model)
    zero_pos = [m.weight_mask == 0 for m, _ in prunable(model)]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    finalize(model)
    assert all(not hasattr(m, "weight_mask") and not hasattr(m, "weight_orig")
               for m in model.modules())
    assert sparsity(model) == s
    conv_zeros = sum(int(p.sum()) for p in zero_pos)
    dense_zeros = sum(int((p == 0).sum()) for p in model.parameters())
    assert dense_zeros >= conv_zeros
    assert count_nonzero_params(model) == sum(p.numel() for p in model.parameters()) - dense_zeros
    save_checkpoint(tmp_path / "ckpt", model)
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    for (m, _), pos in zip(prunable(loaded), zero_pos):
        assert torch.all(m.weight[pos] == 0)
    assert sparsity(loaded) == s
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), before)


def test_sparse_checkpoint_is_compact_and_exact(tmp_path):
    from attrpreserve.evaluate import file_bytes
    model = create_model("vgg", num_classes=3, width=8).eval()
    save_checkpoint(tmp_path / "dense", model)
    for _ in range(10):  # 1 - 0.8^10 = 89% of conv weights pruned
        global_magnitude_prune(model, 0.2)
    finalize(model)
    save_checkpoint(tmp_path / "sparse", model)
    dense_b = file_bytes(tmp_path / "dense" / "model.safetensors")
    sparse_b = file_bytes(tmp_path / "sparse" / "model.safetensors")
    assert sparse_b < 0.3 * dense_b  # ~ 1/8 bit mask + 11% of the values
    loaded, _ = load_checkpoint(tmp_path / "sparse")
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
