"""The batched softmax-head solver against scikit-learn's LogisticRegression (same objective)."""

import numpy as np
import pytest
import torch

from ferpipe import heads


def problem(seed, n=60, d=30, classes=4):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1.5, (classes, d))
    y = np.arange(n) % classes
    x = centers[y] + rng.normal(0, 2.0, (n, d))
    return x, y


@pytest.mark.parametrize("c", [0.01, 1.0, 10.0])
def test_one_head_matches_sklearn_at_its_optimum(c):
    from sklearn.linear_model import LogisticRegression

    x, y = problem(0)
    space, W, b, info = heads.fit_head(x, y, c, 4, max_iter=2000, tol=1e-8)
    assert info["converged"]
    ref = LogisticRegression(C=c, tol=1e-12, max_iter=20000).fit(space(x), y)
    ours = space(x) @ W + b
    assert np.abs(ours - ref.decision_function(space(x))).max() < 1e-3 * max(1.0, np.abs(ours).max())


def test_a_fold_head_does_not_depend_on_its_batch():
    # the same fold, solved alone and beside others, gives the same bits (fold fan-out relies on it)
    x, y = problem(1, n=90)
    feats = x[None].astype(np.float32)
    folds = [heads.FoldHeadProblem(np.arange(s, s + 60) % 90, np.arange(s + 60, s + 75) % 90,
                                   np.arange(s + 75, s + 90) % 90) for s in (0, 15, 30)]  # fmt: skip
    together = heads.fit_fold_heads(feats, y, folds, [0.1, 1.0], 4, pad_rows=64)
    alone = heads.fit_fold_heads(feats, y, folds[1:2], [0.1, 1.0], 4, pad_rows=64)
    assert np.array_equal(together[1][0], alone[0][0])
    assert together[1][1]["selected"] == alone[0][1]["selected"]


def test_selection_reports_the_grid_edge():
    x, y = problem(2, n=90)
    folds = [heads.FoldHeadProblem(np.arange(60), np.arange(60, 75), np.arange(75, 90))]
    (_, info), = heads.fit_fold_heads(x[None], y, folds, [1e-4, 1e-3], 4, pad_rows=64)
    assert info["selected"]["at_grid_edge"] is True and info["solver"]["converged"] == [True, True]


def test_padding_overflow_is_named():
    x, y = problem(3)
    folds = [heads.FoldHeadProblem(np.arange(50), np.arange(50, 55), np.arange(55, 60))]
    with pytest.raises(ValueError, match="50 training rows exceed pad_rows=40"):
        heads.fit_fold_heads(x[None], y, folds, [1.0], 4, pad_rows=40)


def test_solver_stops_on_the_gradient_test():
    x, y = problem(4)
    space, z = heads.RowSpace.fit(x)
    sol = heads.fit_logistic(torch.from_numpy(z)[None], torch.from_numpy(y)[None], torch.ones(1, len(y), dtype=torch.float64),
                             [1.0], 4, tol=1e-7)  # fmt: skip
    assert sol.converged.all() and 5 < sol.iterations[0, 0] < 1000
