"""Nothing is unpickled: foreign .pt/.pth files load with weights_only=True (a code-running pickle
is refused before it runs), checkpoints and training state are safetensors + JSON."""

import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from attrpreserve.cli import main
from attrpreserve.data import SCENE_CLASSES
from attrpreserve.loading import load_checkpoint
from attrpreserve.models import create_model
from attrpreserve.models.checkpoint import init_from_file, load_state_dict_file

SRC = Path(__file__).resolve().parents[1] / "src" / "attrpreserve"
TINY = ["--n-train", "32", "--n-val", "16", "--batch-size", "16", "--no-progress"]


class Payload:
    """Unpickling this calls exec(): it writes ``marker`` (a stand-in for any code)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def write_malicious(path: Path, marker: Path, legacy: bool = False) -> Path:
    obj = {"features.0.weight": torch.zeros(1), "evil": Payload(marker)}
    if legacy:  # a bare pickle stream with a .pth name
        path.write_bytes(pickle.dumps(obj, protocol=2))
    else:  # torch.save's zip container
        torch.save(obj, path)
    return path


@pytest.mark.parametrize("legacy", [False, True], ids=["torch-zip", "bare-pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, legacy):
    marker = tmp_path / "marker"
    evil = write_malicious(tmp_path / ("evil.pth" if legacy else "evil.pt"), marker, legacy)
    with pytest.raises(ValueError, match="refused"):
        load_state_dict_file(evil)
    assert not marker.exists()
    if not legacy:  # the payload is real: a full unpickle runs it
        torch.load(evil, weights_only=False)
        assert marker.read_text() == "pwned"


def test_cli_init_refuses_malicious_file(tmp_path, capsys):
    marker = tmp_path / "marker"
    evil = write_malicious(tmp_path / "evil.pt", marker)
    code = main(["train", "--width", "4", "--epochs", "1", *TINY, "--init", str(evil),
                 "--out", str(tmp_path / "t")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "refused" in err[0]
    assert not marker.exists() and not (tmp_path / "t").exists()


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors"])
def test_foreign_state_dict_initialises_the_model(tmp_path, suffix):
    source = create_model("vgg", num_classes=5, width=4, dropout=0.0)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:  # wrapped and DDP-prefixed, as training scripts often save them
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    target = init_from_file(create_model("vgg", num_classes=5, width=4, dropout=0.0), path)
    for key, value in target.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_cli_init_trains_from_the_file(tmp_path, capsys):
    k = len(SCENE_CLASSES)
    source = create_model("vgg", num_classes=k, width=4, input_size=64, dropout=0.0)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    assert main(["train", "--width", "4", "--epochs", "1", "--lr", "1e-12", *TINY,
                 "--init", str(tmp_path / "w.pt"), "--out", str(tmp_path / "t")]) == 0
    trained, meta = load_checkpoint(tmp_path / "t")
    assert meta["config"]["init"] == str(tmp_path / "w.pt")
    torch.testing.assert_close(trained.features[0].weight, source.features[0].weight)
    small = create_model("vgg", num_classes=k, width=2, dropout=0.0)
    torch.save(small.state_dict(), tmp_path / "small.pt")
    code = main(["train", "--width", "4", "--epochs", "1", *TINY,
                 "--init", str(tmp_path / "small.pt"), "--out", str(tmp_path / "u")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "do not fit" in err[0]


def test_no_code_path_unpickles():
    """Every torch.load in the package passes weights_only=True; no pickle module use."""
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path.name}: {call}"
        assert not re.search(r"^\s*import pickle|pickle\.loads?\(", text, re.M), path.name


# Usage errors: exit code 2 and one line naming the problem, before any work is done.
BAD = [
    (["train", "--epochs", "0"], "epochs must be positive"),
    (["train", "--lr", "0"], "lr must be positive"),
    (["train", "--momentum", "1"], "momentum must be in [0, 1)"),
    (["train", "--weight-decay", "-1"], "weight_decay must be >= 0"),
    (["train", "--batch-size", "0"], "batch_size must be a positive integer"),
    (["train", "--n-train", "0"], "n_train must be a positive integer"),
    (["train", "--size", "-3"], "size must be a positive integer"),
    (["train", "--width", "0"], "width must be a positive integer"),
    (["train", "--dropout", "1"], "dropout must be in [0, 1)"),
    (["train", "--checkpoint-every", "0"], "--checkpoint-every must be a positive"),
    (["train", "--device", "tpu"], "--device must be cpu or cuda"),
    (["train", "--workers", "-1"], "workers must be a non-negative integer"),
    (["train", "--recalibrate-bn", "-1"], "recalibrate_bn must be a number of batches >= 0"),
    (["evaluate", "--model", "m", "--out", "o.json", "--device", "tpu"],
     "--device must be cpu or cuda"),
    (["audit", "--reference", "a", "--candidate", "b", "--out", "o", "--device", "gpu"],
     "--device must be cpu or cuda"),
    (["compress", "--teacher", "t", "--drop", "1"], "drop must be in [0, 1)"),
    (["compress", "--teacher", "t",
      "--method", "unstructured", "--per-round", "1"], "per_round must be in [0, 1)"),
    (["compress", "--teacher", "t",
      "--method", "structured", "--rate", "-0.1"], "rate must be in [0, 1)"),
    (["compress", "--teacher", "t",
      "--method", "unstructured", "--rounds", "0"], "rounds must be positive"),
    (["compress", "--teacher", "t",
      "--method", "quantization", "--bits", "9"], "bits must be in [2, 8]"),
    (["compress", "--teacher", "t", "--temperature", "0"], "temperature must be > 0"),
    (["compress", "--teacher", "t", "--alpha", "1.5"], "alpha must be in [0, 1]"),
    (["compress", "--teacher", "t",
      "--method", "structured", "--importance", "l7"], "unknown importance 'l7'"),
    (["compress", "--teacher", "t", "--width-divisor", "0"], "width_divisor must be > 0"),
    (["compress", "--teacher", "t", "--bits", "4"],
     "--bits is an option of --method quantization, not of --method kd"),
]


@pytest.mark.parametrize("argv, needle", BAD, ids=[" ".join(a[-2:]) for a, _ in BAD])
def test_bad_settings_exit_2_with_one_line(tmp_path, capsys, argv, needle):
    assert main([*argv, "--no-progress", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("attrpreserve: error:") and needle in err[0]
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("text, needle", [
    ("epochs: ten\n", "key 'epochs' expects an integer, got 'ten'"),
    ("epochs: 2.5\n", "key 'epochs' expects an integer, got 2.5"),
    ("augment: maybe\n", "key 'augment' expects true or false"),
    ("schedule: linear\n", "key 'schedule' expects one of cosine, constant"),
    ("lr: [1, 2]\n", "key 'lr' expects a number"),
    ("epochz: 3\n", "did you mean 'epochs'"),
])
def test_bad_yaml_values_exit_2_with_one_line(tmp_path, capsys, text, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_yaml_number_strings_are_read_as_numbers(tmp_path):
    """PyYAML reads ``1e-3`` as a string; it is checked and converted like the flag's text."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 1e-3\nepochs: 1\nwidth: 2\nn_train: 16\nn_val: 8\nbatch_size: 8\n"
                   "no_progress: true\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "t")]) == 0
    assert load_checkpoint(tmp_path / "t")[1]["config"]["train"]["lr"] == 1e-3
