"""Photo folders (``images:FOLDER``), their labels for a model, and the label-free loss."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from attrpreserve.data import build_dataset
from attrpreserve.data.images import ImageSet, held_out, resolve_class
from attrpreserve.engine import TrainConfig, fit
from attrpreserve.pipeline import DataConfig, labels_for
from attrpreserve.recipes import softmax_kd_loss


def _photo(path, seed, size=(40, 30)):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


@pytest.fixture
def flat(tmp_path):
    for i in range(5):
        _photo(tmp_path / "flat" / f"p{i}.{'png' if i % 2 else 'jpg'}", i)
    (tmp_path / "flat" / "notes.txt").write_text("not a photo, ignored")
    return tmp_path / "flat"


@pytest.fixture
def labeled(tmp_path):
    for name, n in (("tabby", 3), ("golden_retriever", 2)):
        for i in range(n):
            _photo(tmp_path / "lab" / name / f"{i}.png", len(name) + i)
    return tmp_path / "lab"


def test_unlabeled_folder_splits_and_items(flat):
    assert held_out(5, 0.2) == [False, False, False, False, True]
    train = build_dataset(f"images:{flat}", "train", size=32)
    val = build_dataset(f"images:{flat}", "val", size=32)
    assert len(train) == 4 and len(val) == 1 and not train.labeled
    assert [p.name for p in val.files] == ["p4.jpg"]
    image, labels, mask = val[0]
    assert image.shape == (3, 32, 32) and 0 <= image.min() and image.max() <= 1
    assert labels.shape == (0,) and mask.dtype == torch.int64 and bool((mask == 255).all())
    assert torch.equal(val[0][0], val[0][0])  # eval crops are deterministic
    torch.manual_seed(0)
    a = train[0][0]
    torch.manual_seed(1)
    assert not torch.equal(a, train[0][0])  # random-resized crops and flips
    half = build_dataset(f"images:{flat},holdout=0.5", "val", size=32)
    assert len(half) == 2
    with pytest.raises(ValueError, match="holdout"):
        build_dataset(f"images:{flat},holdout=2", "val")
    with pytest.raises(ValueError, match="unknown option"):
        build_dataset(f"images:{flat},seed=2", "val")


def test_labeled_folder_maps_onto_model_classes(labeled):
    ds = build_dataset(f"images:{labeled}", "train", size=16)
    assert ds.labeled and ds.classes == ["golden_retriever", "tabby"]
    model_classes = ["tench", "golden retriever", "tabby", "crane", "crane"]
    mapped = ds.with_classes(model_classes)
    assert len(mapped.classes) == 5
    assert {int(mapped[i][1].argmax()) for i in range(len(mapped))} == {1, 2}
    assert all(float(mapped[i][1].sum()) == 1 for i in range(len(mapped)))
    assert resolve_class("3", model_classes) == 3
    with pytest.raises(ValueError, match="ambiguous"):
        resolve_class("crane", model_classes)
    with pytest.raises(ValueError, match="'zebra' is not one of"):
        resolve_class("zebra", model_classes)


def test_split_subfolders_and_bad_files_are_named(tmp_path):
    for split in ("train", "val"):
        for i in range(2):
            _photo(tmp_path / "s" / split / f"{split}{i}.png", i)
    assert len(build_dataset(f"images:{tmp_path / 's'}", "val", size=16)) == 2
    with pytest.warns(UserWarning, match="split 'test'"):
        assert len(build_dataset(f"images:{tmp_path / 's'}", "test", size=16)) == 2
    bad = tmp_path / "bad"
    _photo(bad / "ok.png", 0)
    (bad / "broken.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        build_dataset(f"images:{bad},holdout=0.5", "train", size=16)
    mixed = tmp_path / "mixed"
    _photo(mixed / "a.png", 0)
    _photo(mixed / "cls" / "b.png", 1)
    with pytest.raises(ValueError, match="both photos and subfolders"):
        build_dataset(f"images:{mixed}", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no photos"):
        build_dataset(f"images:{tmp_path / 'empty'}", "train")
    with pytest.raises(ValueError, match="not found"):
        build_dataset(f"images:{tmp_path / 'missing'}", "train")


@pytest.mark.numerics
def test_label_free_loss_has_no_task_term():
    s = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    t = torch.tensor([[1.0, 1.0, 0.0], [3.0, 0.0, 0.0]])
    temp = 2.0
    p, q = F.softmax(t / temp, 1), F.softmax(s / temp, 1)
    kd = temp ** 2 * float((p * (p.log() - q.log())).sum(1).mean())  # by hand
    none = torch.zeros(2, 3)
    assert math.isclose(float(softmax_kd_loss(s, t, none, temp, alpha=0.3)), kd, rel_tol=1e-5)
    assert math.isclose(float(softmax_kd_loss(s, t, None, temp, alpha=0.3)), kd, rel_tol=1e-5)
    assert math.isclose(float(softmax_kd_loss(s, t, torch.zeros(2, 0), temp)), kd, rel_tol=1e-5)
    one = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])  # only row 0 is labeled
    ce = -float(F.log_softmax(s[0], 0)[2])
    want = 0.3 * kd + 0.7 * ce
    assert math.isclose(float(softmax_kd_loss(s, t, one, temp, alpha=0.3)), want, rel_tol=1e-5)
    assert float(softmax_kd_loss(t * temp, t * temp, none, temp)) == pytest.approx(0, abs=1e-6)


class _Tiny(nn.Module):
    def __init__(self, k=4):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, k)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).relu().mean((2, 3)))


def test_pseudo_labels_follow_the_model(flat):
    torch.manual_seed(0)
    model = _Tiny(4).eval()
    ds = build_dataset(f"images:{flat}", "train", size=16)
    out = labels_for(model, ["a", "b", "c", "d"])(ds)
    with torch.no_grad():
        # (the same batch of the same images as labels_for runs: the same computation)
        top1 = model(torch.stack([ds[i][0] for i in range(len(ds))])).argmax(1)
    assert torch.equal(torch.stack([out[i][1] for i in range(len(out))]).argmax(1), top1)
    assert out.classes == ["a", "b", "c", "d"] and out.how == "teacher top-1"
    plain = labels_for(model, ["a", "b", "c", "d"], pseudo=False)(ds)
    assert isinstance(plain, ImageSet) and float(plain[0][1].sum()) == 0 and len(plain[0][1]) == 4
    scenes = build_dataset("scenes", "val", n=2)
    assert labels_for(model, ["a"])(scenes) is scenes  # other datasets pass through
    with pytest.raises(ValueError, match="give --data"):
        DataConfig(spec=None)


def test_freeze_bn_keeps_running_statistics(flat):
    torch.manual_seed(0)
    model = _Tiny(2)
    ds = build_dataset(f"images:{flat}", "train", size=16).with_classes(["a", "b"])
    loader = torch.utils.data.DataLoader(ds, batch_size=2)

    def step(m, images, labels):
        loss = m(images).pow(2).mean()
        return loss, {}

    before = model.bn.running_mean.clone()
    fit(model, loader, None, step, TrainConfig(epochs=1, lr=0.01, freeze_bn=True,
                                               progress=False))
    assert torch.equal(model.bn.running_mean, before)
    fit(model, loader, None, step, TrainConfig(epochs=1, lr=0.01, progress=False))
    assert not torch.equal(model.bn.running_mean, before)


def test_loader_workers_same_items_and_reproducible_crops(flat):
    """Worker processes load the same eval items; training crops repeat for a fixed seed."""
    spec = f"images:{flat},holdout=0.4"
    main, two = (DataConfig(spec=spec, size=24, batch_size=2, workers=w) for w in (0, 2))
    for a, b in zip(main.loader("val"), two.loader("val")):
        assert torch.equal(a[0], b[0])
    runs = [torch.cat([b[0] for b in two.loader("train", shuffle=True, seed=3)]) for _ in "ab"]
    assert torch.equal(*runs)
    with pytest.raises(ValueError, match="workers must be a non-negative integer"):
        DataConfig(spec=spec, workers=-1)
