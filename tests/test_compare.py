import json
import subprocess
from pathlib import Path

import numpy as np

from ferpipe import compare, readme
from ferpipe.aggregate import aggregate
from ferpipe.foldio import FoldResult, save_fold


def fake_results(root, method, acc_by_run, n_runs=4, n_folds=3, seed=0):
    rng = np.random.default_rng(seed)
    for proto in ("stratified", "subject"):
        for r in range(1, n_runs + 1):
            perm = np.random.default_rng(r).permutation(30 * n_folds)  # a new split each run, same images
            for f in range(1, n_folds + 1):
                y = rng.integers(0, 7, 30)
                pred = np.where(rng.random(30) < acc_by_run + 0.02 * r, y, (y + 1) % 7)
                save_fold(root / method, FoldResult(method, proto, r, f, "h", [f"i{k}" for k in perm[(f - 1) * 30 : f * 30]],
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
    assert t["n_distinct_groupings"] == 4 and t["n_folds"] == 12 and t["corrected_p"] < 0.05
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| hwt | 78.37 ± 1.50 |" in md and "corrected t p" in md and "significant (corrected p < 0.05)" in md
    assert (tmp_path / "cmp" / "compare_oa.png").stat().st_size > 1000


def test_paired_tests_edge_cases():
    assert compare.paired_tests([80.0], [70.0])["ttest_p"] is None
    assert compare.paired_tests([80.0, 81.0], [80.0, 81.0])["wilcoxon_p"] == 1.0


def test_readme_results_block_is_generated_from_committed_metrics(tmp_path):
    # README numbers must come from metrics/*.json, never be typed by hand. The committed
    # files (HEAD), not the workspace's: `make run` on another CPU (bf16 vs fp32 features)
    # rewrites metrics/metrics.json within the gate's tolerance before the tests run.
    root = Path(__file__).resolve().parents[1]
    names = subprocess.run(["git", "ls-files", "metrics/*.json"], cwd=root, capture_output=True, text=True,
                           check=True).stdout.split()  # fmt: skip
    assert "metrics/metrics.json" in names
    for name in names:
        blob = subprocess.run(["git", "show", f"HEAD:{name}"], cwd=root, capture_output=True, check=True).stdout
        (tmp_path / Path(name).name).write_bytes(blob)
    assert readme.main(["--check", "--readme", str(root / "README.md"), "--metrics-dir", str(tmp_path)]) == 0


def summary_for(runs, fold_acc, grouping, ratio=0.125):
    oa = [float(np.mean(f)) for f in fold_acc]
    return {"runs": runs, "oa_per_run": oa, "fold_accuracy_per_run": fold_acc, "grouping_per_run": grouping,
            "test_train_ratio": ratio, "oa_mean": float(np.mean(oa)), "oa_std": float(np.std(oa, ddof=1))}


def test_corrected_test_is_not_fooled_by_repeated_cv():
    # 10 runs of 10 folds: a small consistent run-level edge with large fold-level noise.
    # Runs average the noise away, so the plain paired t over runs is "significant"; the
    # corrected resampled t-test (folds share training data) is not.
    rng = np.random.default_rng(3)
    base = rng.normal(80, 8, (10, 10))
    a = summary_for(list(range(1, 11)), (base + 1.5 + rng.normal(0, 6, (10, 10))).tolist(), [f"g{r}" for r in range(10)])
    b = summary_for(list(range(1, 11)), base.tolist(), [f"g{r}" for r in range(10)])
    t = compare.compare_pair(a, b)
    assert t["ttest_p"] < 0.05 and t["corrected_p"] > 0.05
    assert t["n_distinct_groupings"] == 10 and "no significant difference" in t["verdict"]


def test_repeated_split_counts_once_and_other_splits_are_not_paired():
    folds = [[90.0, 80.0, 70.0]] * 4
    a = summary_for([1, 2, 3, 4], folds, ["same"] * 4)
    b = summary_for([1, 2, 3, 4], [[60.0, 50.0, 55.0]] * 4, ["same"] * 4)
    t = compare.compare_pair(a, b)
    assert t["n_distinct_groupings"] == 1 and t["n_runs"] == 1 and t["ttest_p"] is None  # not 4 samples
    assert t["n_folds"] == 3 and t["corrected_p"] is not None
    c = summary_for([1, 2, 3, 4], [[60.0, 50.0, 55.0]] * 4, ["other"] * 4)
    t2 = compare.compare_pair(a, c)
    assert t2["n_runs_paired"] == 0 and t2["verdict"].startswith("not paired")
