import json

import numpy as np

from ferpipe import compare, readme
from ferpipe.aggregate import aggregate
from ferpipe.foldio import FoldResult, save_fold


def fake_results(root, method, acc_by_run, n_runs=4, n_folds=3, seed=0):
    rng = np.random.default_rng(seed)
    for proto in ("stratified", "subject"):
        for r in range(1, n_runs + 1):
            for f in range(1, n_folds + 1):
                y = rng.integers(0, 7, 30)
                pred = np.where(rng.random(30) < acc_by_run + 0.02 * r, y, (y + 1) % 7)
                save_fold(root / method, FoldResult(method, proto, r, f, "h", [f"i{k}" for k in range(30)],
                                                    y.tolist(), pred.tolist()))  # fmt: skip


def test_compare_table_tests_and_chart(tmp_path):
    fake_results(tmp_path / "res", "resnet50_frozen", 0.8)
    fake_results(tmp_path / "res", "hwt", 0.5, seed=1)
    fake_results(tmp_path / "res", "cso", 0.4, seed=2)
    aggregate([tmp_path / "res"], tmp_path / "agg", tmp_path / "m.json", make_plots=False)
    rc = compare.main(["--aggregate", str(tmp_path / "agg"), "--out", str(tmp_path / "cmp"),
                       "--metrics", str(tmp_path / "cmp.json")])  # fmt: skip
    assert rc == 0
    res = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    rows = {r["method"]: r for r in res["stratified"]["methods"]}
    assert rows["hwt"]["published_oa"] == 78.37 and rows["resnet50_frozen"]["published_oa"] == 95.39
    t = res["stratified"]["paired_tests"]["resnet50_frozen vs hwt"]
    assert t["n_runs"] == 4 and t["mean_difference"] > 10 and 0 < t["ttest_p"] < 0.05
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| hwt | 78.37 ± 1.50 |" in md and "Wilcoxon" in md
    assert (tmp_path / "cmp" / "compare_oa.png").stat().st_size > 1000


def test_paired_tests_edge_cases():
    assert compare.paired_tests([80.0], [70.0])["ttest_p"] is None
    assert compare.paired_tests([80.0, 81.0], [80.0, 81.0])["wilcoxon_p"] == 1.0


def test_readme_results_block_is_generated_from_committed_metrics():
    # README numbers must come from metrics/*.json, never be typed by hand
    assert readme.main(["--check"]) == 0
