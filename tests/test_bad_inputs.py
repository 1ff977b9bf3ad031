"""Every failure a user can cause ends in one line naming the culprit (file, key, row or flag),
exit status 2, and nothing written or changed; Ctrl-C ends in one line (with the --resume
command when a training state was snapshotted), exit status 130, and the run stays resumable.

One table of bad inputs goes through ``attrpreserve.cli.main``: damaged, foreign and mismatched
weights, each kind of edited ``model.json``, huge and unreadable images, bad output paths,
a full disk and a read-only folder (mocked writes), malformed YAML, ignored flags, duplicate
models and a training state pointing outside ``.state``. One tiny checkpoint is built per
module and copied per case.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import struct
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from attrpreserve import pipeline, state
from attrpreserve.cli import _model_names, main
from attrpreserve.data import SCENE_CLASSES
from attrpreserve.loading import load_checkpoint
from attrpreserve.models import checkpoint, create_model, save_checkpoint
from attrpreserve.pipeline.shipped import SHIPPED_TEACHER

pytestmark = pytest.mark.numerics

K = len(SCENE_CLASSES)
TINY = ["--n-train", "16", "--n-val", "8", "--batch-size", "8", "--no-progress"]
TRAIN = ["--width", "2", "--size", "32", "--epochs", "1", "--max-steps", "1", *TINY]


def tiny_model(seed: int = 0, width: int = 2):
    torch.manual_seed(seed)
    return create_model("vgg", num_classes=K, width=width, input_size=32, dropout=0.0)


def sidecar_meta() -> dict:
    """What a pipeline teacher's sidecar holds (role, classes, data)."""
    return {"role": "teacher", "classes": list(SCENE_CLASSES),
            "data": {"spec": "scenes", "size": 32, "batch_size": 8, "n_test": 8}}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A tiny checkpoint, another run of the same architecture, and a NaN one."""
    root = tmp_path_factory.mktemp("made")
    save_checkpoint(root / "ckpt", tiny_model(0), sidecar_meta())
    save_checkpoint(root / "other", tiny_model(1), sidecar_meta())
    nan = tiny_model(0)
    with torch.no_grad():
        nan.features[0].weight[0, 0, 0, 0] = float("nan")
    save_checkpoint(root / "nan", nan, sidecar_meta())
    return root


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width`` x ``height`` pixels (a few bytes on disk: PIL
    reads the size from the header; a decompression bomb looks the same until decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
    return path


def photo_folder(root: Path, bad_name: str | None = None, bad=None) -> Path:
    """``root/photos/{a,b}/*.png`` (tiny real photos), plus one bad file ``a/bad_name``."""
    for cls in ("a", "b"):
        (root / "photos" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 36), (40 * i, 90, 200)).save(root / "photos" / cls / f"{i}.png")
    if bad_name:
        bad(root / "photos" / "a" / bad_name)
    return root / "photos"


def edit_sidecar(folder: Path, edit) -> None:
    side = folder / "model.json"
    meta = json.loads(side.read_text())
    edit(meta)
    side.write_text(json.dumps(meta))


def set_kwarg(key, value):
    return lambda m: m["model"]["kwargs"].__setitem__(key, value)


def drop_digest(m):
    m.pop(checkpoint.DIGEST)


def evaluate(ck: Path, tmp: Path) -> list[str]:
    return ["evaluate", "--model", str(ck), "--out", str(tmp / "out" / "r.json"), "--no-progress"]


def weights_case(damage):
    """Setup: copy the tiny checkpoint to ``ck`` and ``damage(weights_path, made)`` it."""
    def setup(tmp, made):
        ck = tmp / "ck"
        shutil.copytree(made / "ckpt", ck)
        damage(ck / "model.safetensors", made)
        return evaluate(ck, tmp)
    return setup


def sidecar_case(*edits, text=None):
    """Setup: copy the tiny checkpoint to ``ck`` and edit its ``model.json``."""
    def setup(tmp, made):
        ck = tmp / "ck"
        shutil.copytree(made / "ckpt", ck)
        if text is not None:
            (ck / "model.json").write_text(text)
        for edit in edits:
            edit_sidecar(ck, edit)
        return evaluate(ck, tmp)
    return setup


def truncate(path, made):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def foreign_keys(path, made):
    """A state dict of another architecture (resnet keys), with the digest removed from the
    sidecar as in a checkpoint written before digests: the keys are checked."""
    save_file({"conv1.weight": torch.zeros(4, 3, 3, 3)}, str(path))
    edit_sidecar(path.parent, drop_digest)


def widened(tmp, made):
    """The spec edited to another width (an older sidecar without digest): shapes disagree."""
    ck = tmp / "ck"
    shutil.copytree(made / "ckpt", ck)
    edit_sidecar(ck, lambda m: (drop_digest(m), set_kwarg("width", 3)(m)))
    return evaluate(ck, tmp)


def images_case(bad_name, bad):
    def setup(tmp, made):
        folder = photo_folder(tmp, bad_name, bad)
        return ["train", *TRAIN, "--data", f"images:{folder}", "--out", str(tmp / "out")]
    return setup


def masks_bomb(tmp, made):
    """A ``masks:`` folder (classes.txt, images/, splits/) whose one image is a bomb."""
    root = tmp / "set"
    for sub in ("images", "masks", "splits"):
        (root / sub).mkdir(parents=True)
    (root / "classes.txt").write_text("a\nb\n")
    png_header(root / "images" / "bomb.png", 20000, 20000)
    Image.new("L", (4, 4), 1).save(root / "masks" / "bomb.png")
    for split in ("train", "val"):
        (root / "splits" / f"{split}.txt").write_text("bomb\n")
    return ["train", *TRAIN, "--data", f"masks:{root}", "--out", str(tmp / "out")]


def explain_bomb(tmp, made):
    png_header(tmp / "bomb.png", 20000, 20000)
    return ["explain", "--model", str(made / "ckpt"), "--image", str(tmp / "bomb.png"),
            "--out", str(tmp / "out")]


def yaml_case(text: bytes):
    def setup(tmp, made):
        (tmp / "c.yaml").write_bytes(text)
        return ["train", "--config", str(tmp / "c.yaml"), "--out", str(tmp / "out")]
    return setup


def out_is_file(tmp, made):
    (tmp / "taken").write_text("a file, not a folder")
    return ["train", *TRAIN, "--out", str(tmp / "taken" / "out")]


def out_too_long(tmp, made):
    return ["train", *TRAIN, "--out", str(tmp / ("x" * 300) / "out")]


def failing_write(code: int, monkeypatch, where: str):
    """Mock the checkpoint's weights or sidecar write failing like the filesystem would: the
    weights through safetensors' own error ("... (os error N)"), the sidecar as an OSError
    without a file name (what ``write()`` raises)."""
    if where == "weights":
        def save(*args, **kwargs):
            raise SafetensorError(f"Error while serializing: I/O error: {errno.errorcode[code]} "
                                  f"(os error {code})")
        monkeypatch.setattr(checkpoint, "save_file", save)
    else:
        real = Path.write_text

        def write_text(self, *args, **kwargs):
            if self.name.startswith(".model.json") or self.name.startswith("model.json"):
                raise OSError(code, "mocked")
            return real(self, *args, **kwargs)
        monkeypatch.setattr(Path, "write_text", write_text)


def disk_full(tmp, made, monkeypatch):
    failing_write(errno.ENOSPC, monkeypatch, "weights")
    return ["train", *TRAIN, "--out", str(tmp / "out")]


def read_only(tmp, made, monkeypatch):
    failing_write(errno.EROFS, monkeypatch, "sidecar")
    return ["train", *TRAIN, "--out", str(tmp / "out")]


def state_outside(tmp, made):
    (tmp / "out" / ".state").mkdir(parents=True)
    (tmp / "out" / ".state" / "state.json").write_text(json.dumps(
        {"format": state.FORMAT, "tensors": "../../ck/model.safetensors", "config": {}}))
    return ["train", *TRAIN, "--out", str(tmp / "out"), "--resume"]


def twice(tmp, made):
    return ["evaluate", "--model", str(made / "ckpt"), "--model", str(made / "ckpt") + "/",
            "--out", str(tmp / "out" / "r.json")]


# (id, setup(tmp, made[, monkeypatch]) -> argv, text (or pattern) the one line must contain)
ROWS = [
    ("weights-truncated", weights_case(truncate), "model.safetensors: not a readable safetensors"),
    ("weights-garbage", weights_case(lambda p, m: p.write_bytes(b"not tensors " * 40)),
     "model.safetensors: not a readable safetensors"),
    ("weights-empty", weights_case(lambda p, m: p.write_bytes(b"")),
     "model.safetensors: not a readable safetensors"),
    ("weights-pickle", weights_case(
        lambda p, m: torch.save(load_file(str(m / "ckpt" / "model.safetensors")), p)),
     "model.safetensors: not a readable safetensors"),
    ("weights-other-run", weights_case(
        lambda p, m: shutil.copy(m / "other" / "model.safetensors", p)),
     "are from different runs"),
    ("weights-no-digest", weights_case(
        lambda p, m: save_file(load_file(str(m / "other" / "model.safetensors")), str(p))),
     "are from different runs"),
    ("weights-foreign-keys", weights_case(foreign_keys), "unexpected ['conv1.weight']"),
    ("weights-nan", lambda tmp, made: evaluate(made / "nan", tmp),
     "has non-finite weights (1 NaN or infinite values in features.0.weight)"),
    ("json-not-json", sidecar_case(text="{\"model\": "), "model.json: not valid JSON (line 1"),
    ("json-not-object", sidecar_case(text="[1, 2]"), "model.json: expected a JSON object"),
    ("json-no-model", sidecar_case(lambda m: m.pop("model")), "key 'model' is missing"),
    ("json-no-classes", sidecar_case(lambda m: m.pop("classes")), "key 'classes' is missing"),
    ("json-no-kwargs", sidecar_case(lambda m: m["model"].pop("kwargs")),
     "key 'model' must hold a string 'name' and an object 'kwargs'"),
    ("json-classes-type", sidecar_case(lambda m: m.__setitem__("classes", "circle")),
     "key 'classes' must be a list of class names"),
    ("json-kwarg-type", sidecar_case(set_kwarg("num_classes", "8")),
     "key 'model.kwargs.num_classes' has the wrong type"),
    ("json-classes-short", sidecar_case(lambda m: m["classes"].pop()),
     f"key 'classes' names {K - 1} classes, the model has {K} outputs"),
    ("json-classes-long", sidecar_case(lambda m: m["classes"].append("extra")),
     f"key 'classes' names {K + 1} classes, the model has {K} outputs"),
    ("json-absurd-classes", sidecar_case(set_kwarg("num_classes", 10 ** 9),
                                         lambda m: m.__setitem__("classes", ["c"] * 3)),
     "key 'classes' names 3 classes, the model has 1000000000 outputs"),
    ("json-absurd-width", sidecar_case(set_kwarg("width", 1024)), "its sizes are absurd"),
    ("json-absurd-size", sidecar_case(set_kwarg("input_size", 10 ** 7)),
     "key 'model.kwargs.input_size' is 10000000, outside [8, 4096]"),
    ("json-absurd-data-size", sidecar_case(lambda m: m["data"].__setitem__("size", 10 ** 6)),
     "key 'data.size' must be an integer in [8, 4096]"),
    ("json-unknown-kwarg", sidecar_case(set_kwarg("depth", 3)),
     "key 'model.kwargs.depth' is not an argument of model 'vgg'"),
    ("json-unknown-model", sidecar_case(lambda m: m["model"].__setitem__("name", "vgg99")),
     "unknown model 'vgg99'"),
    ("json-rebuild-type", sidecar_case(lambda m: m["model"].__setitem__("rebuild", "qat")),
     "key 'model.rebuild' must be a list"),
    ("json-spec-vs-weights", widened, "does not hold the model"),
    ("image-bomb", images_case("bomb.png", lambda p: png_header(p, 20000, 20000)),
     "bomb.png: Image size (400000000 pixels) exceeds limit"),
    ("image-huge", images_case("huge.png", lambda p: png_header(p, 10000, 10000)),
     "huge.png: Image size (100000000 pixels) exceeds limit"),
    ("image-garbage", images_case("broken.png", lambda p: p.write_bytes(b"not a png")),
     "cannot read image"),
    ("masks-image-bomb", masks_bomb, "images/bomb.png: Image size (400000000 pixels)"),
    ("explain-image-bomb", explain_bomb, "bomb.png"),
    ("yaml-malformed", yaml_case(b"epochs: 1\nlr: [0.1, 0.2\n"), "c.yaml, line 3: not valid YAML"),
    ("yaml-binary", yaml_case(b"\xff\xfe\x00epochs"), "c.yaml: not a UTF-8 text file"),
    ("out-is-a-file", out_is_file, "taken"),
    ("out-too-long", out_too_long,  # checked up front (outputs.check), else when first written
     re.compile(r"--out .*longer than this filesystem allows|x{300}/out/\S*: File name too long")),
    ("disk-full", disk_full,  # the first write of a run: its training state
     "/out/.state/tensors-000000.safetensors: No space left on device"),
    ("read-only", read_only, "out/model.json: Read-only file system"),
    ("state-outside", state_outside, "is not a tensors-NNNNNN.safetensors file inside"),
    ("demo-device", lambda tmp, made: ["demo", "--device", "cpu", "--out", str(tmp / "out")],
     "--device applies to demo --photos only"),
    ("demo-strength", lambda tmp, made: ["demo", "--strength", "0.5", "--out", str(tmp / "out")],
     "--strength applies to demo --photos only"),
    ("evaluate-same-model-twice", twice, "is given twice"),
]


def files_of(root: Path, skip: Path) -> dict:
    """Every file under ``root`` except under ``skip``, with its size and mtime."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.is_file() and skip not in (p, *p.parents)}


@pytest.mark.parametrize("setup, needle", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, made, monkeypatch, capsys,
                                                      setup, needle):
    tmp = tmp_path / "case"
    tmp.mkdir()
    argv = (setup(tmp, made, monkeypatch) if setup.__code__.co_argcount == 3
            else setup(tmp, made))
    out = tmp / "out"
    before, made_before = files_of(tmp, out), files_of(made, made / "none")
    pre_existing = files_of(out, out / "none") if out.exists() else {}
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("attrpreserve: error: "), err
    assert (needle.search(err[0]) if isinstance(needle, re.Pattern) else needle in err[0]), err[0]
    assert "Traceback" not in err[0]
    assert files_of(tmp, out) == before and files_of(made, made / "none") == made_before
    left = files_of(out, out / "none") if out.exists() else {}
    if "state" in argv[-1] or argv[-1] == "--resume":
        assert left == pre_existing  # the state named stays as it was
    else:  # nothing written; a training state snapshotted before the failure may stay
        assert not [p for p in left if ".state" not in p.parts], left


def test_ctrl_c_in_training_says_how_to_resume_and_resume_finishes(tmp_path, monkeypatch,
                                                                     capsys):
    out = tmp_path / "run dir"  # a space: the command line must be quoted
    argv = ["train", *TRAIN[:-len(TINY)], "--max-steps", "2", "--checkpoint-every", "1", *TINY,
            "--out", str(out)]
    save = state.Session.save

    def save_then_interrupt(self, *args, **kwargs):
        save(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(state.Session, "save", save_then_interrupt)
    assert main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"attrpreserve: interrupted; continue with: attrpreserve train "
                   f"{' '.join(argv[1:-1])} '{out}' --resume"], err
    assert state.exists(out) and not (out / "model.json").exists()
    monkeypatch.setattr(state.Session, "save", save)
    assert main([*argv, "--resume"]) == 0
    assert (out / "model.json").is_file() and not state.exists(out)


def test_ctrl_c_outside_training_is_one_line(tmp_path, made, monkeypatch, capsys):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "load_models", interrupt)
    assert main(evaluate(made / "ckpt", tmp_path)) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["attrpreserve: interrupted"]
    assert not (tmp_path / "out" / "r.json").exists()


def test_weights_and_sidecar_pair_by_digest(tmp_path, made):
    """The sidecar names its weights' digest (also in the safetensors header); a sidecar from
    another run is refused, one without a digest (written before digests) is trusted, the
    shipped teacher loads, and saving the same weights twice writes the same bytes."""
    meta = json.loads((made / "ckpt" / "model.json").read_text())
    with safe_open(str(made / "ckpt" / "model.safetensors"), "pt") as f:
        assert f.metadata()[checkpoint.DIGEST] == meta[checkpoint.DIGEST]
    swapped = tmp_path / "swapped"
    shutil.copytree(made / "ckpt", swapped)
    shutil.copy(made / "other" / "model.json", swapped / "model.json")
    with pytest.raises(ValueError, match="from different runs"):
        load_checkpoint(swapped)
    edit_sidecar(swapped, drop_digest)
    model, _ = load_checkpoint(swapped)
    assert torch.equal(model.features[0].weight, tiny_model(0).features[0].weight)
    load_checkpoint(SHIPPED_TEACHER)
    save_checkpoint(tmp_path / "again", tiny_model(0), sidecar_meta())
    for name in ("model.safetensors", "model.json"):
        assert (tmp_path / "again" / name).read_bytes() == (made / "ckpt" / name).read_bytes()


def test_same_folder_names_are_told_apart():
    assert list(_model_names(["runs/a/wcam", "runs/b/wcam", "naive"])) == \
        ["a/wcam", "b/wcam", "naive"]
    assert list(_model_names(["wcam", "x/wcam"])) == ["wcam", "x/wcam"]


def test_finite_weights_with_non_finite_outputs_are_refused(tmp_path, capsys):
    """Weights that are finite but overflow (1e30 everywhere) give inf / NaN scores: the model
    is named instead of maps being drawn from them."""
    model = tiny_model(0)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1e30)
    save_checkpoint(tmp_path / "huge", model, {
        **sidecar_meta(), "compression": {"method": "none", "matching": "none"},
        "history": {"best_epoch": 1, "best_val_mAP": 0.5}})
    assert main(evaluate(tmp_path / "huge", tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model 'huge' gives non-finite outputs" in err[0], err
    assert not (tmp_path / "out" / "r.json").exists()
