"""HTML report: self-contained, holds the results table and the right gap-closed shares, and
renders to a non-blank page in headless Chromium (skipped where Chromium is absent)."""

import base64
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attrpreserve.models import create_model, save_checkpoint
from attrpreserve.report import (ReportImages, audit_headline, gap_closed, headline, recipe_groups,
                                 save_overlay, save_overlays, write_audit_report, write_report)

CHROMIUM = Path("/usr/bin/chromium")
CLASSES = ["circle", "square", "triangle"]

# Pointing game, AUC and Spearman per run (on all ground-truth pairs; the paper-mode numbers are
# set apart below), and the gap-recovered entries the evaluator would write for them.
T_PG, T_AUC = 0.8, 0.9
KD = {"pg": 0.4, "auc": 0.89, "rho": 0.2, "mAP": 0.41}       # AUC: the gap's CI includes 0
KD_AT = {"pg": 0.5, "auc": 0.91, "rho": 0.6, "mAP": 0.45}
KD_WCAM = {"pg": 0.7, "auc": 0.90, "rho": 0.8, "mAP": 0.52}
WCAM_PG = (0.75, 0.6, 0.9)      # (0.7 - 0.4) / (0.8 - 0.4), and its interval
AT_PG = (0.25, 0.05, 0.45)      # (0.5 - 0.4) / (0.8 - 0.4)
WCAM_RHO = (0.75, 0.7, 0.8)     # (0.8 - 0.2) / (1.0 - 0.2): the teacher agrees with itself
AT_RHO = (0.5, 0.45, 0.55)
PAPER_PG = {"teacher": 0.66, "kd": 0.11, "kd+at": 0.21, "kd+wcam": 0.31}  # not the headline
CENTER_PG, CENTER_AUC = 0.3, 0.6  # the centre baseline on all pairs


def _ci(mean, half=0.05):
    return None if mean is None else {"mean": mean, "ci_low": mean - half,
                                      "ci_high": mean + half}


def _gap(t, n, m, share=None):
    """A gap-recovered entry: ``share`` = (ratio, low, high) when the gap is clear, else
    "no gap"."""
    entry = {"status": "ok" if share else "no gap", "teacher": t, "naive": n, "matched": m,
             "gap": t - n, "gain": m - n, "recovered": None, "ci_low": None, "ci_high": None}
    gap_half = 0.05 if share else abs(t - n) + 0.02  # "no gap": the interval straddles 0
    entry.update(gap_ci_low=t - n - gap_half, gap_ci_high=t - n + gap_half,
                 gain_ci_low=m - n - 0.05, gain_ci_high=m - n + 0.05)
    if share:
        entry.update(recovered=share[0], ci_low=share[1], ci_high=share[2])
    return entry


def _run(name, method, matching, m_ap, pg, auc, rho, per_class=None, gaps=None):
    paper = PAPER_PG.get(name, pg)
    att = {"pointing_game": paper, "pointing_game_std": pg, "auc": auc, "energy_pg": 0.2,
           "predicted_pairs": 7, "pairs": 12}
    att.update(pointing_game_center_baseline=0.25, auc_center_baseline=0.55)
    pooled = {"pointing_game": _ci(pg), "auc": _ci(auc),
              "pointing_game_center_baseline": _ci(CENTER_PG),
              "auc_center_baseline": _ci(CENTER_AUC)}
    if rho is not None:  # the teacher has no agreement with itself
        att["agreement"] = {"spearman": rho, "topk_iou": 0.3, "cosine": 0.5, "argmax_agree": 0.4,
                            "com_shift": 3.0, "peak_distance": 6.25,
                            "hit_given_teacher_hit": 0.55}
        pooled.update({k: _ci(v) for k, v in att["agreement"].items()})
    pooled = {k: v for k, v in pooled.items() if v is not None}
    att["pair_sets"] = {"all": {"pairs": 12, "pooled": pooled, "class_balanced": pooled},
                        "teacher_correct": {"pairs": 7, "pooled": pooled,
                                            "class_balanced": pooled}}
    if gaps:
        att["gap_recovered"] = {"naive": "kd", **{s: {"pooled": gaps, "class_balanced": gaps}
                                                  for s in ("all", "teacher_correct")}}
    if per_class:
        att["per_class"] = per_class
    return {"name": name, "role": "teacher" if method == "none" else "compressed",
            "checkpoint": name, "compression": {"method": method, "matching": matching},
            "cost": {"params": 1234567, "nonzero_params": 1000000, "macs": 2500000,
                     "bytes": 4938268, "latency_ms": 0.5},
            "task": {"mAP": m_ap, "F1": 0.3, "per_class_AP": [0.5, 0.6, 0.7]},
            "attribution": {"gradcam": att},
            "training": {"best_epoch": 1, "best_val_mAP": 0.3}}


def _kd_gaps(run, pg_share, rho_share):
    return {"pointing_game": _gap(T_PG, KD["pg"], run["pg"], pg_share),
            "auc": _gap(T_AUC, KD["auc"], run["auc"]),
            "spearman": _gap(1.0, KD["rho"], run["rho"], rho_share)}


def _results():
    pc = {"pointing_game": {"0": 0.5, "1": 0.6, "2": 0.7}}
    runs = [_run("teacher", "none", "none", 0.7, T_PG, T_AUC, None, pc),
            _run("kd", "kd", "none", KD["mAP"], KD["pg"], KD["auc"], KD["rho"], pc),
            _run("kd+at", "kd", "at", KD_AT["mAP"], KD_AT["pg"], KD_AT["auc"], KD_AT["rho"],
                 gaps=_kd_gaps(KD_AT, AT_PG, AT_RHO)),
            _run("kd+wcam", "kd", "wcam", KD_WCAM["mAP"], KD_WCAM["pg"], KD_WCAM["auc"],
                 KD_WCAM["rho"], gaps=_kd_gaps(KD_WCAM, WCAM_PG, WCAM_RHO)),
            # written before gap_recovered existed
            _run("unstructured", "unstructured", "none", 0.69, 0.79, None, 0.9),
            _run("unstructured+wcam", "unstructured", "wcam", 0.69, None, 0.9, 0.95)]
    for run in runs[4:]:
        del run["attribution"]["gradcam"]["pair_sets"]
    sweeps = [{"recipe": "kd", "matching": m, "strength": s, "size_bytes": b, "mAP": 0.5,
               "pointing_game": pg, "auc": 0.9, "spearman": 0.5}
              for m, off in (("none", 0.0), ("wcam", 0.2))
              for s, b, pg in ((2, 40000, 0.5 + off), (4, 10000, 0.3 + off))]
    return {"runs": runs, "sweeps": sweeps,
            "dataset": {"spec": "scenes", "size": 32, "seed": 0, "n_train": None, "n_val": None,
                        "n_test": 3, "batch_size": 64, "split": "test", "images": 3,
                        "classes": CLASSES},
            "seed": 0, "demo": {"width": 4, "lr": 0.002, "weight_decay": 1e-4},
            "versions": {"attrpreserve": "0.1.0", "torch": torch.__version__}}


def _checkpoints(root: Path) -> dict[str, Path]:
    """Tiny VGGs with distillation-style epochs (or pruning-style rounds) in their history."""
    torch.manual_seed(0)
    out = {}
    for name, method, matching in (("teacher", "none", "none"), ("kd", "kd", "none"),
                                   ("kd+wcam", "kd", "wcam"),
                                   ("unstructured", "unstructured", "none")):
        model = create_model("vgg", num_classes=3, width=4, input_size=32)
        if method == "unstructured":
            history = {"rounds": [{"round": 1, "target": 0.2, "sparsity": 0.2,
                                   "best_val_mAP": 0.4},
                                  {"round": 2, "target": 0.36, "sparsity": 0.36,
                                   "best_val_mAP": 0.38}],
                       "best_epoch": None, "best_val_mAP": 0.38}
        else:
            history = {"epochs": [{"epoch": e, "loss": 1.0 / e, "kd": 0.5 / e,
                                   "match": 0.01 / e if matching != "none" else 0.0,
                                   "val_mAP": 0.3 + 0.05 * e, "seconds": 1.0}
                                  for e in (1, 2, 3)], "best_epoch": 3, "best_val_mAP": 0.45}
        out[name] = save_checkpoint(root / name, model, {
            "classes": CLASSES, "compression": {"method": method, "matching": matching},
            "history": history})
    return out


def _images(n: int = 3, size: int = 32) -> ReportImages:
    """Noise images, each with one bright square of class i (mask value i + 1)."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, size, size, generator=gen) * 0.3
    masks = torch.zeros(n, size, size, dtype=torch.long)
    labels = torch.zeros(n, len(CLASSES))
    for i in range(n):
        y0 = 4 + 6 * i
        images[i, i % 3, y0:y0 + 12, 8:20] = 1.0
        masks[i, y0:y0 + 12, 8:20] = i % 3 + 1
        labels[i, i % 3] = 1
    return ReportImages(images, labels, masks)


class _Page(HTMLParser):
    """Collects every src / href and the cell texts of every table."""

    def __init__(self):
        super().__init__()
        self.links, self.images, self.tables, self.scripts = [], [], [], 0
        self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if key in attrs:
                self.links.append(attrs[key])
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "script":
            self.scripts += 1
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "br" and self._cell is not None:
            self._cell += " "

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(self._cell.replace("\xa0", " ").strip())
            self._cell = None


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    results = _results()
    # input x gradient (signed, not in the results) is drawn as heatmaps only
    path = write_report(results, root / "report.html", _checkpoints(root), _images(),
                        explainers=("gradcam", "input_x_gradient"))
    return path, results, path.read_text(encoding="utf-8")


def test_gap_closed_and_groups():
    assert gap_closed(0.8, 0.4, 0.7) == pytest.approx(0.75)
    assert gap_closed(0.8, 0.79, 0.7) is None          # within 0.02: nothing to close
    assert gap_closed(0.8, None, 0.7) is None
    groups = recipe_groups(_results())
    assert {k: [r["name"] for r in v] for k, v in groups.items()} == {
        "kd": ["kd", "kd+at", "kd+wcam"], "unstructured": ["unstructured", "unstructured+wcam"]}


def test_report_is_self_contained(report):
    path, _, text = report
    page = _Page()
    page.feed(text)
    assert "http://" not in text and "https://" not in text
    assert not any(link.startswith("//") for link in page.links)
    assert page.scripts == 0
    # bar charts, size sweep, two heatmap grids, training curves: all inline PNGs
    assert len(page.images) == 5
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(link.startswith(("#", "data:")) for link in page.links)


def test_report_table_and_headline(report):
    _, results, text = report
    page = _Page()
    page.feed(text)
    names = [r["name"] for r in results["runs"]]
    # task and agreement with the teacher first, localisation on fixed pairs in its own table
    agreement = next(t for t in page.tables if t and "Spearman gap recovered" in t[0])
    assert [row[0] for row in agreement[1:]] == names  # teacher first, then recipe by recipe
    assert "PG all" not in agreement[0] and agreement[0][:3] == ["run", "role", "recipe"]
    assert [row[1] for row in agreement[1:4]] == ["reference", "naive", "matched (AT)"]
    assert agreement[0].index("mAP") < agreement[0].index("Spearman")
    wcam = agreement[1 + names.index("kd+wcam")]
    assert wcam[agreement[0].index("Spearman gap recovered")] == "75% (70%–80%)"
    main = next(t for t in page.tables if t and "PG gap recovered" in t[0])
    assert [row[0] for row in main[1:]] == names + ["centre baseline"]
    header = main[0]
    assert header.index("PG all") < header.index("PG gap recovered")
    assert "PG (paper)" not in header and "Spearman" not in header
    wcam = main[1 + names.index("kd+wcam")]
    assert wcam[header.index("PG gap recovered")] == "75% (60%–90%)"
    assert wcam[header.index("AUC gap recovered")] == "no gap"
    assert wcam[header.index("PG all")] == "0.700"
    # runs without a gap of their own leave the cell empty; a matched run without one: "–"
    assert main[1 + names.index("kd")][header.index("PG gap recovered")] == ""
    assert main[1 + names.index("unstructured+wcam")][header.index("PG gap recovered")] == "–"
    center = main[-1]                                  # the same pairs, a map at the centre
    assert center[header.index("PG all")] == f"{CENTER_PG:.3f}"
    assert center[header.index("AUC all")] == f"{CENTER_AUC:.3f}"
    paper = next(t for t in page.tables if t and "PG (paper)" in t[0])
    col = paper[0].index("PG (paper)")
    assert paper[0][col + 1] == "centre baseline"      # beside the metric, same pairs
    assert paper[1 + names.index("kd+wcam")][col:col + 2] == ["0.310", "0.250"]
    cost = next(t for t in page.tables if t and "non-zero params" in t[0])
    assert "1,234,567" in cost[1]                      # thousands separators
    assert any(t and t[0][:1] == ["class"] for t in page.tables)  # per-class tables
    assert "paper-comparable" in text.lower()

    kd = next(h for h in headline(results) if h["recipe"] == "kd")
    assert kd["sentences"][0].startswith("Agreement with the teacher's gradcam maps")
    assert "kd Spearman 0.200 (95% CI 0.150 to 0.250)" in kd["sentences"][0]
    assert "peak distance 6.2 px" in kd["sentences"][0]
    pg_sentence = next(s for s in kd["sentences"] if s.startswith("Pointing game"))
    assert "naive lost 0.400 pointing game" in pg_sentence
    assert "WCAM (kd+wcam) 0.700, recovered 75% (95% CI 60% to 90%)" in pg_sentence
    assert "AT (kd+at) 0.500, recovered 25% (95% CI 5% to 45%)" in pg_sentence
    assert "mAP 0.520 vs naive 0.410" in pg_sentence
    assert "0.66" not in " ".join(kd["sentences"]) + kd["summary"]  # paper mode: never here
    auc_sentence = next(s for s in kd["sentences"] if s.startswith("Localisation AUC"))
    assert "no gap in localisation AUC" in auc_sentence and "recovered" not in auc_sentence
    assert "Best at bringing it back: WCAM (kd+wcam), 75% (95% CI 60% to 90%)" in kd["summary"]
    assert any(s.startswith("Gap recovered on the pairs the teacher predicts correctly (7)")
               for s in kd["sentences"])
    assert "recovered 75% (95% CI 60% to 90%)" in text
    unstructured = next(h for h in headline(results) if h["recipe"] == "unstructured")
    assert any("Gap recovered is not in these results" in s for s in unstructured["sentences"])
    # an older document still answers agreement (same definition, from agreement)
    assert "unstructured Spearman 0.900" in unstructured["sentences"][0]


def test_report_without_checkpoints_or_optional_sections(tmp_path):
    results = _results()
    del results["sweeps"], results["demo"]
    for run in results["runs"]:
        run["attribution"]["gradcam"].pop("per_class", None)
    results["runs"][1]["attribution"] = {}
    text = write_report(results, tmp_path / "r.html").read_text()
    words = _words(text)
    assert 'id="heatmaps"' not in text and 'id="training"' not in text
    assert "Attribution maps: not shown, no models were given to draw them" in words
    assert "Training curves: not shown, no run has a training history" in words
    assert "Metrics against model size" not in text and "kd+wcam" in text
    results["notes"] = ["Only 2-bit QAT <met> the condition"]
    text = write_report(results, tmp_path / "n.html").read_text()
    assert "Only 2-bit QAT &lt;met&gt; the condition" in _section_html(text, "headline")
    text = write_report(results, tmp_path / "r2.html", {"teacher": tmp_path / "missing"},
                        _images()).read_text()
    assert "Not drawn: teacher" in text                # a bad checkpoint is reported, not fatal


def test_report_images_from_dataset_and_overlay(tmp_path):
    imgs = _images()
    items = [(imgs.images[i], imgs.labels[i], imgs.masks[i]) for i in range(3)]
    picked = ReportImages.from_dataset([(items[0][0], torch.zeros(3), items[0][2])] + items, n=2)
    assert len(picked.images) == 2 and bool((picked.labels.sum(1) > 0).all())
    amap = torch.rand(32, 32)
    out = save_overlay(imgs.images[0], amap, tmp_path / "o.png", "t")
    assert out.is_file()
    # stacked overlays: each row as save_overlay draws it, one under the other
    two = save_overlays([(imgs.images[0], amap, "t"), (imgs.images[1], -amap, "u")],
                        tmp_path / "two.png")
    one = np.asarray(Image.open(out).convert("RGB"))
    sheet = np.asarray(Image.open(two).convert("RGB"))
    height, width = one.shape[:2]
    assert sheet.shape[0] > 1.8 * height and sheet.shape[1] >= width
    np.testing.assert_array_equal(sheet[:height, :width], one)
    assert (sheet[height:2 * height, :width] != one).any()


def test_overlay_title_never_cut_off_and_has_a_colour_bar(tmp_path):
    """A long title (a pretrained spec, class and probability) is wrapped, not clipped: the
    picture's border is blank paper; the map gets a colour bar right of it."""
    imgs = _images()
    title = ("efficientnet-lite0,classes=imagenette: gradcam: English springer, English "
             "springer spaniel (p = 0.93, softmax)")
    pixels = np.asarray(Image.open(save_overlay(imgs.images[0], torch.rand(32, 32),
                                                tmp_path / "long.png", title)).convert("L"))
    for border in (pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]):
        assert (border == 255).all()                   # nothing drawn touches the edge
    # a column right of both panels holds the bar's colours (not grey: saturated pixels)
    rgb = np.asarray(Image.open(tmp_path / "long.png").convert("RGB")).astype(int)
    saturation = rgb.max(axis=2) - rgb.min(axis=2)
    assert (saturation[:, int(0.85 * rgb.shape[1]):] > 150).any()


def _chromium(*args, timeout=90):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is not installed")
    return subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_report_renders_in_chromium(report, tmp_path):
    path = report[0]
    shot = tmp_path / "shot.png"
    _chromium(f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
              "--window-size=1280,2000", path.resolve().as_uri())
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (2000, 1280)
    assert pixels.std() > 20                            # text, tables and plots, not blank

    dom = _chromium(f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom",
                    path.resolve().as_uri()).stdout
    page = _Page()
    page.feed(dom)
    main = next(t for t in page.tables if t and "PG gap recovered" in t[0])
    assert "kd+wcam" in [row[0] for row in main]


# --------------------------------------------------------------------------------------------
# The audit page
# --------------------------------------------------------------------------------------------

AUDIT_NAMES = ("teacher", "student <int8>")  # "<" must come out escaped


@pytest.fixture(scope="module")
def audit_pages(tmp_path_factory):
    """A self-audit and an audit against a randomized copy, 8 scenes, each with its page."""
    from torch.utils.data import DataLoader

    from attrpreserve.data import build_dataset
    from attrpreserve.evaluate import audit, randomize_model

    root = tmp_path_factory.mktemp("audit")
    torch.manual_seed(0)
    model = create_model("vgg", num_classes=8, width=4, input_size=32).eval()
    randomized = randomize_model(model, seed=1)
    data = build_dataset("scenes", "test", size=32, seed=0, n=8)
    loader = DataLoader(data, batch_size=8)
    out = {"data": data, "models": (model, randomized), "root": root}
    for name, other in (("self", model), ("random", randomized)):
        res = audit(model, other, loader, n_boot=50, top=4, progress=False)
        path = write_audit_report(res, root / f"{name}.html", model, other, data,
                                  names=AUDIT_NAMES)
        out[name] = (path, res, path.read_text(encoding="utf-8"))
    return out


def _text_of(page_html: str) -> str:
    """The page's visible text (entities decoded)."""
    class Text(HTMLParser):
        def __init__(self):
            super().__init__()
            self.parts = []

        def handle_data(self, data):
            self.parts.append(data)

    parser = Text()
    parser.feed(page_html)
    return " ".join(parser.parts)


def _words(page_html: str) -> str:
    """The visible text with single spaces, as a reader sees it ("<b>x</b>: y" -> "x: y")."""
    return " ".join(_text_of(page_html).split()).replace(" :", ":")


def _section_html(page_html: str, anchor: str) -> str:
    start = page_html.index(f'<section id="{anchor}">')
    return page_html[start:page_html.index("</section>", start)]


def test_audit_page_is_self_contained(audit_pages):
    for name in ("self", "random"):
        text = audit_pages[name][2]
        page = _Page()
        page.feed(text)
        assert "http://" not in text and "https://" not in text
        assert page.scripts == 0
        assert len(page.images) == 2                     # histogram, gallery
        for src in page.images:
            assert src.startswith("data:image/png;base64,")
            assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
        assert all(link.startswith(("#", "data:")) for link in page.links)
        assert "&lt;int8&gt;" in text and "<int8>" not in text


def test_audit_page_tables_and_gallery(audit_pages):
    _, res, text = audit_pages["random"]
    rep = res["explainers"]["gradcam"]
    page = _Page()
    page.feed(text)
    agreement = next(t for t in page.tables if t and t[0][:2] == ["metric", "mean"])
    rows = {r[0]: r for r in agreement[1:]}
    assert rows["Spearman"][1] == f"{rep['agreement']['spearman']['mean']:.3f}"
    assert rows["SSIM"][2] == f"{rep['agreement']['ssim']['ci_low']:.3f}"
    loc = next(t for t in page.tables if t and t[0][:3] == ["metric", *AUDIT_NAMES])
    assert [r[0] for r in loc[1:3]] == ["pointing game", "pointing game (15 px)"]
    assert loc[1][3] == f"{rep['localization']['pointing_game']['delta']:+.3f}"
    classes = audit_pages["data"].classes
    per_class = next(t for t in page.tables if t and t[0][:2] == ["class", "pairs"])
    assert [r[0] for r in per_class[1:]] == [classes[int(c)] for c in sorted(rep["per_class"],
                                                                             key=int)]

    gallery = _Page()
    gallery.feed(_section_html(text, "gallery"))
    assert len(gallery.images) == 1                      # image | A's map | B's map grid
    table = gallery.tables[0]
    header = table[0]
    moved = rep["most_moved"]
    assert [int(r[header.index("image")]) for r in table[1:]] == [m["index"] for m in moved]
    first = min(moved[0]["pairs"], key=lambda p: p["spearman"])
    assert table[1][header.index("explained class")] == classes[first["class"]]
    assert table[1][header.index("pair Spearman")] == f"{first['spearman']:.3f}"
    for col in ("teacher p", "student <int8> p"):        # both models' scores
        assert 0.0 <= float(table[1][header.index(col)]) <= 1.0


def test_audit_headline_perfect_and_moved(audit_pages):
    self_text = _text_of(audit_pages["self"][2])
    assert "Perfect agreement: student <int8>'s gradcam maps are identical to teacher's" \
        in self_text
    assert "No hidden disagreement" in self_text
    assert audit_headline(audit_pages["self"][1], "gradcam", AUDIT_NAMES)["perfect"]

    _, res, text = audit_pages["random"]
    rep = res["explainers"]["gradcam"]
    rho = rep["agreement"]["spearman"]["mean"]
    assert rho < 0.3
    words = _text_of(text)
    assert "Perfect agreement" not in words
    assert f"moved far from teacher's (mean Spearman {rho:.3f}" in words
    hidden = rep["hidden_disagreement"]
    share = hidden["share_low_among_same_decision"]["mean"]
    assert (f"Among {hidden['same_decision_pairs']} pairs where both models make the same "
            f"decision, {100 * share:.0f}%") in words


def test_audit_page_images_as_tensors_and_without_models_or_masks(audit_pages):
    import copy

    _, res, text = audit_pages["random"]
    root, data = audit_pages["root"], audit_pages["data"]
    model, randomized = audit_pages["models"]
    # every audited image in loader order as ReportImages: the same gallery as the dataset's
    items = [data[i] for i in range(len(data))]
    tensors = ReportImages(*(torch.stack([it[k] for it in items]) for k in range(3)))
    again = write_audit_report(res, root / "tensors.html", model, randomized, tensors,
                               names=AUDIT_NAMES).read_text(encoding="utf-8")
    gallery = [_Page(), _Page()]
    gallery[0].feed(_section_html(text, "gallery"))
    gallery[1].feed(_section_html(again, "gallery"))
    assert gallery[0].images == gallery[1].images

    bare = copy.deepcopy(res)                            # as if the data had no masks
    bare["localization"] = False
    bare["explainers"]["gradcam"]["localization"] = None
    for row in bare["explainers"]["gradcam"]["per_class"].values():
        for k in [k for k in row if isinstance(row[k], dict) and "delta" in row[k]]:
            del row[k]
    plain = write_audit_report(bare, root / "bare.html").read_text(encoding="utf-8")
    words = _text_of(plain)
    assert "Localisation against the masks" not in words and "localisation skipped" in words
    assert "Maps not drawn" in words and "Explanation forgotten (gradcam)" in words
    page = _Page()
    page.feed(plain)
    assert len(page.images) == 1                         # the histogram only
    broken = write_audit_report(res, root / "broken.html", model, randomized,
                                lambda i: (_ for _ in ()).throw(IndexError(i)))
    assert "Not drawn (gradcam): IndexError" in _text_of(broken.read_text(encoding="utf-8"))


def test_audit_page_renders_in_chromium(audit_pages, tmp_path):
    path = audit_pages["random"][0]
    shot = tmp_path / "shot.png"
    _chromium(f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
              "--window-size=1280,2000", path.resolve().as_uri())
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (2000, 1280)
    assert pixels.std() > 20


def test_premise_sentence_needs_kept_accuracy_and_moved_maps():
    """The headline says whether naive compression kept mAP within 2 points while its maps
    moved (a gap whose interval lies above 0), and if not, which half failed."""
    results = _results()
    first = headline(results)[0]["sentences"][1]  # after the agreement sentence
    assert first.startswith("The paper's premise does not hold for naive kd here: it lost "
                            "accuracy (mAP 0.410 vs the teacher's 0.700")
    assert "did not move" not in first  # Spearman's gap (0.8, CI 0.75-0.85) is above 0
    results["runs"][1]["task"]["mAP"] = 0.69
    first = headline(results)[0]["sentences"][1]  # after the agreement sentence
    assert first.startswith("The paper's premise holds for naive kd: it kept its accuracy")
    assert "Spearman agreement and pointing game gap above 0" in first
    for run in results["runs"][2:4]:  # no gap anywhere: the maps did not move
        gaps = run["attribution"]["gradcam"]["gap_recovered"]["all"]["pooled"]
        for entry in gaps.values():
            entry.update(status="no gap", gap_ci_low=-0.1)
    first = headline(results)[0]["sentences"][1]  # after the agreement sentence
    assert first.endswith("its gradcam maps did not move measurably (no Spearman or "
                          "pointing-game gap whose interval lies above 0).")


# --------------------------------------------------------------------------------------------
# A single-label page on photos without masks
# --------------------------------------------------------------------------------------------

def _photo_results():
    """A pretrained (softmax) teacher, an uncompressed copy of it, and a naive and a matched
    quantized run, evaluated on 10 photos of 3 of 1000 classes: no masks, so no
    localisation; scored by top-1."""
    names = [f"class {k}" for k in range(1000)]
    runs = []
    for name, method, matching, top1, rho in (("pretrained:lite0 (teacher)", "none", "none",
                                               0.9, None),
                                              ("pretrained:lite0", "none", "none", 0.9, 1.0),
                                              ("q8", "quantization", "none", 0.8, 0.7),
                                              ("q8+wcam", "quantization", "wcam", 0.8, 0.8)):
        att = {"pointing_game": None, "pointing_game_std": None, "auc": None, "energy_pg": None,
               "pointing_game_center_baseline": None, "auc_center_baseline": None,
               "pairs": 10, "predicted_pairs": 9, "per_class": {
                   "pairs": {"3": 4, "7": 6}, "auc": {"3": None, "7": None}}}
        if rho is not None:
            att["agreement"] = {"spearman": rho, "topk_iou": 0.5, "cosine": 0.9,
                                "argmax_agree": 0.6, "peak_distance": 5.0}
            att["pair_sets"] = {s: {"pairs": 10, "pooled": {"spearman": _ci(rho)},
                                    "class_balanced": {"spearman": _ci(rho)}}
                                for s in ("all", "teacher_correct")}
            att["per_class"]["spearman"] = {"3": rho, "7": rho}
        per_class_top1 = [None] * 1000
        per_class_top1[3], per_class_top1[7] = 0.75, top1
        runs.append({
            "name": name, "role": "teacher" if "teacher" in name else "compressed",
            "checkpoint": name, "compression": {"method": method, "matching": matching},
            "cost": {"params": 4652008, "nonzero_params": 4645881, "macs": 126637568,
                     "bytes": None, "latency_ms": 50.0},
            "task": {"scoring": "single-label", "mAP": None, "F1": None, "per_class_AP": [],
                     "top1": top1, "per_class_top1": per_class_top1,
                     **({"top1_agreement": top1} if rho is not None else {})},
            "attribution": {"gradcam": att},
            "training": {"best_epoch": None, "best_val_mAP": None}})
    runs[-1]["attribution"]["gradcam"]["gap_recovered"] = {
        "naive": "q8", **{s: {"pooled": {"spearman": _gap(1.0, 0.7, 0.8, (0.33, 0.1, 0.5))},
                              "class_balanced": {}} for s in ("all", "teacher_correct")}}
    return {"runs": runs, "seed": 0, "versions": {"attrpreserve": "0.1.0"},
            "dataset": {"spec": "images:photos", "size": 128, "seed": 0, "n_train": None,
                        "n_val": None, "n_test": 10, "batch_size": 32, "split": "test",
                        "images": 10, "classes": names}}


def test_single_label_page_without_masks(tmp_path):
    """Top-1 instead of mAP / F1; no localisation tables or charts, one line saying why; the
    pretrained reference named by role, its uncompressed copy not "naive"; per-class rows only
    for the classes evaluated."""
    from attrpreserve.report.figures import plotted_metrics

    results = _photo_results()
    text = write_report(results, tmp_path / "photos.html").read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    words = _words(text)
    agreement = next(t for t in page.tables if t and "Spearman" in t[0])
    header = agreement[0]
    assert "top-1" in header and "top-1 agreement" in header
    assert not any("mAP" in h or "F1" in h for h in header)
    assert "mAP and F1: not shown, single-label (softmax) models are scored by top-1" in words
    assert {row[0]: row[1] for row in agreement[1:]} == {
        "pretrained:lite0 (teacher)": "reference", "pretrained:lite0": "uncompressed",
        "q8": "naive", "q8+wcam": "matched (WCAM)"}
    assert not any("PG all" in t[0] or "PG (paper)" in t[0] for t in page.tables if t)
    assert "Localisation (gradcam): not shown, the evaluated images have no object masks or " \
           "boxes" in words
    assert "Localisation charts: not shown" in words
    assert [k for k, _ in plotted_metrics(results, "gradcam")] == [
        "top1", "top1_agreement", "spearman", "topk_iou"]
    assert "n/a" not in words
    cost = next(t for t in page.tables if t and "latency ms" in t[0])
    assert "bytes" not in cost[0] and "best val mAP" not in cost[0]  # no values: no column
    per_class = [t for t in page.tables if t and t[0][:1] == ["class"]]
    assert per_class and all([r[0] for r in t[1:]] == ["class 3", "class 7"]
                             for t in per_class)  # not 1000 rows of "–"
    q8 = next(h for h in headline(results) if h["recipe"] == "q8")
    assert "top-1 0.800 vs the teacher's 0.900" in q8["sentences"][1]
    assert "Runs by role" in words and "pretrained:lite0: uncompressed" in words


def test_single_label_page_renders_in_chromium(tmp_path):
    path = write_report(_photo_results(), tmp_path / "photos.html")
    shot = tmp_path / "shot.png"
    _chromium(f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
              "--window-size=1280,1600", path.resolve().as_uri())
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (1600, 1280) and pixels.std() > 20


def test_control_run_has_its_role_and_a_gap_column(tmp_path):
    """A fine-tune-only control is named by its role, belongs to no recipe, and matched runs
    show the share of the compression-caused gap they recover beside the teacher's."""
    from attrpreserve.report.words import role_of
    results = _results()
    control = _run("control", "kd", "none", 0.7, 0.8, 0.9, 0.85)
    control["role"] = "control"
    results["runs"].insert(1, control)
    wcam = next(r for r in results["runs"] if r["name"] == "kd+wcam")
    wcam["attribution"]["gradcam"]["gap_recovered_vs_control"] = {
        "naive": "kd", "level": "control",
        "all": {h: {"spearman": _gap(0.85, KD["rho"], KD_WCAM["rho"], (0.42, 0.3, 0.55))}
                for h in ("pooled", "class_balanced")}}
    assert role_of(results, control) == "control (fine-tuned only)"
    assert "control" not in {r["name"] for g in recipe_groups(results).values() for r in g}
    path = tmp_path / "r.html"
    write_report(results, path)
    text = path.read_text()
    assert "control (fine-tuned only)" in text and "beyond" in text and "42%" in text
