"""Tests of attrpreserve.data: synthetic scenes, the masks folder loader, the dataset registry."""

import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from attrpreserve.data import (
    DATASETS, SCENE_CLASSES, SceneConfig, SegmentationSet, build_dataset, generate_scenes,
    register_dataset,
)
from attrpreserve.data import scenes as sc
from attrpreserve.data.masks import VOC_CLASSES

K = len(SCENE_CLASSES)
BAR = K + sc.DISTRACTOR_KINDS.index("bar")
CIRCLE = SCENE_CLASSES.index("circle")


# ----------------------------------------------------------------------------- scenes: streams


def test_scenes_same_seed_same_arrays_other_seed_differs():
    a, b, c = (generate_scenes(6, s) for s in (3, 3, 4))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (6, 64, 64, 3) and a[0].dtype == np.uint8
    assert a[1].shape == (6, 64, 64) and a[1].dtype == np.uint8


def test_scenes_prefix_stable_and_start_offset():
    small, large = generate_scenes(10, 0), generate_scenes(20, 0)
    assert np.array_equal(small[0], large[0][:10]) and np.array_equal(small[1], large[1][:10])
    tail = generate_scenes(5, 0, start=15)
    assert np.array_equal(tail[0], large[0][15:])


def test_splits_never_share_images():
    sets = {s: build_dataset("scenes", s, n=20).images.flatten(1) for s in ("train", "val", "test")}
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
        same = (sets[a][:, None] == sets[b][None]).all(-1)
        assert not same.any(), (a, b)


def test_build_scenes_default_sizes_and_types():
    ds = build_dataset("scenes", "val", size=32)
    assert len(ds) == 300 and ds.classes == list(SCENE_CLASSES)
    image, labels, mask = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert 0 <= image.min() and image.max() <= 1
    assert labels.dtype == torch.float32 and labels.shape == (K,)
    assert mask.dtype == torch.int64 and mask.shape == (32, 32)


# ----------------------------------------------------------------------------- scenes: masks


@pytest.fixture(scope="module")
def scene_set():
    return build_dataset("scenes", "train", n=400, seed=1)


def test_labels_are_exactly_the_mask_values(scene_set):
    for i in range(len(scene_set)):
        values = set(scene_set.masks[i].unique().tolist()) - {0, 255}
        labelled = {k + 1 for k in scene_set.labels[i].nonzero().flatten().tolist()}
        assert values == labelled


def test_every_image_has_a_clearly_visible_object(scene_set):
    assert (scene_set.labels.sum(1) >= 1).all()
    counts = torch.stack([(scene_set.masks == k + 1).flatten(1).sum(1) for k in range(K)], 1)
    present = scene_set.labels.bool()
    assert (counts[present] >= 15).all()  # >= half of the smallest object, never a sliver
    assert (counts[~present] == 0).all()


def test_all_classes_occur_in_balance(scene_set):
    freq = scene_set.labels.mean(0)
    assert freq.min() > 0.15 and freq.max() < 0.45


def test_distractors_never_enter_the_mask():
    cfg = SceneConfig(min_objects=0, max_objects=0, n_distractors=(3, 3), background=0.0,
                      noise=0.0, texture=0.0)
    images, masks = generate_scenes(20, 0, config=cfg)
    assert (masks == 0).all()
    colours = [len(np.unique(im.reshape(-1, 3), axis=0)) for im in images]
    assert min(colours) > 1  # distractors were painted on the flat background


def test_later_shapes_occlude_earlier_ones_in_the_mask():
    circle = sc.Item(CIRCLE, CIRCLE + 1, 32, 32, 15)
    bar = sc.Item(BAR, 0, 32, 32, 15)
    _, mask = sc.render_items([circle, bar])
    assert mask[32, 32] == 0 and mask[22, 32] == CIRCLE + 1
    _, mask = sc.render_items([bar, circle])
    assert mask[32, 32] == CIRCLE + 1 and mask[32, 5] == 0  # bar end outside the circle


def test_mask_is_exactly_the_zero_set_and_antialiasing_only_changes_colours():
    item = sc.Item(SCENE_CLASSES.index("star"), 6, 30.3, 33.7, 17, angle=0.4, aspect=1.1)
    (ys, xs), sdf = sc.item_sdf(item, 64)
    expected = np.zeros((64, 64), np.uint8)
    expected[ys, xs][sdf < 0] = 6
    for aa in (True, False):
        image, mask = sc.render_items([item], config=SceneConfig(antialias=aa))
        assert np.array_equal(mask, expected)
    smooth = sc.render_items([item], config=SceneConfig(antialias=True))[0]
    hard = sc.render_items([item], config=SceneConfig(antialias=False))[0]
    assert not np.array_equal(smooth, hard)


@pytest.mark.parametrize("kind", range(K + len(sc.DISTRACTOR_KINDS)))
def test_every_shape_fits_its_radius(kind):
    item = sc.Item(kind, 1, 32, 32, 20, angle=1.0)
    _, mask = sc.render_items([item])
    ys, xs = np.nonzero(mask)
    assert len(ys) > 60
    assert np.hypot(ys + 0.5 - 32, xs + 0.5 - 32).max() <= 20 * 1.06


def test_classes_have_distinct_silhouettes_under_any_rotation():
    def silhouette(k, angle=0.0):
        item = sc.Item(k, 1, 32, 32, 20, angle=angle)
        return sc.render_items([item], config=SceneConfig(masks="shape"))[1] > 0

    angles = np.linspace(0, 2 * np.pi, 36, endpoint=False)
    for a in range(K):
        ref = silhouette(a)
        for b in range(a + 1, K):
            rotated = [silhouette(b, t) for t in angles]
            iou = max((ref & r).sum() / (ref | r).sum() for r in rotated)
            assert iou < 0.9, (SCENE_CLASSES[a], SCENE_CLASSES[b], iou)  # circle/square: 0.84


@pytest.mark.parametrize("name", ["ring", "crescent"])
def test_extent_masks_fill_the_hole_and_the_bite_but_not_the_paint(name):
    k = SCENE_CLASSES.index(name)
    item = sc.Item(k, k + 1, 32, 32, 20)
    image, extent = sc.render_items([item])
    same, shape = sc.render_items([item], config=SceneConfig(masks="shape"))
    assert np.array_equal(image, same)  # only the mask changes
    assert extent[32, 32] == k + 1 and shape[32, 32] == 0  # the hole / the bite's edge
    assert ((shape > 0) <= (extent > 0)).all()
    ys, xs = np.nonzero(extent)  # the filled disc the shape is cut from (0.9-0.95 of r)
    radius = {"ring": 0.95, "crescent": 0.9}[name] * 20
    assert abs(len(ys) - np.pi * radius ** 2) < 2 * np.pi * radius
    other = sc.Item(SCENE_CLASSES.index("circle"), 1, 32, 32, 8)  # painted on top, in the hole
    assert sc.render_items([item, other])[1][32, 32] == 1


def test_polygon_distance_matches_box_formula():
    u, v = np.meshgrid(np.linspace(-2, 2, 41), np.linspace(-2, 2, 41))
    square = np.array([[-0.7, -0.7], [0.7, -0.7], [0.7, 0.7], [-0.7, 0.7]])
    assert np.allclose(sc._polygon(u, v, square), sc._box(u, v, 0.7, 0.7), atol=1e-6)


def test_colour_carries_no_class_information(scene_set):
    samples = {k: [] for k in range(K)}
    images = scene_set.images.permute(0, 2, 3, 1).float()
    for i in range(len(scene_set)):
        for k in scene_set.labels[i].nonzero().flatten().tolist():
            samples[k].append(images[i][scene_set.masks[i] == k + 1].mean(0))
    everything = torch.stack([s for v in samples.values() for s in v])
    mean, std = everything.mean(0), everything.std(0)
    for k, s in samples.items():
        z = (torch.stack(s).mean(0) - mean).abs() / (std / len(s) ** 0.5)
        assert (z < 4).all(), (SCENE_CLASSES[k], z)


def test_generation_is_fast():
    start = time.perf_counter()
    generate_scenes(300, 0)
    assert time.perf_counter() - start < 3.0  # ~0.4 s expected; catches a per-pixel loop


def test_scene_options_from_spec():
    ds = build_dataset("scenes:max_objects=1,n_distractors=0-0,rotate=false", "train", n=30)
    assert (ds.labels.sum(1) == 1).all()
    cfg = SceneConfig.from_string("radius=0.1-0.2,noise=0", size=48)
    assert cfg.radius == (0.1, 0.2) and cfg.noise == 0.0 and cfg.size == 48
    for bad in ("scenes:colour=1", "scenes:radius=x", "scenes:min_objects=3,max_objects=2"):
        with pytest.raises(ValueError):
            build_dataset(bad, "train", n=2)


# ----------------------------------------------------------------------------- SegmentationSet


def test_segmentation_set_labels_and_validation():
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    masks = torch.tensor([[[0, 2], [255, 0]], [[1, 1], [0, 0]]], dtype=torch.uint8)
    masks = masks.repeat_interleave(2, 1).repeat_interleave(2, 2)
    ds = SegmentationSet(images, masks, ["a", "b"], "toy")
    assert ds.labels.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert ds.describe()["label_counts"] == [1, 1]
    with pytest.raises(ValueError, match="above"):
        SegmentationSet(images, masks, ["a"])
    with pytest.raises(ValueError, match="uint8"):
        SegmentationSet(images.float(), masks, ["a", "b"])


def test_build_dataset_rejects_bad_specs():
    for spec, split, kw in [("nope", "train", {}), ("scenes", "dev", {}),
                            ("scenes", "train", {"n": 0}), ("masks", "train", {})]:
        with pytest.raises(ValueError):
            build_dataset(spec, split, **kw)


def test_registry_accepts_a_new_format():
    @register_dataset("tiny")
    def tiny(arg, split, size, seed, n):
        images = torch.zeros(1, 3, size, size, dtype=torch.uint8)
        return SegmentationSet(images, torch.ones(1, size, size, dtype=torch.uint8), [arg])

    try:
        assert build_dataset("tiny:thing", "val", size=8).classes == ["thing"]
    finally:
        DATASETS.unregister("tiny")


# ----------------------------------------------------------------------------- masks folders


def _save(path, array, mode=None, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode).save(path, fmt)


def _mask(h, w, regions):
    m = np.zeros((h, w), np.uint8)
    for value, (ys, xs) in regions.items():
        m[ys, xs] = value
    return m


def make_folder(root, with_test=False):
    """Four images: PNG RGB 40x30, JPG RGB 50x20, PNG L 16x16, JPEG RGB 64x64."""
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("cat\ndog\nbird\n")
    _save(root / "images/a.png", np.full((30, 40, 3), (200, 10, 30)))
    _save(root / "images/b.jpg", np.full((20, 50, 3), (20, 120, 220)))
    _save(root / "images/c.png", np.full((16, 16), 77))
    _save(root / "images/d.jpeg", np.full((64, 64, 3), 128))
    _save(root / "masks/a.png", _mask(30, 40, {1: (slice(0, 15), slice(None)),
                                                255: (slice(15, 18), slice(None))}))
    _save(root / "masks/b.png", _mask(20, 50, {2: (slice(None), slice(0, 25))}))
    _save(root / "masks/c.png", _mask(16, 16, {3: (slice(0, 8), slice(0, 8)),
                                                1: (slice(8, 16), slice(8, 16)),
                                                255: (slice(0, 8), slice(8, 16))}))
    _save(root / "masks/d.png", np.zeros((64, 64)))
    (root / "splits").mkdir()
    (root / "splits/train.txt").write_text("a\n\nb\nc\n")
    (root / "splits/val.txt").write_text("d\nc\n\n")
    if with_test:
        (root / "splits/test.txt").write_text("b\n")
    return root


def test_masks_folder_loads_resizes_and_labels(tmp_path):
    root = make_folder(tmp_path / "set")
    train = build_dataset(f"masks:{root}", "train", size=24)
    assert train.classes == ["cat", "dog", "bird"]
    assert train.images.shape == (3, 3, 24, 24) and train.masks.shape == (3, 24, 24)
    assert train.labels.tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    assert (train.images[0].flatten(1).T == torch.tensor([200, 10, 30], dtype=torch.uint8)).all()
    assert (train.images[2] == 77).all()  # mode L became grey RGB
    assert 255 in train.masks[0] and 255 in train.masks[2]
    assert set(train.masks.unique().tolist()) <= {0, 1, 2, 3, 255}  # nearest, no blends
    assert abs(train.images[1].float()[2].mean().item() - 220) < 4  # JPEG, roughly kept
    val = build_dataset(f"masks:{root}", "val", size=16, n=1)
    assert len(val) == 1 and val.labels.tolist() == [[0, 0, 0]]


def test_masks_test_split_falls_back_to_val_with_warning(tmp_path):
    root = make_folder(tmp_path / "set")
    with pytest.warns(UserWarning, match="val"):
        test = build_dataset(f"masks:{root}", "test", size=16)
    assert torch.equal(test.masks, build_dataset(f"masks:{root}", "val", size=16).masks)
    root2 = make_folder(tmp_path / "set2", with_test=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(build_dataset(f"masks:{root2}", "test", size=16)) == 1


def _break(how):
    def mutate(root):
        if how == "no_classes":
            (root / "classes.txt").unlink()
        elif how == "no_split":
            (root / "splits/train.txt").unlink()
        elif how == "no_image":
            (root / "images/b.jpg").unlink()
        elif how == "no_mask":
            (root / "masks/b.png").unlink()
        elif how == "bad_value":
            _save(root / "masks/a.png", np.full((30, 40), 7))
        elif how == "empty_split":
            (root / "splits/train.txt").write_text("\n\n")
        elif how == "size_mismatch":
            _save(root / "masks/c.png", np.zeros((16, 17)))
        elif how == "rgb_mask":
            _save(root / "masks/a.png", np.zeros((30, 40, 3)))
        elif how == "corrupt_image":
            (root / "images/a.png").write_bytes(b"not a png")
    return mutate


@pytest.mark.parametrize("how, culprit", [
    ("no_classes", "classes.txt"), ("no_split", "train.txt"), ("no_image", "images/b"),
    ("no_mask", "b.png"), ("bad_value", "a.png"), ("empty_split", "train.txt"),
    ("size_mismatch", "c.png"), ("rgb_mask", "a.png"), ("corrupt_image", "a.png"),
])
def test_masks_folder_errors_name_the_file(tmp_path, how, culprit):
    root = make_folder(tmp_path / "set")
    _break(how)(root)
    with pytest.raises(ValueError, match=culprit.replace(".", r"\.")) as info:
        build_dataset(f"masks:{root}", "train", size=16)
    assert "\n" not in str(info.value)


def test_missing_folder_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        build_dataset(f"masks:{tmp_path / 'absent'}", "train")


def test_voc_folder_is_accepted_as_is(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    _save(voc / "JPEGImages/2007_000032.jpg", np.full((30, 40, 3), 90))
    person = VOC_CLASSES.index("person") + 1
    mask = Image.fromarray(_mask(30, 40, {person: (slice(5, 20), slice(5, 20)),
                                          255: (slice(20, 21), slice(5, 20))}), "L").convert("P")
    (voc / "SegmentationClass").mkdir()
    mask.save(voc / "SegmentationClass/2007_000032.png")
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "ImageSets/Segmentation/val.txt").write_text("2007_000032\n")
    for spec in (f"voc:{tmp_path}", f"masks:{tmp_path / 'VOCdevkit'}", f"voc:{voc}"):
        ds = build_dataset(spec, "val", size=20)
        assert len(ds.classes) == 20 and ds.labels[0].nonzero().flatten().tolist() == [person - 1]
        assert 255 in ds.masks[0]
