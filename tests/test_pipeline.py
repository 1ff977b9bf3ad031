"""End to end on tiny settings: CLI stages, masks folder, results.json schema, config errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attrpreserve import pipeline
from attrpreserve.cli import main
from attrpreserve.loading import load_checkpoint
from attrpreserve.models import create_model, save_checkpoint
from attrpreserve.results_schema import validate_audit, validate_results

TINY = ["--n-train", "64", "--n-val", "32", "--batch-size", "32", "--no-progress"]


@pytest.fixture(autouse=True)
def _documents_follow_the_schema(monkeypatch):
    """Every results.json / sweep.json / audit.json these tests write follows
    attrpreserve.results_schema (checked as written, after a JSON round trip)."""
    write = pipeline.write_results

    def checked(doc, path):
        write(doc, path)
        saved = json.loads(Path(path).read_text())
        (validate_audit if Path(path).name == "audit.json" else validate_results)(saved)

    # the CLI looks write_results up on the package; audit, the demo and sweeps in its stages
    for module in (pipeline, pipeline.stages):
        monkeypatch.setattr(module, "write_results", checked)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "teacher"
    assert main(["train", "--data", "scenes", "--width", "4", "--epochs", "1", *TINY,
                 "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("matching", ["none", "at", "wcam", "lrp"])
def test_compress_and_evaluate_cli(teacher_dir, tmp_path, matching, capsys):
    student = tmp_path / f"kd-{matching}"
    assert main(["compress", "--teacher", str(teacher_dir), "--method", "kd",
                 "--width-divisor", "2", "--matching", matching, "--lambda", "10",
                 "--target", "top1" if matching == "lrp" else "labels", "--epochs", "1", *TINY,
                 "--data", "scenes",
                 "--out", str(student)]) == 0
    model, meta = load_checkpoint(student)
    assert meta["compression"]["matching"] == matching
    assert model.cfg[0] == 2  # width 4 / 2
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(student), "--teacher", str(teacher_dir),
                 "--data", "scenes", "--n-test", "24", "--split", "test",
                 "--explainers", "gradcam", "--no-progress", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    teacher, run = res["runs"]
    assert teacher["role"] == "teacher" and run["role"] == "compressed"
    for r in res["runs"]:
        assert set(r["cost"]) >= {"params", "nonzero_params", "macs", "bytes", "latency_ms"}
        assert set(r["task"]) >= {"mAP", "F1"}
        assert set(r["attribution"]["gradcam"]) >= {"pointing_game", "pointing_game_std", "auc",
                                                   "energy_pg"}
    assert set(run["attribution"]["gradcam"]["agreement"]) >= {"spearman", "topk_iou", "cosine",
                                                              "argmax_agree"}
    assert run["cost"]["params"] < teacher["cost"]["params"]
    assert "mAP" in capsys.readouterr().out


def test_teacher_against_itself_agrees_perfectly(teacher_dir, tmp_path):
    out = tmp_path / "self.json"
    assert main(["evaluate", "--model", str(teacher_dir), "--teacher", str(teacher_dir),
                 "--data", "scenes", "--n-test", "16", "--no-progress", "--out", str(out)]) == 0
    agreement = json.loads(out.read_text())["runs"][1]["attribution"]["gradcam"]["agreement"]
    assert agreement["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert agreement["argmax_agree"] == 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_evaluate_on_cuda_matches_cpu(teacher_dir, tmp_path):
    """--device cuda scores the same maps as the CPU; cost is still measured on the CPU."""
    runs = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.json"
        assert main(["evaluate", "--model", str(teacher_dir), "--teacher", str(teacher_dir),
                     "--data", "scenes", "--n-test", "16", "--no-progress", "--device", device,
                     "--out", str(out)]) == 0
        runs[device] = json.loads(out.read_text())["runs"][0]
    cpu, gpu = (runs[d]["attribution"]["gradcam"] for d in ("cpu", "cuda"))
    for key in ("pointing_game", "auc"):
        assert gpu[key] == pytest.approx(cpu[key], abs=1e-3)
    assert runs["cuda"]["cost"]["params"] == runs["cpu"]["cost"]["params"]


def test_checkpoint_roundtrip(tmp_path):
    model = create_model("vgg", num_classes=3, width=4).eval()
    save_checkpoint(tmp_path / "m", model, {"note": "x"})
    loaded, meta = load_checkpoint(tmp_path / "m")
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model(x))
    assert meta["note"] == "x" and not list((tmp_path / "m").glob("*.tmp"))


def write_masks_folder(root, n=12, size=40):
    """A tiny masks-format folder: squares of class 1 and discs of class 2 on noise."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "splits").mkdir()
    (root / "classes.txt").write_text("square\ndisc\n")
    yy, xx = np.mgrid[:size, :size]
    ids = []
    for i in range(n):
        img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        cy, cx = rng.integers(10, size - 10, 2)
        if i % 2:
            sel = (yy - cy) ** 2 + (xx - cx) ** 2 < 36
            mask[sel] = 2
        else:
            sel = (abs(yy - cy) < 6) & (abs(xx - cx) < 6)
            mask[sel] = 1
        img[sel] = 255
        mask[0, :] = 255
        Image.fromarray(img).save(root / "images" / f"im{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"im{i}.png")
        ids.append(f"im{i}")
    (root / "splits" / "train.txt").write_text("\n".join(ids[:8]))
    (root / "splits" / "val.txt").write_text("\n".join(ids[8:]))


def test_masks_folder_end_to_end(tmp_path):
    write_masks_folder(tmp_path / "ds")
    spec = f"masks:{tmp_path / 'ds'}"
    common = ["--data", spec, "--size", "32", "--batch-size", "4", "--no-progress"]
    assert main(["train", "--width", "2", "--epochs", "1", *common,
                 "--out", str(tmp_path / "t")]) == 0
    assert main(["compress", "--teacher", str(tmp_path / "t"), "--matching", "wcam",
                 "--width-divisor", "2", "--epochs", "1", *common,
                 "--out", str(tmp_path / "s")]) == 0
    with pytest.warns(UserWarning, match="val"):
        assert main(["evaluate", "--model", str(tmp_path / "s"), "--teacher", str(tmp_path / "t"),
                     *common, "--split", "test", "--out", str(tmp_path / "e.json")]) == 0
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["dataset"]["classes"] == ["square", "disc"] and res["dataset"]["images"] == 4


def test_config_file_and_flag_override(tmp_path, teacher_dir):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"teacher: {teacher_dir}\nmatching: at\nepochs: 1\nn-train: 32\nn_val: 16\n"
                   "width-divisor: 2\nno_progress: true\n")
    assert main(["compress", "--config", str(cfg), "--matching", "none",
                 "--out", str(tmp_path / "s")]) == 0
    assert load_checkpoint(tmp_path / "s")[1]["compression"]["matching"] == "none"


@pytest.mark.parametrize("argv, needle", [
    (["train", "--data", "nosuch:thing", "--out", "x"], "nosuch"),
    (["compress", "--teacher", "/nonexistent", "--out", "x"], "not a checkpoint"),
])
def test_bad_input_exits_2_with_one_line(argv, needle, capsys, tmp_path):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("attrpreserve: error:") and needle in err and "\n" not in err


def test_unknown_config_key_names_closest(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochz: 3\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "t")]) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err


def test_demo_resumes_finished_stages(tmp_path, monkeypatch):
    cfg = pipeline.DemoConfig(teacher="train", recipes=("kd",), width=4, teacher_epochs=1,
                              student_epochs=1, n_train=32, n_val=16, n_test=16, matchings=("none", "wcam"))
    res = pipeline.demo(tmp_path, seed=0, progress=False, cfg=cfg)
    assert [r["name"] for r in res["runs"]] == ["teacher", "kd", "kd+wcam"]
    assert (tmp_path / "results.json").is_file()
    page = (tmp_path / "report.html").read_text()
    assert "kd+wcam" in page and "<table" in page and "data:image/png;base64" in page
    calls = []
    # the demo calls its stages through pipeline.stages
    monkeypatch.setattr(pipeline.stages, "train_teacher", lambda *a, **k: calls.append("teacher"))
    monkeypatch.setattr(pipeline.stages, "compress", lambda *a, **k: calls.append("compress"))
    pipeline.demo(tmp_path, seed=0, progress=True, cfg=cfg)
    assert calls == []  # an interrupted demo restarts where it stopped (progress bars or not)
    changed = pipeline.DemoConfig(**{**cfg.__dict__, "lam": 1.0})
    with pytest.raises(ValueError, match="kd\\+wcam holds a finished run made with other"):
        pipeline.demo(tmp_path, seed=0, progress=False, cfg=changed)  # never replaced silently
    assert calls == []
    pipeline.demo(tmp_path, seed=0, progress=False, cfg=changed, force=True)
    assert calls == ["compress"]  # changed settings are never served from a stale checkpoint


def test_wrong_architecture_names_the_layer(tmp_path):
    import json as _json
    save_checkpoint(tmp_path / "m", create_model("vgg", num_classes=3, width=4))
    side = tmp_path / "m" / "model.json"
    meta = _json.loads(side.read_text())
    meta["model"]["kwargs"]["width"] = 8
    side.write_text(_json.dumps(meta))
    with pytest.raises(ValueError, match="features.0.weight"):
        load_checkpoint(tmp_path / "m")


def test_unstructured_compress_cli(teacher_dir, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert main(["compress", "--teacher", str(teacher_dir), "--method", "unstructured",
                 "--rounds", "2", "--per-round", "0.5", "--matching", "wcam", "--lambda", "10",
                 "--epochs", "1", *TINY, "--data", "scenes", "--out", str(out)]) == 0
    assert "sparsity 0.75" in capsys.readouterr().out
    model, meta = load_checkpoint(out)
    assert meta["compression"]["method"] == "unstructured"
    res_path = tmp_path / "e.json"
    assert main(["evaluate", "--model", str(out), "--teacher", str(teacher_dir), "--data",
                 "scenes", "--n-test", "16", "--no-progress", "--out", str(res_path)]) == 0
    cost = json.loads(res_path.read_text())["runs"][1]["cost"]
    assert cost["nonzero_params"] < 0.5 * cost["params"]


def test_structured_compress_cli(teacher_dir, tmp_path, capsys):
    out = tmp_path / "filters"
    assert main(["compress", "--teacher", str(teacher_dir), "--method", "structured",
                 "--rate", "0.5", "--matching", "wcam", "--lambda", "10", "--epochs", "1",
                 "--recalibrate-bn", "2", *TINY, "--data", "scenes", "--out", str(out)]) == 0
    model, meta = load_checkpoint(out)  # rebuilt from the checkpoint alone
    teacher, _ = load_checkpoint(teacher_dir)
    assert meta["compression"]["method"] == "structured"
    assert meta["config"]["train"]["recalibrate_bn"] == 2
    assert model.cfg == [c if c == "M" else c // 2 for c in teacher.cfg]  # width 4: 4 -> 2, ...
    assert meta["compression"]["params"] == sum(p.numel() for p in model.parameters())
    model(torch.rand(2, 3, 64, 64)).sum().backward()


def test_quantization_compress_cli_exports_int8(teacher_dir, tmp_path):
    out = tmp_path / "int8"
    assert main(["compress", "--teacher", str(teacher_dir), "--method", "quantization",
                 "--matching", "wcam", "--lambda", "10", "--epochs", "1", *TINY,
                 "--data", "scenes", "--out", str(out)]) == 0
    meta = load_checkpoint(out)[1]
    assert meta["compression"]["int8_agreement"] >= 0.95  # fake-quant vs converted int8
    res_path = tmp_path / "e.json"
    assert main(["evaluate", "--model", str(out), "--teacher", str(teacher_dir), "--data",
                 "scenes", "--n-test", "16", "--no-progress", "--out", str(res_path)]) == 0
    teacher, run = json.loads(res_path.read_text())["runs"]
    assert run["cost"]["bytes"] == (out / "model.int8.safetensors").stat().st_size
    assert run["cost"]["bytes"] < 0.5 * teacher["cost"]["bytes"]  # int8 weights ship
    assert run["attribution"]["gradcam"]["agreement"]["spearman"] is not None


def test_audit_cli_self_audit_is_perfect(teacher_dir, tmp_path, capsys):
    out = tmp_path / "audit"
    assert main(["audit", "--reference", str(teacher_dir), "--candidate", str(teacher_dir),
                 "--n-test", "16", "--n-boot", "50", "--no-progress", "--out", str(out)]) == 0
    result = json.loads((out / "audit.json").read_text())
    agreement = result["explainers"]["gradcam"]["agreement"]
    assert agreement["argmax_agree"]["mean"] == 1.0
    assert "Perfect agreement" in capsys.readouterr().out
    assert "<table" in (out / "audit.html").read_text()


def test_bad_ranges_exit_2(teacher_dir, tmp_path, capsys):
    assert main(["compress", "--teacher", str(teacher_dir), "--drop", "1.5",
                 "--out", str(tmp_path / "x")]) == 2
    assert "drop must be in [0, 1)" in capsys.readouterr().err


def test_evaluate_flags_override_the_teachers_data(teacher_dir, tmp_path):
    out = tmp_path / "e.json"
    assert main(["evaluate", "--model", str(teacher_dir), "--n-test", "8", "--no-progress",
                 "--out", str(out)]) == 0
    ds = json.loads(out.read_text())["dataset"]
    assert ds["images"] == 8 and ds["spec"] == "scenes" and ds["n_train"] == 64  # inherited


def test_evaluate_control_must_be_a_model(teacher_dir, tmp_path, capsys):
    assert main(["evaluate", "--model", str(teacher_dir), "--control", "elsewhere",
                 "--n-test", "4", "--no-progress", "--out", str(tmp_path / "e.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--control elsewhere is not one of the --model arguments" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "e.json").exists()


def test_explain_writes_overlays(teacher_dir, tmp_path, capsys):
    from attrpreserve.data import build_dataset
    img = build_dataset("scenes", "test", n=1).images[0].permute(1, 2, 0).numpy()
    Image.fromarray(img).resize((100, 80)).save(tmp_path / "photo.png")  # any size is accepted
    assert main(["explain", "--model", str(teacher_dir), "--image", str(tmp_path / "photo.png"),
                 "--class", "circle", "--class", "star", "--methods", "gradcam,gradient",
                 "--out", str(tmp_path / "png")]) == 0
    files = sorted(p.name for p in (tmp_path / "png").glob("*.png"))
    assert files == ["photo_circle_gradcam.png", "photo_circle_gradient.png",
                     "photo_star_gradcam.png", "photo_star_gradient.png"]
    pixels = np.asarray(Image.open(tmp_path / "png" / "photo_star_gradient.png").convert("L"))
    assert pixels.std() > 5  # not a blank figure
    # two models: one PNG per method and class, each model's overlay one under the other
    assert main(["explain", "--model", str(teacher_dir), "--model", str(teacher_dir),
                 "--image", str(tmp_path / "photo.png"), "--class", "circle",
                 "--out", str(tmp_path / "two")]) == 0
    assert [p.name for p in (tmp_path / "two").glob("*.png")] == ["photo_circle_gradcam.png"]
    sheet = np.asarray(Image.open(tmp_path / "two" / "photo_circle_gradcam.png").convert("RGB"))
    single = np.asarray(Image.open(tmp_path / "png" / "photo_circle_gradcam.png").convert("RGB"))
    h = single.shape[0]  # one strip per model, each drawn as the single-model PNG is
    assert sheet.shape == (2 * h, single.shape[1], 3) and sheet.std() > 5
    np.testing.assert_array_equal(sheet[:h], sheet[h:])  # the same model twice
    assert main(["explain", "--model", str(teacher_dir), "--image", str(tmp_path / "nope.png"),
                 "--out", str(tmp_path / "png")]) == 2
    assert "cannot read image" in capsys.readouterr().err


def test_demo_sweeps_draw_curves(tmp_path, capsys):
    """demo(sweeps=True): naive and WCAM at every sweep strength, rows in results.json and curves
    in the report; a rerun trains nothing."""
    cfg = pipeline.DemoConfig(teacher="train", width=4, teacher_epochs=1, finetune_epochs=1,
                              n_train=32, n_val=16, n_test=16, matchings=("none",), recipes=("structured",),
                              sweep_strengths={"structured": (0.25, 0.5)})
    res = pipeline.demo(tmp_path, seed=0, progress=False, cfg=cfg, sweeps=True)
    rows = [(r["matching"], r["strength"]) for r in res["sweeps"]]
    assert rows == [("none", 0.25), ("wcam", 0.25), ("none", 0.5), ("wcam", 0.5)]
    params = {r["strength"]: r["params"] for r in res["sweeps"]}
    assert params[0.5] < params[0.25] < res["runs"][0]["cost"]["params"]
    assert "Metrics against model size" in (tmp_path / "report.html").read_text()
    stamp = (tmp_path / "sweep" / "structured" / "structured@0.5+wcam" / "model.safetensors")
    before = stamp.stat().st_mtime_ns
    pipeline.demo(tmp_path, seed=0, progress=False, cfg=cfg, sweeps=True)
    assert stamp.stat().st_mtime_ns == before
    assert main(["demo", "--quick", "--sweeps", "--out", str(tmp_path / "q")]) == 2
    assert "--sweeps needs the full demo" in capsys.readouterr().err
    assert main(["demo", "--family", "vit", "--sweeps", "--out", str(tmp_path / "v")]) == 2
    assert "drop --family" in capsys.readouterr().err
    assert main(["demo", "--family", "vit", "--photos", str(tmp_path), "--out",
                 str(tmp_path / "p")]) == 2
    assert "--family applies to the scenes demo only" in capsys.readouterr().err


def test_demo_report_picks_up_saved_sweeps(tmp_path):
    """bench/sweep.py --out OUT/sweep results become the demo report's curves."""
    from attrpreserve.pipeline import saved_sweeps
    assert saved_sweeps(tmp_path) == []
    for recipe, bits in (("quantization", [8, 2]), ("structured", [0.5])):
        (tmp_path / "sweep" / recipe).mkdir(parents=True)
        rows = [{"recipe": recipe, "matching": "none", "strength": b} for b in bits]
        (tmp_path / "sweep" / recipe / "sweep.json").write_text(json.dumps({"sweeps": rows}))
    got = saved_sweeps(tmp_path)
    assert [(r["recipe"], r["strength"]) for r in got] == [
        ("quantization", 8), ("quantization", 2), ("structured", 0.5)]


@pytest.mark.parametrize("recipe", [["--method", "unstructured", "--rounds", "1"],
                                    ["--method", "structured", "--rate", "0.5"]])
def test_channels_last_trains_the_same_model(teacher_dir, tmp_path, recipe):
    # the same steps in another memory layout: weights equal up to float32 rounding of the
    # reordered sums carried through two optimizer steps (the step itself in float64:
    # tests/test_recipes.py); the checkpoint is saved in the usual layout
    def run(name, *extra):
        out = tmp_path / name
        assert main(["compress", "--teacher", str(teacher_dir), *recipe, "--matching", "wcam",
                     "--lambda", "10", "--epochs", "1", *TINY, "--data", "scenes",
                     "--out", str(out), *extra]) == 0
        return load_checkpoint(out)[0].state_dict()

    plain, nhwc = run("plain"), run("nhwc", "--channels-last")
    assert plain.keys() == nhwc.keys()
    for k, v in plain.items():
        if v.is_floating_point():
            torch.testing.assert_close(nhwc[k], v, rtol=1e-3, atol=1e-4 * (1 + float(v.abs().max())),
                                       msg=k)


def test_channels_last_qat_exports_int8_that_agrees(teacher_dir, tmp_path):
    # fake quantization rounds to bins, so a reordered sum can flip a bin: no weight comparison
    out = tmp_path / "int8"
    assert main(["compress", "--teacher", str(teacher_dir), "--method", "quantization",
                 "--matching", "wcam", "--lambda", "10", "--epochs", "1", *TINY,
                 "--data", "scenes", "--channels-last", "--out", str(out)]) == 0
    model, meta = load_checkpoint(out)
    assert meta["compression"]["int8_agreement"] >= 0.95
    assert all(p.is_contiguous() for p in model.parameters())


def test_evaluating_on_val_reports_f1_at_the_best_val_threshold(teacher_dir):
    # on val itself the val-chosen threshold is the best one there: never below F1 at 0.5
    res = pipeline.evaluate({"teacher": teacher_dir}, None, {"n_val": 32}, "val", progress=False)
    task = res["runs"][0]["task"]
    assert task["F1_at_val_threshold"] >= task["F1"] - 1e-12
    assert 0 < task["F1_val_threshold"] < 1
    # chosen from the scored pass's logits: the same threshold as a separate pass over val
    from attrpreserve.evaluate import runner
    from attrpreserve.pipeline.configs import labels_for, resolve_data

    model, meta = load_checkpoint(teacher_dir)
    data = resolve_data({"n_val": 32}, meta)
    val = data.loader("val", adapt=labels_for(model, meta["classes"]))
    assert runner._val_thresholds({"t": model}, {"t": False}, val)["t"] == \
        task["F1_val_threshold"]


@pytest.mark.parametrize("extra, needle", [
    (["--layer", "features.0,"], "give layer names separated by commas"),
    (["--layer", "features.0,features.2", "--target", "labels"], "top1-target"),
])
def test_bad_matched_layers_exit_2_before_training(teacher_dir, tmp_path, capsys, extra, needle):
    out = tmp_path / "run"
    argv = ["compress", "--teacher", str(teacher_dir), "--method", "unstructured",
            "--matching", "wcam", *TINY, "--data", "scenes", "--out", str(out), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("attrpreserve: error:") and needle in err and "\n" not in err
    assert not out.exists()  # refused before anything was written


def test_demo_layer_reaches_matched_runs_only():
    """``DemoConfig.layer`` is what AT and WCAM match (several layers: "a,b"); a naive run has
    no matched layer, so its finished checkpoint is reused whatever the matched runs tap."""
    cfg = pipeline.DemoConfig(layer="blocks.1,blocks.2")
    assert cfg.compress_cfg("t", "structured", "wcam", 0, False).layer == "blocks.1,blocks.2"
    assert cfg.compress_cfg("t", "structured", "at", 0, False).layer == "blocks.1,blocks.2"
    assert cfg.compress_cfg("t", "structured", "none", 0, False).layer is None
    assert pipeline.DemoConfig().compress_cfg("t", "structured", "wcam", 0, False).layer is None
