"""ferpipe.evidence: McNemar on generated per-image outcomes, same-fold checks, the metrics file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from ferpipe import evidence
from ferpipe.foldio import FoldResult, save_fold


def test_mcnemar_exact_counts_discordant_images_and_matches_the_binomial():
    a = np.array([True] * 30 + [True] * 12 + [False] * 3 + [False] * 5)
    b = np.array([True] * 30 + [False] * 12 + [True] * 3 + [False] * 5)
    t = evidence.mcnemar_exact(a, b)
    assert (t["only_a_right"], t["only_b_right"], t["n_images"]) == (12, 3, 50)
    assert t["mcnemar_exact_p"] == pytest.approx(stats.binomtest(12, 15, 0.5).pvalue)
    assert t["mcnemar_exact_p"] < 0.05
    # agreement on every image: nothing to test, p = 1
    assert evidence.mcnemar_exact(a, a)["mcnemar_exact_p"] == 1.0


def write_method(root, method, correct_by_fold, folds_images, protocol="stratified", run=1):
    for fold, (imgs, right) in enumerate(zip(folds_images, correct_by_fold, strict=True), start=1):
        y = [i % 7 for i in range(len(imgs))]
        pred = [t if ok else (t + 1) % 7 for t, ok in zip(y, right, strict=True)]
        save_fold(root / method, FoldResult(method, protocol, run, fold, "h", imgs, y, pred))
    return root / method


def test_build_tests_each_method_on_the_same_images(tmp_path):
    folds = [[f"img{f}_{i}.png" for i in range(20)] for f in range(3)]
    ft = write_method(tmp_path, "resnet50_finetune", [[True] * 20] * 3, folds)
    other = write_method(tmp_path, "hwt", [[i % 2 == 0 for i in range(20)]] * 3, folds)
    out = evidence.build(ft, [other], None)
    t = out["comparisons"]["stratified"]["hwt"]
    assert (t["only_a_right"], t["only_b_right"]) == (30, 0)
    assert t["oa_finetune"] == 100 and t["oa_other"] == 50
    assert t["verdict"].startswith("fine-tuned higher, significant")
    s = out["resnet50_finetune"]["stratified"]
    assert s["oa_mean"] == 100 and s["n_runs"] == 1 and s["n_folds"] == 3
    json.dumps(out)  # the metrics file is plain JSON


def test_other_folds_are_refused_with_the_method_named(tmp_path):
    folds = [[f"img{f}_{i}.png" for i in range(10)] for f in range(2)]
    ft = write_method(tmp_path, "resnet50_finetune", [[True] * 10] * 2, folds)
    swapped = [folds[0][:5] + folds[1][:5], folds[0][5:] + folds[1][5:]]
    other = write_method(tmp_path, "cso", [[True] * 10] * 2, swapped)
    with pytest.raises(ValueError, match="cso has no run with the fine-tuned model's test folds"):
        evidence.build(ft, [other], None)


def test_missing_results_name_the_folder(tmp_path, capsys):
    rc = evidence.main(["--finetune", str(tmp_path / "nope"), "--compare-with", str(tmp_path), "--out",
                        str(tmp_path / "m.json")])  # fmt: skip
    assert rc == 2
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()


def test_an_interrupted_fine_tune_is_refused_not_summarised(tmp_path):
    folds = [[f"img{f}_{i}.png" for i in range(10)] for f in range(3)]
    ft = write_method(tmp_path, "resnet50_finetune", [[True] * 10] * 3, folds)
    other = write_method(tmp_path, "hwt", [[True] * 10] * 3, folds)
    (ft / "stratified" / "run01_fold02.json").unlink()  # killed before fold 2 finished
    with pytest.raises(ValueError, match=r"resnet50_finetune/stratified: run 1 lacks fold\(s\) \[2\]"):
        evidence.build(ft, [other], None)
