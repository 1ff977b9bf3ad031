"""Every file in examples/ runs as written (the README pastes them): exit status 0."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


def test_examples_exist():
    assert {p.name for p in EXAMPLES} >= {"audit_own_model.py", "distill_with_wcam.py"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path):
    run = subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                         cwd=path.parent, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip(), "an example prints what it found"
