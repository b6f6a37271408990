"""Softmax heads on frozen features: many folds x many C values fitted in one batched solve.

Each head is scikit-learn's multinomial ``LogisticRegression`` objective (intercept not
penalised), divided by C * n so that problems of any size share one scale::

    f(W, b) = mean_i CE(softmax(x_i W + b), y_i) + ||W||^2 / (2 C n)

- **Row space.** Features are standardised on the fold's training rows, then mapped onto
  the row space of that matrix: with an L2 penalty the optimal W lies in it (representer
  theorem), so k <= min(n, d) coordinates give exactly the d-dimensional model. The columns
  there are orthogonal, so a diagonal preconditioner fits the Hessian well. The basis comes
  from the smaller of the two Gram matrices: the n x n one while rows are fewer than
  features (JAFFE: 340 rows, 2,048-18,432 features), the d x d one (the primal side) once
  rows outnumber features, so the cost grows linearly with the rows instead of as n^2-n^3.
- **Batched L-BFGS.** Every problem keeps its own history, step and stopping test; the
  batch only shares the matrix products. A problem's iterates therefore do not depend on
  which other folds share its batch (the fold fan-out gives the same heads as one batch).
  Rows and columns are zero-padded to sizes fixed by the caller, so padding never changes
  the arithmetic of a problem either.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .metrics import accuracy_and_log_loss


@dataclasses.dataclass
class RowSpace:
    """Standardise with the training rows' mean/std, then project onto their row space."""

    mu: np.ndarray  # (d,)
    sd: np.ndarray  # (d,)
    basis: np.ndarray  # (d, k), orthonormal columns

    @classmethod
    def fit(cls, x_train: np.ndarray) -> tuple[RowSpace, np.ndarray]:
        """-> (the map, the training rows in it). Those rows are V sqrt(lambda) of the Gram
        matrix's eigen-decomposition: orthogonal columns, no second product needed."""
        x = np.asarray(x_train, dtype=np.float64)
        mu, sd = x.mean(0), x.std(0) + 1e-6
        xs = (x - mu) / sd
        if xs.shape[0] > xs.shape[1]:  # primal side: the d x d Gram matrix, linear in the rows
            eigval, eigvec = np.linalg.eigh(xs.T @ xs)
            keep = eigval > eigval.max() * 1e-10
            basis = eigvec[:, keep]
            return cls(mu, sd, basis), xs @ basis
        eigval, eigvec = np.linalg.eigh(xs @ xs.T)
        keep = eigval > eigval.max() * 1e-10
        root = np.sqrt(eigval[keep])
        return cls(mu, sd, xs.T @ (eigvec[:, keep] / root)), eigvec[:, keep] * root

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float64) - self.mu) / self.sd) @ self.basis

    @property
    def dim(self) -> int:
        return self.basis.shape[1]


@dataclasses.dataclass
class BatchedLogistic:
    """The solution of F folds x G C values: W (F, G, K, C) and b (F, G, C), float64."""

    W: torch.Tensor
    b: torch.Tensor
    iterations: np.ndarray  # (F, G) L-BFGS iterations until the stopping test held
    converged: np.ndarray  # (F, G) bool: max |gradient| <= tol before max_iter

    def proba(self, f: int, g: int, z: np.ndarray) -> np.ndarray:
        """Class probabilities of fold f's head g for row-space inputs z (n, k)."""
        k = z.shape[1]
        logits = torch.from_numpy(z) @ self.W[f, g, :k] + self.b[f, g]
        return torch.softmax(logits, -1).numpy()


def fit_logistic(z: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, c_grid: list[float], n_classes: int,
                 max_iter: int = 1000, tol: float = 1e-5, history: int = 10) -> BatchedLogistic:  # fmt: skip
    """Fit softmax heads for F padded problems at every C of ``c_grid``.

    z: (F, N, K) float64 row-space inputs, zero rows/columns as padding; y: (F, N) int64;
    mask: (F, N) float64, 1 for real rows, 0 for padding.
    """
    F_, N, K = z.shape
    G, C = len(c_grid), n_classes
    n = mask.sum(1)  # (F,)
    reg = 1.0 / (torch.tensor(c_grid, dtype=z.dtype)[None, :] * n[:, None])  # (F, G)
    colsq = (z * z * mask[..., None]).sum(1)  # (F, K): the row-space Gram matrix is diagonal
    # diagonal preconditioner ~ sqrt(diag of the Hessian) (softmax curvature <= 1/4 per row)
    scale = torch.sqrt(colsq[:, None, :] / (4 * n[:, None, None]) + reg[..., None])  # (F, G, K)
    onehot = torch.nn.functional.one_hot(y, C).to(z.dtype) * mask[..., None]  # (F, N, C)
    P = K * C + C

    def unpack(x):
        W = x[..., : K * C].reshape(F_, G, K, C) / scale[..., None]
        return W, x[..., K * C :]

    zt = z.transpose(1, 2).contiguous()

    def objective(x):  # x (F, G, P) -> f (F, G), gradient (F, G, P); problems are independent
        W, b = unpack(x)
        logits = z @ W.permute(0, 2, 1, 3).reshape(F_, K, G * C)  # one pass over z for all C
        logits = logits.reshape(F_, N, G, C).permute(0, 2, 1, 3) + b[:, :, None, :]  # (F, G, N, C)
        shifted = logits - logits.amax(-1, keepdim=True)
        e = shifted.exp()
        total = e.sum(-1, keepdim=True)
        nll = ((total.log() - shifted) * onehot[:, None]).sum((2, 3)) / n[:, None]
        f = nll + 0.5 * reg * (W * W).sum((2, 3))
        dlogits = (e / total * mask[:, None, :, None] - onehot[:, None]) / n[:, None, None, None]
        d2 = dlogits.permute(0, 2, 1, 3).reshape(F_, N, G * C)
        gW = (zt @ d2).reshape(F_, K, G, C).permute(0, 2, 1, 3) + reg[..., None, None] * W
        gU = (gW / scale[..., None]).reshape(F_, G, K * C)
        return f, torch.cat([gU, dlogits.sum(2)], -1)

    x = torch.zeros(F_, G, P, dtype=z.dtype)
    f, g = objective(x)
    S = torch.zeros(history, F_, G, P, dtype=z.dtype)
    Yh = torch.zeros_like(S)
    rho = torch.zeros(history, F_, G, dtype=z.dtype)
    gamma = torch.ones(F_, G, dtype=z.dtype)
    iterations = torch.zeros(F_, G, dtype=torch.long)
    active = g.abs().amax(-1) > tol
    for it in range(max_iter):
        if not active.any():
            break
        # two-loop recursion; slots ordered newest first, invalid slots have rho = 0
        q = g.clone()
        alpha = torch.zeros(history, F_, G, dtype=z.dtype)
        order = [(it - 1 - j) % history for j in range(history)]
        for j in order:
            alpha[j] = rho[j] * (S[j] * q).sum(-1)
            q -= alpha[j][..., None] * Yh[j]
        r = gamma[..., None] * q
        for j in reversed(order):
            beta = rho[j] * (Yh[j] * r).sum(-1)
            r += S[j] * (alpha[j] - beta)[..., None]
        d = -r
        gd = (g * d).sum(-1)
        bad = gd >= 0  # not a descent direction: fall back to steepest descent
        d = torch.where(bad[..., None], -g, d)
        gd = torch.where(bad, -(g * g).sum(-1), gd)
        # Armijo backtracking, per problem
        t = torch.ones(F_, G, dtype=z.dtype)
        pending = active.clone()
        x_new, f_new, g_new = x.clone(), f.clone(), g.clone()
        for _ in range(20):
            x_try = x + t[..., None] * d
            f_try, g_try = objective(x_try)
            ok = pending & (f_try <= f + 1e-4 * t * gd)
            x_new[ok], f_new[ok], g_new[ok] = x_try[ok], f_try[ok], g_try[ok]
            pending &= ~ok
            if not pending.any():
                break
            t = torch.where(pending, t * 0.5, t)
        stalled = pending  # no decrease found: at the floating-point floor
        s, yv = x_new - x, g_new - g
        sy, yy = (s * yv).sum(-1), (yv * yv).sum(-1)
        good = active & ~stalled & (sy > 1e-12 * yy.clamp_min(1e-300))
        slot = it % history
        S[slot] = torch.where(good[..., None], s, torch.zeros_like(s))
        Yh[slot] = torch.where(good[..., None], yv, torch.zeros_like(yv))
        rho[slot] = torch.where(good, 1.0 / sy.where(good, torch.ones_like(sy)), torch.zeros_like(sy))
        gamma = torch.where(good, sy / yy.where(good, torch.ones_like(yy)), gamma)
        x, f, g = x_new, f_new, g_new
        iterations += active.long()
        active = active & ~stalled & (g.abs().amax(-1) > tol)
    converged = g.abs().amax(-1) <= tol
    W, b = unpack(x)
    return BatchedLogistic(W, b, iterations.numpy(), converged.numpy())


@dataclasses.dataclass
class FoldHeadProblem:
    """One fold of frozen features: train rows fit the head, val rows choose C, test rows are scored."""

    train: np.ndarray  # image indices
    val: np.ndarray
    test: np.ndarray


def fit_fold_heads(feats: np.ndarray, y: np.ndarray, folds: list[FoldHeadProblem], c_grid: list[float],
                   n_classes: int, pad_rows: int, max_iter: int = 1000, tol: float = 1e-5) -> list[tuple[np.ndarray, dict]]:  # fmt: skip
    """Heads for every fold at every C; C chosen per fold on its validation group (accuracy,
    then log-loss). feats: (views, N, d), each view (image, flip) a training row; scores
    average the views' probabilities. ``pad_rows`` >= every fold's views x train images
    (fixed by the caller so results never depend on the batch). -> [(test probs, info)]."""
    n_views = feats.shape[0]
    # coordinates: at most min(rows, features) per problem (zero columns pad, as zero rows do)
    z = torch.zeros(len(folds), pad_rows, min(pad_rows, feats.shape[2]), dtype=torch.float64)
    yt = torch.zeros(len(folds), pad_rows, dtype=torch.long)
    mask = torch.zeros(len(folds), pad_rows, dtype=torch.float64)
    spaces = []
    for i, fold in enumerate(folds):
        x_tr = np.concatenate([feats[v, fold.train] for v in range(n_views)])
        if len(x_tr) > pad_rows:
            raise ValueError(f"fold {i}: {len(x_tr)} training rows exceed pad_rows={pad_rows}")
        space, zi = RowSpace.fit(x_tr)
        z[i, : len(zi), : zi.shape[1]] = torch.from_numpy(zi)
        yt[i, : len(zi)] = torch.from_numpy(np.tile(y[fold.train], n_views))
        mask[i, : len(zi)] = 1.0
        spaces.append(space)
    sol = fit_logistic(z, yt, mask, c_grid, n_classes, max_iter=max_iter, tol=tol)

    out = []
    for i, (fold, space) in enumerate(zip(folds, spaces, strict=True)):
        z_val = [space(feats[v, fold.val]) for v in range(n_views)]
        z_test = [space(feats[v, fold.test]) for v in range(n_views)]

        def proba(g, zs, i=i):
            return np.mean([sol.proba(i, g, zv) for zv in zs], axis=0)

        accs, losses = map(list, zip(*(accuracy_and_log_loss(proba(g, z_val), y[fold.val])
                                       for g in range(len(c_grid))), strict=True))  # fmt: skip
        best = max(range(len(c_grid)), key=lambda g: (accs[g], -losses[g], -g))
        info = {"selected": {"C": c_grid[best], "val_accuracy": accs[best], "val_loss": losses[best],
                             "at_grid_edge": len(c_grid) > 1 and best in (0, len(c_grid) - 1)},
                "curves": {"val_accuracy_by_C": accs, "val_loss_by_C": losses},
                "solver": {"iterations": sol.iterations[i].tolist(), "converged": sol.converged[i].tolist()}}  # fmt: skip
        out.append((proba(best, z_test), info))
    return out


def fit_head(x_train: np.ndarray, y_train: np.ndarray, c: float, n_classes: int, max_iter: int = 1000,
             tol: float = 1e-5):
    """One head on all given rows (the final model). -> (RowSpace, W (k, C), b (C,), info)."""
    space, z = RowSpace.fit(x_train)
    z = torch.from_numpy(z)[None]
    sol = fit_logistic(z, torch.from_numpy(np.asarray(y_train, dtype=np.int64))[None],
                       torch.ones(1, len(x_train), dtype=torch.float64), [c], n_classes, max_iter=max_iter, tol=tol)  # fmt: skip
    info = {"iterations": int(sol.iterations[0, 0]), "converged": bool(sol.converged[0, 0])}
    return space, sol.W[0, 0].numpy(), sol.b[0, 0].numpy(), info
