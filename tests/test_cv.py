"""The cross-validation engine (ferpipe.cv): plan selection, resume, keep, close."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ferpipe import cv
from ferpipe.foldio import FoldResult, fold_path, save_fold


def _plan(tmp_path, runs=2, folds=3):
    images = [f"images/i{i}.png" for i in range(12)]
    rows = []
    for proto in ("stratified", "subject"):
        for run in range(1, runs + 1):
            for fold in range(1, folds + 1):
                for k, im in enumerate(images):
                    g = (k + run) % folds + 1
                    role = "test" if g == fold else ("val" if g == fold % folds + 1 else "train")
                    rows.append({"protocol": proto, "run": run, "fold": fold, "image": im, "role": role})
    path = tmp_path / "plan.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path, pd.DataFrame({"path": images})


def _result(protocol, run, fold, chash, roles, paths):
    te = roles["test"]
    return FoldResult("m", protocol, run, fold, chash, images=[paths[i] for i in te], y_true=[0] * len(te),
                      y_pred=[0] * len(te), classes=("a", "b"))  # fmt: skip


def test_plan_folds_selects_and_names_bad_plans(tmp_path):
    plan, manifest = _plan(tmp_path)
    folds, full = cv.plan_folds(plan, manifest)
    assert len(folds) == 2 * 2 * 3 and len(full) == 12 * 12
    assert [f[:3] for f in folds[:4]] == [("stratified", 1, 1), ("stratified", 1, 2), ("stratified", 1, 3), ("stratified", 2, 1)]
    folds, _ = cv.plan_folds(plan, manifest, max_runs=1, max_folds=2)
    assert [f[:3] for f in folds] == [("stratified", 1, 1), ("stratified", 1, 2), ("subject", 1, 1), ("subject", 1, 2)]
    assert all(isinstance(r, np.ndarray) for r in folds[0][3].values())
    with pytest.raises(ValueError, match="not in the manifest"):
        cv.plan_folds(plan, manifest.iloc[1:])
    with pytest.raises(FileNotFoundError, match="split plan not found"):
        cv.plan_folds(tmp_path / "nope.csv", manifest)


def test_fold_run_resumes_keeps_and_closes_in_plan_order(tmp_path):
    plan, manifest = _plan(tmp_path)
    paths = manifest["path"].tolist()
    folds, _ = cv.plan_folds(plan, manifest, max_runs=1)
    out = tmp_path / "res"
    # earlier run: fold 1 finished with this config, fold 2 with another one, and a fold of
    # run 2 that the current selection no longer plans
    save_fold(out, _result(*folds[0][:3], "h", folds[0][3], paths))
    save_fold(out, _result(*folds[1][:3], "old", folds[1][3], paths))
    stale = _result("stratified", 2, 1, "h", folds[0][3], paths)
    save_fold(out, stale)
    fr = cv.FoldRun.open(out, folds, lambda *_: "h")
    assert [f[:3] for f in fr.todo] == [f[:3] for f in folds[1:]]  # fold 1 resumed, the other hash redone
    for f in reversed(fr.todo):  # results may arrive in any order
        fr.keep(_result(*f[:3], "h", f[3], paths))
    assert fold_path(out, *folds[-1][:3]).exists()  # kept = saved at once
    results = fr.close()
    assert [(r.protocol, r.run, r.fold) for r in results] == [f[:3] for f in folds]
    assert fr.n_new == len(folds) - 1
    assert not fold_path(out, "stratified", 2, 1).exists()  # no longer planned: removed
    assert cv.FoldRun.open(out, folds, lambda *_: "h").todo == []  # everything resumes now
