"""Outputs never destroy inputs, one writer per output folder, atomic writes (issue 26, items 1-2).

Every refused command exits 2 with one line naming the flag and the path, before any work: the
files of the temporary folder are byte-for-byte and mtime-for-mtime what they were.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from attrpreserve import fileio, outputs
from attrpreserve.cli import main
from attrpreserve.pipeline import stages
from attrpreserve.pipeline.configs import DataConfig, TeacherConfig
from attrpreserve.engine import TrainConfig

TINY = ["--n-train", "32", "--n-val", "16", "--n-test", "16", "--batch-size", "16",
        "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny teacher, a photo folder and a finished evaluation and audit of the teacher."""
    root = tmp_path_factory.mktemp("outputs")
    assert main(["train", "--width", "4", "--epochs", "1", *TINY,
                 "--out", str(root / "teacher")]) == 0
    assert main(["evaluate", "--model", str(root / "teacher"), "--explainers", "gradcam",
                 *TINY, "--out", str(root / "eval.json")]) == 0
    assert main(["audit", "--reference", str(root / "teacher"), "--candidate",
                 str(root / "teacher"), "--n-boot", "0", *TINY, "--out", str(root / "audit")]) == 0
    photos = root / "photos" / "cat"
    photos.mkdir(parents=True)
    from PIL import Image
    Image.new("RGB", (8, 8)).save(photos / "a.png")
    return root


def _snapshot(root: Path) -> dict:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}


REFUSED = [  # (argv with {r} for the module's folder, words of the one error line)
    (["compress", "--teacher", "{r}/teacher", "--out", "{r}/teacher"], "lies inside --teacher"),
    (["compress", "--teacher", "{r}/teacher", "--out", "{r}/teacher/student"],
     "lies inside --teacher"),
    (["evaluate", "--model", "{r}/teacher", "--out", "{r}/teacher/model.json"],
     "lies inside --model"),
    (["evaluate", "--model", "{r}/teacher", "--out", "{r}/new.json", "--report",
      "{r}/teacher/model.safetensors"], "--report"),
    (["evaluate", "--model", "{r}/teacher", "--out", "{r}/x.json", "--report", "{r}/x.json"],
     "is also --out"),
    (["evaluate", "--model", "{r}/teacher", "--out", ""], "--out is empty"),
    (["audit", "--reference", "{r}/teacher", "--candidate", "{r}/teacher", "--out",
      "{r}/teacher"], "lies inside --reference"),
    (["train", "--data", "images:{r}/photos", "--out", "{r}/photos/run"], "lies inside --data"),
    (["compress", "--teacher", "{r}/teacher", "--out", "{r}/eval.json/x"], "is a file"),
    (["audit", "--reference", "{r}/teacher", "--candidate", "{r}/teacher", "--out",
      "{r}/eval.json"], "is a file; it must be a folder"),
    (["evaluate", "--model", "{r}/teacher", "--out", "{r}/audit"], "is a folder"),
    (["compress", "--teacher", "{r}/teacher", "--out", "{r}/" + "n" * 300], "longer than"),
    # finished results are replaced only with --force
    (["train", "--width", "4", "--out", "{r}/teacher"], "holds a finished result"),
    (["train", "--width", "4", "--out", "{r}/teacher", "--resume"], "holds a finished result"),
    (["evaluate", "--model", "{r}/teacher", "--out", "{r}/eval.json"], "--force"),
    (["audit", "--reference", "{r}/teacher", "--candidate", "{r}/teacher", "--out",
      "{r}/audit"], "--force"),
]


@pytest.mark.parametrize("argv, words", REFUSED, ids=[" ".join(a[:1] + a[-2:])[:60]
                                                      for a, _ in REFUSED])
def test_outputs_that_would_destroy_inputs_are_refused(runs, capsys, argv, words):
    before = _snapshot(runs)
    code = main([a.replace("{r}", str(runs)) for a in argv] + ["--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert _snapshot(runs) == before  # nothing written, nothing changed


def test_unwritable_parent_is_refused_before_work(runs, capsys, monkeypatch):
    """(Root ignores permissions, so the check is shown through os.access.)"""
    monkeypatch.setattr(outputs.os, "access", lambda path, mode: Path(path) != runs)
    assert main(["compress", "--teacher", str(runs / "teacher"), "--out", str(runs / "new"),
                 "--no-progress"]) == 2
    assert "is not writable" in capsys.readouterr().err
    assert not (runs / "new").exists()


def test_force_replaces_a_finished_audit(runs, capsys):
    out = runs / "audit"
    before = (out / "audit.json").stat().st_mtime_ns
    assert main(["audit", "--reference", str(runs / "teacher"), "--candidate",
                 str(runs / "teacher"), "--n-boot", "0", *TINY, "--out", str(out),
                 "--force"]) == 0
    assert (out / "audit.json").stat().st_mtime_ns != before
    assert not (out / outputs.LOCK_FILE).exists()  # released
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_a_live_lock_refuses_a_second_writer(runs, capsys):
    out = runs / "busy"
    out.mkdir()
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": "attrpreserve x",
              "started": "now"}
    (out / outputs.LOCK_FILE).write_text(json.dumps(holder))
    assert main(["audit", "--reference", str(runs / "teacher"), "--candidate",
                 str(runs / "teacher"), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"process {os.getpid()}" in err[0] and "attrpreserve x" in err[0]
    assert json.loads((out / outputs.LOCK_FILE).read_text()) == holder  # left alone


def test_a_stale_lock_is_named_and_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / outputs.LOCK_FILE).write_text(json.dumps(
        {"pid": int(dead), "host": socket.gethostname(), "command": "attrpreserve compress"}))
    with pytest.warns(UserWarning, match=f"process {dead}.*no longer runs"):
        with outputs.lock(tmp_path, "attrpreserve audit"):
            held = json.loads((tmp_path / outputs.LOCK_FILE).read_text())
            assert held["pid"] == os.getpid() and held["command"] == "attrpreserve audit"
            with pytest.raises(ValueError, match="being written by process"):
                with outputs.lock(tmp_path, "second"):
                    pass
    assert not (tmp_path / outputs.LOCK_FILE).exists()


def test_a_folder_made_for_a_failed_run_is_removed(tmp_path):
    with pytest.raises(RuntimeError):
        with outputs.lock(tmp_path / "new", "attrpreserve x"):
            raise RuntimeError("the run failed before writing anything")
    assert not (tmp_path / "new").exists()


def test_atomic_write_uses_unique_temporaries_and_leaves_none_on_failure(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")
    seen = []

    def failing(tmp):
        seen.append(tmp)
        tmp.write_text("half")
        raise OSError(28, "No space left on device", str(tmp))

    for _ in range(2):
        with pytest.raises(OSError):
            fileio.atomic_write(target, failing)
    assert seen[0] != seen[1] and all(p.parent == tmp_path for p in seen)
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]
    fileio.atomic_write_text(target, "new")
    assert target.read_text() == "new" and sorted(tmp_path.iterdir()) == [target]


def test_a_rerun_with_other_settings_is_refused_unless_forced(runs):
    """The demo reuses a finished run made with the same settings and refuses to replace one
    made with others (``stages.reusable``), unless forced."""
    data = DataConfig(n_train=32, n_val=16, n_test=16, batch_size=16)
    cfg = TeacherConfig(data=data, width=4, train=TrainConfig(epochs=1, progress=False))
    assert stages.reusable(runs / "teacher", cfg)
    other = TeacherConfig(data=data, width=4, train=TrainConfig(epochs=1, seed=1))
    with pytest.raises(ValueError, match="made with other settings.*--force"):
        stages.reusable(runs / "teacher", other)
    assert stages.reusable(runs / "teacher", other, force=True) is False
    assert stages.reusable(runs / "nothing-here", other) is False


def test_atomic_writes_keep_the_usual_permissions(tmp_path):
    """The file gets the umask's permissions, like a plain write (not a private 0600)."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    fileio.atomic_write_text(tmp_path / "atomic.txt", "x")
    assert (tmp_path / "atomic.txt").stat().st_mode == plain.stat().st_mode
