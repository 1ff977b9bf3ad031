"""The masks-folder format hardened: mixed image sizes and modes, nearest-neighbour masks,
ignore index, classes absent from a split, and an error naming the file for each bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from attrpreserve.data import build_dataset


def _mask(h, w, value, box=None, dtype=np.uint8):
    m = np.zeros((h, w), dtype)
    y0, y1, x0, x1 = box or (0, h // 2, 0, w // 2)
    m[y0:y1, x0:x1] = value
    return m


def write_folder(root):
    """Five images of different sizes and modes; classes a, b, c (c only in val)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "splits").mkdir()
    (root / "classes.txt").write_text("a\nb\nc\n")
    Image.fromarray(np.full((20, 30, 3), (250, 0, 0), np.uint8)).save(root / "images/rgb.png")
    Image.fromarray(np.full((16, 16), 60, np.uint8)).save(root / "images/grey.png")
    rgba = np.zeros((24, 12, 4), np.uint8)
    rgba[..., 1], rgba[..., 3] = 200, 0  # fully transparent green: the colour is kept
    Image.fromarray(rgba).save(root / "images/rgba.png")
    deep = np.zeros((10, 40), np.uint16)
    deep[:, 20:] = 200 * 257
    Image.fromarray(deep).save(root / "images/deep.png")  # 16-bit grey: 0 | 51400
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(root / "images/photo.jpg")
    for name, (h, w), value in [("rgb", (20, 30), 1), ("grey", (16, 16), 2),
                                ("rgba", (24, 12), 1), ("deep", (10, 40), 2),
                                ("photo", (32, 32), 3)]:
        # a 16-bit mask (grey) is fine as long as its values are class indices
        mask = _mask(h, w, value, dtype=np.uint16 if name == "grey" else np.uint8)
        mask[-3:, :] = 255  # ignore rows
        Image.fromarray(mask).save(root / f"masks/{name}.png")
    (root / "splits/train.txt").write_text("rgb\ngrey\nrgba\ndeep\n")
    (root / "splits/val.txt").write_text("photo\n")
    return root


def test_mixed_sizes_and_modes_load_as_rgb(tmp_path):
    root = write_folder(tmp_path / "set")
    train = build_dataset(f"masks:{root}", "train", size=8)
    assert train.images.shape == (4, 3, 8, 8) and train.images.dtype == torch.uint8
    assert train.images[0, :, 2, 2].tolist() == [250, 0, 0]
    assert (train.images[1] == 60).all()  # grey -> three equal channels
    assert train.images[2, :, 2, 2].tolist() == [0, 200, 0]  # alpha dropped
    deep = train.images[3]
    assert deep[:, :, 0].max() == 0 and (deep[:, :, -1] == 200).all()  # 16-bit / 257, no clip
    assert set(train.masks.unique().tolist()) == {0, 1, 2, 255}  # nearest: no blends
    assert (train.masks[:, -1] == 255).all()
    assert train.labels.tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]]
    assert train.describe()["absent_classes"] == ["c"]  # c occurs only in val
    assert train.describe()["label_counts"] == [2, 2, 0] and "skipped" not in train.describe()
    val = build_dataset(f"masks:{root}", "val", size=8)
    assert val.labels.tolist() == [[0, 0, 1]] and val.describe()["absent_classes"] == ["a", "b"]


def _broken(root, how):
    if how == "unreadable":
        (root / "images/grey.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    elif how == "size_mismatch":
        Image.fromarray(np.zeros((20, 31), np.uint8)).save(root / "masks/rgb.png")
    elif how == "class_range":
        Image.fromarray(_mask(24, 12, 4)).save(root / "masks/rgba.png")
    elif how == "class_range_16bit":
        Image.fromarray(_mask(10, 40, 300, dtype=np.uint16)).save(root / "masks/deep.png")
    elif how == "float_mask":
        Image.fromarray(np.zeros((24, 12), np.float32)).save(root / "masks/rgba.tiff")
        (root / "masks/rgba.tiff").rename(root / "masks/rgba.png")
    elif how == "empty_split":
        (root / "splits/train.txt").write_text("\n \n")
    elif how == "path_separator":
        (root / "splits/train.txt").write_text("rgb\nsub/grey\n")
    elif how == "backslash":
        (root / "splits/train.txt").write_text("rgb\n..\\grey\n")
    elif how == "duplicate":
        (root / "splits/train.txt").write_text("rgb\ngrey\nrgb\n")
    elif how == "two_images":
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "images/grey.jpg")
    elif how == "with_extension":
        (root / "splits/train.txt").write_text("rgb.png\n")


@pytest.mark.parametrize("how, names", [
    ("unreadable", ["images/grey.png"]),
    ("size_mismatch", ["masks/rgb.png", "images/rgb.png"]),  # both files named
    ("class_range", ["masks/rgba.png", "class index 4"]),
    ("class_range_16bit", ["masks/deep.png", "class index 300"]),
    ("float_mask", ["masks/rgba.png", "floats"]),
    ("empty_split", ["splits/train.txt", "empty"]),
    ("path_separator", ["splits/train.txt", "line 2", "path separator"]),
    ("backslash", ["splits/train.txt", "path separator"]),
    ("duplicate", ["splits/train.txt", "line 3", "twice"]),
    ("two_images", ["images/grey.png", "images/grey.jpg"]),
    ("with_extension", ["images/rgb.png", "without the extension"]),
])
def test_bad_input_names_the_file(tmp_path, how, names):
    root = write_folder(tmp_path / "set")
    _broken(root, how)
    with pytest.raises(ValueError) as info:
        build_dataset(f"masks:{root}", "train", size=8)
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert name in message, (name, message)
