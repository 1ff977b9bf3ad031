"""Logs a file keeps readable: no progress bars unless stderr is a terminal, one line per epoch
and per long phase, one line when --max-steps cuts a phase short, warnings as one line."""

import re
import subprocess
import sys

import pytest

from attrpreserve import logs

TINY = ["--data", "scenes", "--n-train", "64", "--n-val", "32", "--batch-size", "32",
        "--epochs", "2"]


def cli(*args) -> subprocess.CompletedProcess:
    """The CLI in a subprocess, stderr to a pipe (not a terminal), as in a log or CI."""
    done = subprocess.run([sys.executable, "-m", "attrpreserve", *args], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def epoch_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if re.search(r" epoch \d+/\d+: ", ln)]


def test_piped_training_logs_one_line_per_epoch_and_the_early_stop(tmp_path):
    err = cli("train", "--width", "4", *TINY, "--out", str(tmp_path / "t")).stderr
    assert "\r" not in err
    epochs = epoch_lines(err)
    assert len(epochs) == 2, err
    for n, ln in enumerate(epochs, 1):
        assert re.fullmatch(rf"teacher epoch {n}/2: loss [\d.]+, bce [\d.]+, val mAP [\d.]+, "
                            r"\d+ s", ln), ln

    err = cli("compress", "--teacher", str(tmp_path / "t"), "--method", "unstructured",
              "--rounds", "1", "--matching", "none", *TINY, "--max-steps", "1",
              "--out", str(tmp_path / "c")).stderr
    assert "\r" not in err
    assert len(epoch_lines(err)) == 1, err
    (stop,) = [ln for ln in err.splitlines() if "max-steps" in ln]
    assert "after 1 of 4 optimizer steps, in epoch 1/2" in stop

    err = cli("evaluate", "--teacher", str(tmp_path / "t"), "--model", str(tmp_path / "c"),
              "--n-test", "16", "--out", str(tmp_path / "e.json")).stderr
    assert "\r" not in err and re.fullmatch(r"evaluate: done in \d+ s\n", err), err


def test_no_progress_is_silent(tmp_path):
    done = cli("train", "--width", "4", *TINY, "--max-steps", "1", "--no-progress",
               "--out", str(tmp_path / "t"))
    assert done.stderr == ""


def test_a_warning_is_one_line():
    code = ("import sys, warnings; from attrpreserve import cli; "
            "cli.run = lambda args: warnings.warn('no folder test; using val') or 0; "
            "sys.exit(cli.main(['explain', '--model', 'm', '--image', 'i', '--out', 'o']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stderr == \
        "attrpreserve: warning: no folder test; using val\n"


@pytest.mark.parametrize("terminal", [True, False])
def test_bars_only_on_a_terminal(monkeypatch, terminal):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    assert logs.bars() is terminal and logs.bars(progress=False) is False
    assert logs.bar(10, "x").disable is not terminal
