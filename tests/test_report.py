"""report stage on small generated aggregate outputs: self-contained HTML, renders in Chromium."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
from conftest import run_chromium
from PIL import Image

from ferpipe import aggregate, foldio, paper, report, tracking
from ferpipe.config import CLASSES


def fake_folds(root, method, protocol, seed, n_runs=2, n_folds=3):
    rng = np.random.default_rng(seed)
    for run in range(1, n_runs + 1):
        for fold in range(1, n_folds + 1):
            y = np.repeat(np.arange(len(CLASSES)), 2)
            pred = np.where(rng.random(len(y)) < 0.8, y, rng.integers(0, len(CLASSES), len(y)))
            r = foldio.FoldResult(method, protocol, run, fold, "h", [f"img{fold}_{i}.png" for i in range(len(y))],
                                  y.tolist(), pred.tolist())  # fmt: skip
            foldio.save_fold(root / method, r)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from conftest import write_params

    root = tmp_path_factory.mktemp("rep")
    for k, method in enumerate(["resnet50_frozen", "hwt"]):
        for j, proto in enumerate(["stratified", "subject"]):
            fake_folds(root / "train", method, proto, seed=10 * k + j)
    aggregate.aggregate([root / "train"], root / "agg", root / "metrics.json")  # summary.json + the PNGs
    counts = dict.fromkeys(CLASSES, 12)
    (root / "ingest_report.json").write_text(json.dumps({
        "dataset": "generated", "layout": "jaffe", "n_images": 84, "n_subjects": 4, "class_counts": counts,
        "dropped_labels": {}, "face_crop": "none", "faces_not_found": 0, "image_size": 32, "seconds": 0.5}))  # fmt: skip
    (root / "validation.json").write_text(json.dumps({
        "success": True, "failures": [], "duplicate_sources": [],
        "expectations": [{"expectation": "expect_column_to_exist", "success": True}] * 3}))  # fmt: skip
    (root / "split_summary.json").write_text(json.dumps({
        "params": {"protocols": ["stratified", "subject"], "n_runs": 2, "n_groups": 3, "seed": 7},
        "runs": {f"{p}/run0{r}": {"group_sizes": [28, 28, 28], "per_class_min": 4, "per_class_max": 4}
                 for p in ("stratified", "subject") for r in (1, 2)}}))  # fmt: skip
    (root / "train_summary.json").write_text(json.dumps({
        "method": "resnet50_frozen", "config_hash": "abc123", "config": {"mode": "frozen"},
        "n_computed": 12, "n_resumed": 0, "timings_s": {"features_s": 1.5, "total_s": 3.0}}))  # fmt: skip
    write_params(root / "params.yaml", train={"mode": "frozen", "image_size": 32, "taps": ["layer2:2", "layer3:2"], "spatial_image_size": 32}, split={"n_runs": 2})
    return root


def make_inputs(root, compare_dir=None) -> report.Inputs:
    return report.Inputs(ingest_report=root / "ingest_report.json", validation=root / "validation.json",
                         split_summary=root / "split_summary.json", aggregate=root / "agg",
                         compare=compare_dir or root / "no_compare", train_summary=root / "train_summary.json",
                         final_model=root / "no_final_model", params=[root / "params.yaml"],
                         data_dvc=root / "data.dvc", mlflow_record=root / "no_mlflow.json")  # fmt: skip


@pytest.fixture(scope="module")
def built(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "report"
    info = report.write_report(make_inputs(inputs), out)
    return out, info


IMG_SRC = re.compile(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", re.I)


def test_html_is_self_contained(built):
    out, info = built
    page = (out / "report.html").read_text()
    assert not re.search(r"https?://", page, re.I), "no http(s) URL anywhere (no CDN, no external resource)"
    assert not re.search(r"<(script|link|iframe|object|embed|base)\b", page, re.I)
    assert not re.search(r"url\(|@import", page, re.I)
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    for attr, value in re.findall(r"\b(src|href|srcset|action)=\"([^\"]*)\"", page):
        assert (attr == "src" and value.startswith("data:image/png;base64,")) or (attr == "href" and value.startswith("#"))
    srcs = IMG_SRC.findall(page)
    assert len(srcs) == info["n_figures"] >= 2 + 2 * 4 + 2 * 2  # paper-vs-ours + resnet 4/protocol + hwt 2/protocol
    for src in srcs:
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            im.verify()
            assert im.format == "PNG"


def test_contents_paper_next_to_ours_and_protocol_note(built, inputs):
    out, info = built
    page = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    s = json.loads((inputs / "agg" / "resnet50_frozen" / "stratified" / "summary.json").read_text())
    for text in (page, md):
        assert "95.39 ± 1.41" in text and "93.29" in text and "98.43" in text  # paper Table 2
        assert "95.50 ± 2.32" in text and "94.10 ± 4.15" in text  # paper Table 1 totals
        assert "78.37 ± 1.50" in text and "89.49 ± 0.76" in text and "93.79 ± 1.24" in text  # Table 3
        assert f"{s['oa_mean']:.2f} ± {s['oa_std']:.2f}" in text  # ours
        assert "Protocol differences" in text and "person-independent" in text
        assert "compare stage output" in text  # absent compare is said, not an error
        assert "PASSED" in text and "abc123" in text
    assert paper.DATASET_NOTE in md
    for name in re.findall(r"\]\(figures/([^)]+)\)", md):
        assert (out / "figures" / name).is_file()
    assert info["compare_included"] is False


def test_compare_outputs_are_included_when_present(inputs, tmp_path):
    comp = tmp_path / "compare"
    comp.mkdir()
    summ = json.loads((inputs / "agg" / "resnet50_frozen" / "stratified" / "summary.json").read_text())
    methods = [{"method": "hwt", "oa_mean": 61.0, "oa_std": 2.0, "n_runs": 2, "published_oa": 78.37, "published_std": 1.5,
                "sensitivity_mean": dict.fromkeys(CLASSES, 61.0)},
               {"method": "resnet50_frozen", "oa_mean": summ["oa_mean"], "oa_std": summ["oa_std"], "n_runs": 2,
                "published_oa": 95.39, "published_std": 1.41, "sensitivity_mean": summ["sensitivity_mean"]}]  # fmt: skip
    tests = {"resnet50_frozen vs hwt": {"n_runs": 2, "mean_difference": 3.21, "wilcoxon_p": 0.5, "ttest_p": 0.0004}}
    (comp / "compare.json").write_text(json.dumps({"stratified": {"methods": methods, "paired_tests": tests}}))
    buf = io.BytesIO()
    Image.new("RGB", (50, 30), (200, 30, 30)).save(buf, format="PNG")
    (comp / "compare_oa.png").write_bytes(buf.getvalue())
    info = report.write_report(make_inputs(inputs, comp), tmp_path / "report")
    page = (tmp_path / "report" / "report.html").read_text()
    assert info["compare_included"] and "Wilcoxon" in page and "+3.21" in page and "4.00e-04" in page
    assert base64.b64encode(buf.getvalue()).decode() in page
    assert "compare stage output" not in page


def test_cli_logs_to_the_parent_run_and_fails_cleanly(inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("FERPIPE_MLFLOW_ARTIFACTS", str(tmp_path / "mlartifacts"))
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    parent = tracking.start_parent({"report": {"x": 1}}, name="pipeline-test")
    (tmp_path / "mlflow.json").write_text(json.dumps({"parent_run_id": parent}))
    args = ["--ingest-report", str(inputs / "ingest_report.json"), "--validation", str(inputs / "validation.json"),
            "--split-summary", str(inputs / "split_summary.json"), "--aggregate", str(inputs / "agg"),
            "--compare", str(tmp_path / "nothing"), "--train-summary", str(inputs / "train_summary.json"),
            "--final-model", str(tmp_path / "nothing"), "--params", str(inputs / "params.yaml"),
            "--mlflow-record", str(tmp_path / "mlflow.json"), "--out", str(tmp_path / "r")]  # fmt: skip
    assert report.main(args) == 0
    assert "compare absent" in capsys.readouterr().out
    names = {a.path for a in tracking.client().list_artifacts(parent, "report")}
    assert names == {"report/report.html", "report/report.md"}
    bad = [*args[:7], str(tmp_path / "no_agg"), *args[8:]]
    assert report.main(bad) == 2 and "aggregate" in capsys.readouterr().err


# ---------------------------------------------------------------- headless Chromium
CHECK = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0 && i.naturalHeight > 0); });
  var el = document.createElement('div');
  el.id = 'img-check';
  el.setAttribute('data-total', String(imgs.length));
  el.setAttribute('data-ok', String(imgs.length - bad.length));
  el.setAttribute('data-resources', String(performance.getEntriesByType('resource').length));
  el.textContent = JSON.stringify(bad.map(function (i) { return i.alt; }));
  document.body.appendChild(el);
});
</script>"""


def test_renders_in_headless_chromium_with_every_image(built, chromium, tmp_path):
    out, info = built
    page = (out / "report.html").read_text()
    # a copy with a tiny inline checker (the report itself has no script; its CSP forbids them)
    probe = page.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';", 1)
    probe = probe.replace("</body>", CHECK + "</body>", 1)
    (tmp_path / "probe.html").write_text(probe)
    r = run_chromium(chromium, tmp_path, "--virtual-time-budget=15000", "--dump-dom",
                     (tmp_path / "probe.html").as_uri())  # fmt: skip
    m = re.search(r'id="img-check" data-total="(\d+)" data-ok="(\d+)" data-resources="(\d+)">([^<]*)<', r.stdout)
    assert m, f"the load check did not run:\n{r.stdout[:500]}\n{r.stderr[-1500:]}"
    total, ok, resources = int(m[1]), int(m[2]), int(m[3])
    assert total == info["n_figures"] and ok == total, f"images that did not load: {m[4]}"
    assert resources == 0, "the page fetched a resource"

    # the unmodified report, rendered: a real page, not a blank one
    shot = tmp_path / "shot.png"
    run_chromium(chromium, tmp_path, "--hide-scrollbars", "--window-size=1200,3000", f"--screenshot={shot}",
                 (out / "report.html").as_uri())  # fmt: skip
    with Image.open(shot) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32)
    assert arr.shape[:2] == (3000, 1200)
    non_white = (arr.min(axis=2) < 235).mean()
    assert arr.std() > 20 and non_white > 0.02, f"blank-looking screenshot (std {arr.std():.1f}, ink {non_white:.3f})"
