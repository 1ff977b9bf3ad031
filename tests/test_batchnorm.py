"""BatchNorm recalibration after surgery: statistics checked against a hand computation."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from attrpreserve.engine import TrainConfig, fit, recalibrate_batchnorm
from attrpreserve.pipeline.stages import made_with


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 2))


def _loader(batches=3, size=5):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batches * size, 3, 8, 8, generator=g) * 3 + 1
    return DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=size)


def _expected(model, loader, batches):
    """Mean over the batches of each batch's per-channel mean and unbiased variance (equal
    batch sizes), of the conv's output."""
    outs = [model[0](x).detach() for x, _ in list(loader)[:batches]]
    means = torch.stack([o.mean((0, 2, 3)) for o in outs])
    variances = torch.stack([o.transpose(0, 1).flatten(1).var(1, unbiased=True) for o in outs])
    return means.mean(0), variances.mean(0)


def test_recalibration_averages_the_first_batches_statistics():
    model, loader = _model(), _loader()
    model.eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()
               if "running" not in k and "num_batches" not in k}
    mean, var = _expected(model, loader, 2)
    assert recalibrate_batchnorm(model, loader, 2) == 10
    bn = model[1]
    # float32 sums of ~180 values per channel: agreement to ~1e-5 relative
    assert torch.allclose(bn.running_mean, mean, rtol=1e-4, atol=1e-5)
    assert torch.allclose(bn.running_var, var, rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.1 and not model.training  # restored
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    # a third batch would change the statistics: it was not used
    assert not torch.allclose(_expected(model, loader, 3)[0], mean, rtol=1e-4, atol=1e-5)


def test_fit_recalibrates_a_fresh_phase_before_training():
    """With frozen BatchNorm the statistics after fit are the recalibrated ones, measured with
    the weights before the first step."""
    model, loader = _model(), _loader()
    mean, var = _expected(model, loader, 2)

    def step(m, images, labels):
        return m(images).pow(2).mean(), {}

    fit(model, loader, None, step, TrainConfig(epochs=1, lr=0.1, freeze_bn=True,
                                               recalibrate_bn=2, progress=False))
    assert torch.allclose(model[1].running_mean, mean, rtol=1e-4, atol=1e-5)
    assert torch.allclose(model[1].running_var, var, rtol=1e-4, atol=1e-5)
    plain = _model()
    fit(plain, loader, None, step, TrainConfig(epochs=1, lr=0.1, freeze_bn=True, progress=False))
    assert torch.equal(plain[1].running_mean, torch.zeros(4))  # untouched without it


def test_recalibrate_bn_validated_and_old_checkpoints_still_match():
    with pytest.raises(ValueError, match="recalibrate_bn"):
        TrainConfig(recalibrate_bn=-1)
    # a checkpoint's config written before the setting existed
    full = {k: v for k, v in TrainConfig(epochs=2).__dict__.items() if k != "recalibrate_bn"}
    assert made_with(full, TrainConfig(epochs=2))
    assert not made_with(full, TrainConfig(epochs=2, recalibrate_bn=5))
