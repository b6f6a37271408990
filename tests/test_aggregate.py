"""aggregate refuses results that are not whole runs of one configuration (named errors)."""

import numpy as np
import pytest

from ferpipe.aggregate import aggregate
from ferpipe.foldio import FoldResult, fold_path, save_fold


def write_runs(root, n_runs=2, n_folds=3, chash="h", images=lambda run, fold: [f"g{fold}_{k}" for k in range(5)]):
    rng = np.random.default_rng(0)
    for r in range(1, n_runs + 1):
        for f in range(1, n_folds + 1):
            y = rng.integers(0, 7, 5).tolist()
            save_fold(root / "hwt", FoldResult("hwt", "stratified", r, f, chash, images(r, f), y, y))


def run_aggregate(tmp_path):
    return aggregate([tmp_path / "res"], tmp_path / "agg", tmp_path / "m.json", make_plots=False)


def test_whole_runs_aggregate(tmp_path):
    write_runs(tmp_path / "res")
    assert run_aggregate(tmp_path)  # the valid case passes: the checks below can tell them apart


def test_missing_fold_is_named(tmp_path):
    write_runs(tmp_path / "res")
    fold_path(tmp_path / "res" / "hwt", "stratified", 2, 2).unlink()
    with pytest.raises(ValueError, match=r"hwt/stratified: run 2 lacks fold\(s\) \[2\] of 3"):
        run_aggregate(tmp_path)


def test_mixed_configurations_are_refused(tmp_path):
    write_runs(tmp_path / "res")
    save_fold(tmp_path / "res" / "hwt", FoldResult("hwt", "stratified", 1, 1, "other", ["g1_0"], [0], [0]))
    with pytest.raises(ValueError, match="2 different configurations"):
        run_aggregate(tmp_path)


def test_image_tested_twice_in_a_run_is_refused(tmp_path):
    write_runs(tmp_path / "res", images=lambda run, fold: [f"same_{k}" for k in range(5)])
    with pytest.raises(ValueError, match="run 1 fold 2 tests 5 image"):
        run_aggregate(tmp_path)


def test_runs_from_different_plans_are_refused(tmp_path):
    write_runs(tmp_path / "res", images=lambda run, fold: [f"r{run}g{fold}_{k}" for k in range(5)])
    with pytest.raises(ValueError, match="run 2 tests other images than run 1"):
        run_aggregate(tmp_path)


def test_under_trained_folds_are_counted_and_flagged(tmp_path, capsys):
    rng = np.random.default_rng(1)
    for f in range(1, 4):
        y = rng.integers(0, 7, 5).tolist()
        fit = {"train_accuracy": 0.8 if f < 3 else 0.99}
        save_fold(tmp_path / "res" / "cso", FoldResult("cso", "stratified", 1, f, "h", [f"g{f}_{k}" for k in range(5)],
                                                      y, y, extra={"selected": fit}))  # fmt: skip
    aggregate([tmp_path / "res"], tmp_path / "agg", tmp_path / "m.json", make_plots=False)
    import json

    s = json.loads((tmp_path / "agg" / "cso" / "stratified" / "summary.json").read_text())
    assert s["training_accuracy"]["n_folds_below"] == 2 and s["training_accuracy"]["of"] == 3
    assert "training accuracy below 0.95 in 2/3 folds" in capsys.readouterr().err
