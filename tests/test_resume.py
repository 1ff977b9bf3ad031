"""Training-state snapshots and --resume: an interrupted run finishes with the same weights as an
uninterrupted one (CPU, same thread count), for every recipe; a non-finite loss keeps the last
good state; the CLI refuses to silently discard or mis-resume a run's state."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from attrpreserve import pipeline, state
from attrpreserve.cli import main
from attrpreserve.engine import TrainConfig, fit

TINY = ["--n-train", "64", "--n-val", "16", "--batch-size", "16", "--no-progress"]


@pytest.fixture(autouse=True)
def _one_thread(_seed_and_threads):
    """One thread: the runs compared are bitwise equal at any fixed count, and one is much
    faster on the shared 2-core machines."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "teacher"
    data = pipeline.DataConfig(n_train=48, n_val=16, batch_size=16)
    pipeline.train_teacher(pipeline.TeacherConfig(
        data=data, width=4, train=TrainConfig(epochs=1, progress=False)), out)
    return out


def weights(directory):
    return load_file(str(directory / "model.safetensors"))


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


class Stop(Exception):
    """Stands for a kill right after a snapshot: what was not snapshotted is lost either way."""


def compress(teacher, out, method, every, monkeypatch=None, stop_after=None, resume=False, **kw):
    """One compress run; with ``stop_after`` it dies right after that many snapshots."""
    if stop_after is not None:
        save, calls = state.Session.save, []

        def dying_save(self, *args, **kwargs):
            save(self, *args, **kwargs)
            calls.append(1)
            if len(calls) == stop_after:
                raise Stop

        monkeypatch.setattr(state.Session, "save", dying_save)
    matching = kw.pop("matching", "wcam")
    cfg = pipeline.CompressConfig(
        teacher=str(teacher), method=method, matching=matching, lam=10,
        options={"width_divisor": 2, **kw} if method == "kd" else kw,
        train=TrainConfig(epochs=2, lr=0.01, augment=True, progress=False))
    try:
        pipeline.compress(cfg, out, resume=resume, checkpoint_every=every)
    except Stop:
        assert state.exists(out) and not (out / "model.safetensors").exists()
    finally:
        monkeypatch and monkeypatch.undo()


# (recipe, options, snapshot every N steps, stop after these snapshots). 48 images / 16 = 3 steps
# per epoch, 2 epochs per phase; the stops hit mid-epoch, an epoch end, a finished pruning round
# and the middle of the next one (masks, shapes), and QAT after its observers froze (step 5/6).
CASES = [("kd", {"matching": "wcam"}, 2, (1,)),
         ("kd", {"matching": "at"}, None, (1,)),
         ("unstructured", {"rounds": 2}, 2, (4, 5)),
         ("structured", {"rounds": 2}, None, (3,)),
         ("quantization", {"bits": 4}, 1, (5,))]


@pytest.mark.parametrize("method, options, every, stops", CASES,
                         ids=[f"{c[0]}-{c[2] or 'epoch'}" for c in CASES])
def test_resumed_run_equals_uninterrupted(teacher, tmp_path, monkeypatch, method, options, every,
                                          stops):
    compress(teacher, tmp_path / "whole", method, every, **options)
    assert not state.exists(tmp_path / "whole")  # removed once the checkpoint is saved
    for stop in stops:
        out = tmp_path / f"stopped-{stop}"
        compress(teacher, out, method, every, monkeypatch, stop_after=stop, **options)
        compress(teacher, out, method, every, resume=True, **options)
        assert not state.exists(out)
        assert_same_weights(tmp_path / "whole", out)
        history = [json.loads((d / "model.json").read_text())["history"]
                   for d in (tmp_path / "whole", out)]
        assert json.dumps(history[0]).count("val_mAP") == json.dumps(history[1]).count("val_mAP")
        assert history[0]["best_val_mAP"] == history[1]["best_val_mAP"]


def test_sigkill_mid_epoch_then_resume(teacher, tmp_path, capsys):
    """The CLI killed with SIGKILL right after its first snapshot resumes to the same weights."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    args = ["compress", "--teacher", str(teacher), "--method", "unstructured", "--rounds", "2",
            "--matching", "wcam", "--lambda", "10", "--epochs", "2",
            "--lr", "0.01", "--augment", "--checkpoint-every", "1", *TINY]
    cli = [sys.executable, "-m", "attrpreserve", *args]

    def run(out, *extra):
        done = subprocess.run([*cli, "--out", str(out), *extra], env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cli, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / ".state" / "state.json").exists():
        assert proc.poll() is None, "the run ended before its first snapshot"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    snap = json.loads((killed / ".state" / "state.json").read_text())
    assert not snap["done"] and not (killed / "model.safetensors").exists()
    assert 0 < snap["batch"] < 4 or snap["phase"] > 0  # 4 batches per epoch: mid-epoch

    with pytest.warns(UserWarning, match=r"removing the lock of process \d+ .*no longer runs"):
        assert main([*args, "--out", str(killed)]) == 2  # rerun without --resume: refused
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "add --resume to continue it" in err[0]

    resumed = run(killed, "--resume")
    assert "resuming from" in resumed.stderr
    run(tmp_path / "whole")
    assert_same_weights(tmp_path / "whole", killed)
    assert not (killed / ".state").exists()


def test_resume_refuses_other_settings(teacher, tmp_path, monkeypatch, capsys):
    out = tmp_path / "s"
    compress(teacher, out, "kd", 2, monkeypatch, stop_after=1)
    code = main(["compress", "--teacher", str(teacher), "--width-divisor", "2", "--lambda", "10",
                 "--epochs", "2", "--lr", "0.02", "--augment", "--checkpoint-every", "2",
                 "--no-progress", "--resume", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "train.lr: 0.01 -> 0.02" in err and len(err.strip().splitlines()) == 1
    assert state.exists(out)


def test_non_finite_loss_names_step_and_keeps_last_state(tmp_path):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    model.spec = {"name": "toy"}
    data = [(torch.rand(4, 3, 2, 2), torch.ones(4, 2)) for _ in range(4)]
    calls = []

    def step(m, x, y):
        calls.append(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(m(x), y)
        bad = loss * float("nan") if len(calls) == 3 else loss
        return bad, {"bce": bad.detach(), "match": torch.tensor(0.5)}

    with pytest.raises(FloatingPointError) as err:
        with state.session(tmp_path, {"run": 1}, every=1):
            fit(model, data, None, step, TrainConfig(epochs=1, progress=False), desc="toy")
    message = str(err.value)
    assert "non-finite loss at step 3 (epoch 1, batch 3 of 4)" in message
    assert "bce nan" in message and "match 0.5" in message
    assert f"last good training state is kept in {tmp_path / '.state'}" in message
    snap = json.loads((tmp_path / ".state" / "state.json").read_text())
    assert snap["step"] == 2 and not snap["done"]


def test_cli_non_finite_loss_exits_1_with_one_line(tmp_path, capsys):
    out = tmp_path / "t"
    code = main(["train", "--width", "4", "--epochs", "2", "--lr", "1e30",
                 "--checkpoint-every", "1", *TINY, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert "non-finite loss at step" in err[0] and "last good training state" in err[0]
    assert state.exists(out) and not (out / "model.safetensors").exists()


def test_teacher_resume_and_state_files(tmp_path, monkeypatch):
    """A teacher run resumes too; the state is JSON + safetensors, one committed tensor file."""
    cfg = pipeline.TeacherConfig(data=pipeline.DataConfig(n_train=48, n_val=16, batch_size=16),
                                 width=4, train=TrainConfig(epochs=2, progress=False))
    pipeline.train_teacher(cfg, tmp_path / "whole")
    save, calls = state.Session.save, []

    def dying_save(self, *args, **kwargs):
        save(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            raise Stop

    monkeypatch.setattr(state.Session, "save", dying_save)
    with pytest.raises(Stop):
        pipeline.train_teacher(cfg, tmp_path / "cut", checkpoint_every=2)
    monkeypatch.undo()
    files = sorted(p.name for p in (tmp_path / "cut" / ".state").iterdir())
    assert files == ["state.json", "tensors-000001.safetensors"]
    snap = json.loads((tmp_path / "cut" / ".state" / "state.json").read_text())
    assert snap["tensors"] == files[1] and snap["step"] == 4 and snap["epoch"] == 1
    pipeline.train_teacher(cfg, tmp_path / "cut", resume=True, checkpoint_every=2)
    assert_same_weights(tmp_path / "whole", tmp_path / "cut")
