"""Single-hidden-layer feed-forward networks (SLFN) whose weights are one flat vector.

A candidate is ``[W1 (h x d), b1 (h), W2 (c x h), b2 (c)]`` (row-major), so a population
of candidates for F folds ``(F, P, D)`` is unpacked into views and scored with two
batched matrix products: ``H = act(W1 X^T + b1)`` and ``Z = W2 H + b2`` (class-major, the
training rows on the fast axis).

Fitness (minimised by the optimisers of :mod:`.swarm`), on a fold's training rows:
``loss + error_weight * training error rate``, where loss is the mean softmax
cross-entropy (``fitness='ce'``) or the mean squared error between ``softmax(Z)`` and the
one-hot targets summed over classes (``fitness='mse'``); the small error-rate term breaks
ties between networks of equal loss in favour of the one that classifies more training
rows correctly (a tie with the true class counts as correct).

Folds in one batch have the same number of features (the caller groups them so) and their
training rows are zero-padded to a common ``n_pad``; padded rows carry weight 0, so they do
not change the fitness.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch

ACTIVATIONS = ("tanh", "sigmoid")
FITNESSES = ("ce", "mse")


def n_params(d: int, h: int, c: int) -> int:
    return h * d + h + c * h + c


def unpack(pop, d: int, h: int, c: int):
    """``(..., D)`` -> W1 ``(..., h, d)``, b1 ``(..., h)``, W2 ``(..., c, h)``, b2 ``(..., c)``."""
    if pop.shape[-1] != n_params(d, h, c):
        raise ValueError(f"SLFN({d}-{h}-{c}) has {n_params(d, h, c)} parameters, got {pop.shape[-1]}")
    lead = tuple(pop.shape[:-1])
    cuts = np.cumsum([h * d, h, c * h])
    w1, b1, w2, b2 = (pop[..., a:b] for a, b in zip([0, *cuts], [*cuts, None], strict=True))
    return w1.reshape(*lead, h, d), b1, w2.reshape(*lead, c, h), b2


def bounds(d: int, h: int, c: int, bound: float = 3.0) -> np.ndarray:
    """Upper corner of the search box (the lower one is its negative): each layer's
    weights and biases in ``±bound / sqrt(fan_in)``. With standardised inputs a uniform draw
    gives pre-activations of standard deviation about ``bound / sqrt(3)``, whatever the width."""
    return np.concatenate([np.full(h * d + h, bound / np.sqrt(d)), np.full(c * h + c, bound / np.sqrt(h))])


def _act(z, activation: str):
    if activation == "tanh":
        return torch.tanh_(z) if isinstance(z, torch.Tensor) else np.tanh(z)
    if activation == "sigmoid":
        return torch.sigmoid_(z) if isinstance(z, torch.Tensor) else 0.5 * (np.tanh(0.5 * z) + 1.0)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def logits(vec: np.ndarray, x: np.ndarray, h: int, c: int, activation: str = "tanh") -> np.ndarray:
    """Logits ``(N, c)`` of one network ``vec (D,)`` on rows ``x (N, d)`` (float64, for predictions)."""
    x = np.asarray(x, dtype=np.float64)
    w1, b1, w2, b2 = unpack(np.asarray(vec, dtype=np.float64), x.shape[1], h, c)
    return _act(x @ w1.T + b1, activation) @ w2.T + b2


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


class FoldBatch:
    """``f(pop (F, P, D)) -> (F, P)``: the fitness of every candidate network on the
    training rows of each of F folds (fold k's candidates on fold k's rows)."""

    def __init__(self, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], h: int, n_classes: int, *,
                 d_pad: int, n_pad: int, activation: str = "tanh", fitness: str = "ce",
                 error_weight: float = 0.1) -> None:  # fmt: skip
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if fitness not in FITNESSES:
            raise ValueError(f"fitness must be one of {FITNESSES}, got {fitness!r}")
        f = len(xs)
        self.h, self.c, self.d_pad = h, n_classes, d_pad
        self.activation, self.fitness, self.error_weight = activation, fitness, error_weight
        xt = np.zeros((f, d_pad, n_pad), dtype=np.float32)
        onehot = np.zeros((f, n_classes, n_pad), dtype=np.float32)
        weight = np.zeros((f, n_pad), dtype=np.float32)
        for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
            n, d = x.shape
            if n > n_pad or d > d_pad:
                raise ValueError(f"fold {k}: {n} rows x {d} features exceed the padding {n_pad} x {d_pad}")
            xt[k, :d, :n] = x.T
            onehot[k, np.asarray(y), np.arange(n)] = 1.0
            weight[k, :n] = 1.0 / n
        self.xt, self.onehot, self.weight = (torch.from_numpy(a) for a in (xt, onehot, weight))
        self.label = self.onehot.argmax(dim=1)[:, None, None, :]  # (F, 1, 1, N); padded rows: class 0, weight 0

    def subset(self, index: torch.Tensor) -> FoldBatch:
        """The same objective for the folds ``index`` only (an optimiser drops finished folds)."""
        out = copy.copy(self)
        out.xt, out.onehot, out.weight, out.label = (t[index] for t in (self.xt, self.onehot, self.weight, self.label))
        return out

    def __call__(self, pop: torch.Tensor) -> torch.Tensor:
        loss, error = self._scores(pop)
        return loss + self.error_weight * error if self.error_weight else loss

    def train_error(self, best: torch.Tensor) -> torch.Tensor:
        """Training error rate ``(F,)`` of one network per fold ``(F, D)`` (the plateau test)."""
        return self._scores(best[:, None])[1][:, 0]

    def _scores(self, pop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean loss and training error rate, each ``(F, P)``."""
        f, p, _ = pop.shape
        h, c, n = self.h, self.c, self.xt.shape[-1]
        w1, b1, w2, b2 = unpack(pop, self.d_pad, h, c)
        hid = torch.baddbmm(b1.reshape(f, p * h, 1), w1.reshape(f, p * h, self.d_pad), self.xt)  # (F, P*h, N)
        _act(hid, self.activation)
        z = torch.baddbmm(b2.reshape(f * p, c, 1), w2.reshape(f * p, c, h), hid.view(f * p, h, n))
        z = z.view(f, p, c, n)
        top = z.amax(dim=2, keepdim=True)
        true = z.gather(2, self.label.expand(f, p, 1, n))[:, :, 0]  # (F, P, N) logit of the true class
        if self.fitness == "ce":
            per_row = (z - top).exp_().sum(dim=2).log_() + top[:, :, 0] - true
        else:
            e = (z - top).exp_()
            e /= e.sum(dim=2, keepdim=True)
            per_row = ((e - self.onehot[:, None]) ** 2).sum(dim=2)
        w = self.weight[:, None]
        wrong = (true < top[:, :, 0]).to(per_row.dtype)  # a tie with the top logit counts as correct
        return (per_row * w).sum(dim=2), (wrong * w).sum(dim=2)
