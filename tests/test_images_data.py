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


# ----------------------------------------------------------------------------- ImageNet wnids

def test_wnid_table_ships_with_the_package():
    """The class table is package data (a non-editable install has it) and agrees with
    torchvision's names, and with the shared source table when it is there."""
    import fnmatch
    import tomllib
    from pathlib import Path

    from torchvision.models import ResNet18_Weights

    from attrpreserve.data import imagenet

    wnids, names = imagenet.imagenet_wnids(), imagenet.imagenet_names()
    assert len(wnids) == len(set(wnids)) == 1000 and len(set(names)) == 1000
    assert names == tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
    assert imagenet.wnid_index("n01440764") == 0 and imagenet.wnid_index("n03888257") == 701
    assert imagenet.wnid_index("n00000000") is None and not imagenet.is_wnid("tench")
    root = Path(__file__).resolve().parents[1]
    setup = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    shipped = setup["package-data"]["attrpreserve.data"]
    assert any(fnmatch.fnmatch(imagenet.TABLE.name, pattern) for pattern in shipped)
    source = root.parent / "shared" / "data" / "imagenet-classes.tsv"
    if source.is_file():
        rows = [line.split("\t") for line in source.read_text().splitlines()]
        assert tuple(r[1] for r in rows) == wnids
        assert [i for i, r in enumerate(rows) if r[2] != names[i]] == [134, 639]  # "crane", ...


@pytest.fixture
def wnid_folder(tmp_path):
    """An ImageFolder-style tree: train/ and val/ with wnid class folders (tench, springer)."""
    root = tmp_path / "nette"
    for split, n in (("train", 10), ("val", 2)):
        for k, wnid in enumerate(("n01440764", "n02102040")):
            for i in range(n):
                _photo(root / split / wnid / f"{'ILSVRC2012_val_' if i == 0 else ''}{i}.JPEG",
                       10 * k + i, size=(24, 24))
    return root


def test_wnid_folders_map_onto_full_and_restricted_classes(wnid_folder):
    from attrpreserve.models.pretrained import imagenet_classes

    val = build_dataset(f"images:{wnid_folder}", "val", size=16)
    assert val.classes == ["n01440764", "n02102040"] and len(val) == 4
    full = val.with_classes(imagenet_classes())
    assert sorted({int(full[i][1].argmax()) for i in range(4)}) == [0, 217]
    ten = ["English springer", "tench", "goldfish"]  # a restricted model's classes, any order
    assert [resolve_class(w, ten) for w in val.classes] == [1, 0]
    assert resolve_class("n01443537", ten) == 2
    with pytest.raises(ValueError, match="ImageNet class 1, 'goldfish'.*not one of the model's 2"):
        resolve_class("n01443537", ["tench", "English springer"])
    with pytest.raises(ValueError, match="nor an ImageNet-1k wnid"):
        resolve_class("n00000001", imagenet_classes())
    assert resolve_class("n00000001", ["n00000001", "x"]) == 0  # a class literally named so


def test_split_folders_holdout_subsets_and_match(wnid_folder):
    spec = f"images:{wnid_folder}"
    # default: train/ trains, val/ selects, test falls back to val/ with a warning
    assert len(build_dataset(spec, "train", size=16)) == 20
    with pytest.warns(UserWarning, match="split 'test'"):
        assert len(build_dataset(spec, "test", size=16)) == 4
    # explicit holdout: val carved out of train/ (spread: both classes), val/ is test, no warning
    train = build_dataset(f"{spec},holdout=0.2", "train", size=16)
    val = build_dataset(f"{spec},holdout=0.2", "val", size=16)
    assert len(train) == 16 and len(val) == 4 and not set(train.files) & set(val.files)
    assert {f.parent.name for f in val.files} == {"n01440764", "n02102040"}
    assert all(f.parent.parent.name == "train" for f in val.files)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        test = build_dataset(f"{spec},holdout=0.2", "test", size=16)
    assert {f.parent.parent.name for f in test.files} == {"val"} and len(test) == 4
    # n photos spread evenly: every class keeps its share (not the first n, all tench)
    few = build_dataset(spec, "train", size=16, n=4)
    assert [f.parent.name for f in few.files] == ["n01440764"] * 2 + ["n02102040"] * 2
    assert len(build_dataset(spec, "train", size=16, n=99)) == 20
    # match: only the photos whose name matches, classes kept
    unseen = build_dataset(f"{spec},match=ILSVRC2012_val_*", "val", size=16)
    assert len(unseen) == 2 and unseen.classes == ["n01440764", "n02102040"]
    with pytest.raises(ValueError, match="matching '\\*.png'"):
        build_dataset(f"{spec},match=*.png", "val", size=16)


def test_spread_and_class_folders(wnid_folder, flat):
    from attrpreserve.data.images import class_folders, spread

    assert spread(10, 4) == [0, 3, 5, 8] and spread(5, 5) == list(range(5))
    assert spread(3, 7) == [0, 1, 2] and spread(9469, 500)[:3] == [0, 19, 38]
    assert len(spread(9469, 500)) == 500
    assert class_folders(wnid_folder) == ["n01440764", "n02102040"]
    assert class_folders(wnid_folder / "train") == ["n01440764", "n02102040"]
    with pytest.raises(ValueError, match="no class folders"):
        class_folders(flat)
