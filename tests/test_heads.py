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


def test_more_rows_than_features_takes_the_primal_side_with_the_same_head():
    """n > d: the basis comes from the d x d Gram matrix (cost linear in the rows); the head
    equals the one fitted on the row-space coordinates of the n x n route."""
    x, y = problem(3, n=200, d=12)
    space, z = heads.RowSpace.fit(x)
    assert space.basis.shape == (12, 12) and np.allclose(space(x), z, atol=1e-8)
    xs = (x - space.mu) / space.sd  # the n x n route, by hand
    eigval, eigvec = np.linalg.eigh(xs @ xs.T)
    keep = eigval > eigval.max() * 1e-10
    z_dual = eigvec[:, keep] * np.sqrt(eigval[keep])
    gram = z.T @ z  # orthogonal columns with the same energies as the n x n route's
    assert np.allclose(gram, np.diag(np.diag(gram)), atol=1e-6)
    assert np.allclose(np.sort(np.diag(gram)), np.sort(eigval[keep]), rtol=1e-8)
    primal = heads.fit_head(x, y, 1.0, 4, max_iter=3000, tol=1e-9)
    mask = torch.ones(1, len(x), dtype=torch.float64)
    dual = heads.fit_logistic(torch.from_numpy(z_dual)[None], torch.from_numpy(y)[None], mask, [1.0], 4,
                              max_iter=3000, tol=1e-9)  # fmt: skip
    p_primal = torch.softmax(torch.from_numpy(z @ primal[1] + primal[2]), 1).numpy()
    p_dual = dual.proba(0, 0, z_dual)
    assert np.abs(p_primal - p_dual).max() < 1e-4


def test_fold_heads_with_more_rows_than_features_keep_their_coordinates_small():
    x, y = problem(4, n=300, d=10)
    feats = x[None].astype(np.float32)
    folds = [heads.FoldHeadProblem(np.arange(0, 240), np.arange(240, 270), np.arange(270, 300))]
    (prob, info), = heads.fit_fold_heads(feats, y, folds, [0.1, 1.0], 4, pad_rows=240)
    assert prob.shape == (30, 4) and np.allclose(prob.sum(1), 1) and info["selected"]["val_accuracy"] > 0.4
