"""The README's quickstart runs as written on a torchvision model (random weights)."""

import torch
import torchvision

from attrpreserve.recipes import multilabel_kd_loss
from attrpreserve.engine import TrainConfig, augment_batch
from attrpreserve.matching import WCAM, AttributionMatcher


def test_readme_quickstart_on_resnet18():
    teacher = torchvision.models.resnet18(num_classes=5)
    student = torchvision.models.resnet18(num_classes=5)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    images, labels = torch.rand(4, 3, 32, 32), (torch.rand(4, 5) > 0.5).float()
    loader = [(images, labels)]
    before = [p.detach().clone() for p in student.parameters()]

    matcher = AttributionMatcher(teacher, student, WCAM(drop=0.3),
                                 teacher_layer="layer4", student_layer="layer4")
    for images, labels in loader:
        s_logits, t_logits, match = matcher(images, labels)
        loss = multilabel_kd_loss(s_logits, t_logits, labels) + 100.0 * match
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    assert torch.isfinite(match) and float(match.detach()) > 0
    assert not teacher.training
    assert any(not torch.equal(b, p) for b, p in zip(before, student.parameters()))


def test_augment_is_a_symmetry_of_the_batch():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    seen = set()
    for seed in range(40):
        y = augment_batch(x, torch.Generator().manual_seed(seed))
        assert sorted(y.flatten().tolist()) == sorted(x.flatten().tolist())
        torch.testing.assert_close(y[:, :, 1:3, 1:3].sum(), x[:, :, 1:3, 1:3].sum())  # centre kept
        seen.add(tuple(y[0, 0].flatten()[:4].tolist()))
    assert len(seen) == 8  # the 8 symmetries of the square all occur


def test_train_config_rejects_bad_values():
    import pytest
    for bad in ({"epochs": 0}, {"lr": -1.0}, {"optimizer": "rmsprop"}, {"schedule": "step"}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)
