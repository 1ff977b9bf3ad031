"""The architecture's rules (docs/architecture.md), checked on the code: the import graph has no
cycle and follows the layer order, and loading a model needs nothing but the loading module."""

import ast
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import torch

SRC = Path(__file__).resolve().parents[1] / "src" / "attrpreserve"

# Bottom to top: a module may import modules of its own layer or below, never above.
# (The root package only re-exports; it may lazily import anything and be imported anywhere.)
LAYERS = [
    {"registry", "options", "fileio", "outputs", "distributed", "results_schema", "logs"},  # leaves
    {"models", "data"},
    {"attribution"},
    {"matching", "evaluate"},
    {"state", "engine"},
    {"compress"},
    {"loading", "recipes"},
    {"report"},
    {"pipeline"},
    {"cli", "__main__"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> project modules it imports (anywhere in its code, deferred imports included)."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return {m: graph[m] for m in modules}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_has_a_layer():
    tops = {_top(m) for m in import_graph()} - {""}
    assert tops <= set(LAYER), f"add {sorted(tops - set(LAYER))} to LAYERS and the doc"


def test_imports_follow_the_layers():
    wrong = [f"{m} -> {t}" for m, targets in import_graph().items() if _top(m)
             for t in targets if _top(t) and LAYER[_top(t)] > LAYER[_top(m)]]
    assert not wrong, "imports against the dependency rule:\n" + "\n".join(sorted(wrong))


def test_root_package_imports_lazily():
    """The root package's imports are all deferred (inside ``__getattr__``): nothing loads when
    a module imports ``attrpreserve``, so its re-exports form no cycle worth checking."""
    tree = ast.parse((SRC / "__init__.py").read_text())
    eager = [ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
             and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")]
    assert not eager, f"the root package imports eagerly: {eager}"


def test_no_import_cycles():
    graph = import_graph()
    graph["attrpreserve"] = set()  # lazy re-exports only (test_root_package_imports_lazily)
    state, cycles = {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_graph_reader_sees_a_cycle_and_a_layer_breach(tmp_path, monkeypatch):
    """The checks above can fail: a fake package with a cycle and an upward import."""
    pkg = tmp_path / "attrpreserve"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("from ..pipeline import run\n")
    (pkg / "pipeline.py").write_text("from .models import thing\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", pkg)
    graph = import_graph()
    assert graph["attrpreserve.models"] == {"attrpreserve.pipeline"}
    assert graph["attrpreserve.pipeline"] == {"attrpreserve.models"}


LOAD_ONLY = """
import json, sys
import torch
from attrpreserve.loading import load_checkpoint
out = {}
for name, path in json.loads(sys.argv[1]).items():
    model, meta = load_checkpoint(path)
    out[name] = model(torch.load(sys.argv[2])).tolist()
mods = sorted(m for m in sys.modules if m.startswith("attrpreserve.recipes"))
print(json.dumps({"out": out, "recipes": mods}))
"""


def test_loading_alone_loads_pruned_and_qat_checkpoints(tmp_path):
    """A fresh interpreter that imports only ``attrpreserve.loading`` rebuilds channel-pruned,
    magnitude-pruned and fake-quant models (no registration through other imports)."""
    from attrpreserve.compress import (finalize, global_magnitude_prune, prepare_qat,
                                       prune_channels)
    from attrpreserve.models import create_model, save_checkpoint

    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    base = create_model("vgg", num_classes=3, width=4, input_size=32).eval()
    pruned = create_model("vgg", num_classes=3, width=4, input_size=32).eval()
    prune_channels(pruned, 0.5)
    sparse = create_model("vgg", num_classes=3, width=4, input_size=32).eval()
    global_magnitude_prune(sparse, 0.7)
    finalize(sparse)
    models = {"pruned": pruned, "sparse": sparse, "qat": prepare_qat(base, calibration=x).eval(),
              "pruned_qat": prepare_qat(pruned, calibration=x).eval()}
    paths = {}
    for name, model in models.items():
        paths[name] = str(save_checkpoint(tmp_path / name, model))
    torch.save(x, tmp_path / "x.pt")
    run = subprocess.run([sys.executable, "-c", LOAD_ONLY, json.dumps(paths),
                          str(tmp_path / "x.pt")], capture_output=True, text=True, check=True)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["recipes"] == []  # nothing above the loading module was needed
    for name, model in models.items():
        with torch.no_grad():  # same weights and code path in both processes
            expected = model(x)
        torch.testing.assert_close(torch.tensor(result["out"][name]), expected, rtol=1e-6,
                                   atol=1e-6 * float(expected.abs().max()))


def test_qat_resume_extra_is_there_with_the_driver():
    """Resuming QAT restores its frozen observers: the extra is registered beside the driver."""
    code = ("import sys\nfrom attrpreserve.recipes.quantization import quantization_aware_train\n"
            "from attrpreserve.state import EXTRAS\nprint('qat_frozen' in EXTRAS)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["True"]


def test_pipeline_configs_stages_experiments_in_order():
    """Inside pipeline/: configs import no stage code, stages nothing from the experiments."""
    graph = import_graph()
    order = ["attrpreserve.pipeline.configs", "attrpreserve.pipeline.stages",
             "attrpreserve.pipeline.experiments"]
    wrong = [f"{m} -> {t}" for i, m in enumerate(order) for t in order[i + 1:] if t in graph[m]]
    assert not wrong, wrong
