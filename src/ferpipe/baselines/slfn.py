"""Single-hidden-layer feed-forward network (SLFN) whose weights are one flat vector.

A candidate is ``[W1 (d*h), b1 (h), W2 (h*c), b2 (c)]`` (row-major), so a whole
population ``(P, D)`` is unpacked into views and evaluated with two batched matmuls:
``H = act(X @ W1[p] + b1[p])`` and ``Z = H @ W2[p] + b2[p]`` for all p at once.

Fitness (minimised by the swarm/evolutionary optimisers), on the training rows:
``loss + error_weight * training error rate``, where loss is the mean softmax
cross-entropy of the logits (``fitness='ce'``) or the mean squared error between
``softmax(Z)`` and the one-hot targets (``fitness='mse'``, summed over classes); the
small error-rate term breaks ties between networks of equal loss in favour of
the one that classifies more training samples correctly.
"""

from __future__ import annotations

import numpy as np

ACTIVATIONS = ("tanh", "sigmoid")
FITNESSES = ("ce", "mse")


def n_params(d: int, h: int, c: int) -> int:
    return d * h + h + h * c + c


def unpack(pop: np.ndarray, d: int, h: int, c: int):
    """``(P, D)`` -> W1 (P, d, h), b1 (P, h), W2 (P, h, c), b2 (P, c) (views when possible)."""
    pop = np.asarray(pop)
    if pop.ndim == 1:
        pop = pop[None]
    if pop.shape[1] != n_params(d, h, c):
        raise ValueError(f"SLFN({d}-{h}-{c}) has {n_params(d, h, c)} parameters, got {pop.shape[1]}")
    p = pop.shape[0]
    i = 0
    w1 = pop[:, i : i + d * h].reshape(p, d, h)
    i += d * h
    b1 = pop[:, i : i + h]
    i += h
    w2 = pop[:, i : i + h * c].reshape(p, h, c)
    i += h * c
    b2 = pop[:, i : i + c]
    return w1, b1, w2, b2


def pack(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """Inverse of :func:`unpack` for one network (unbatched arrays) -> ``(D,)``."""
    return np.concatenate([np.ravel(w1), np.ravel(b1), np.ravel(w2), np.ravel(b2)])


def bounds(d: int, h: int, c: int, bound: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Search box: each layer's weights and biases in ``±bound / sqrt(fan_in)``.

    With standardised inputs a uniform draw from this box gives pre-activations of
    standard deviation about ``bound / sqrt(3)``, whatever the layer width.
    """
    hi = np.concatenate([np.full(d * h + h, bound / np.sqrt(d)), np.full(h * c + c, bound / np.sqrt(h))])
    return -hi, hi


def _act(z: np.ndarray, activation: str) -> np.ndarray:
    if activation == "tanh":
        return np.tanh(z, out=z)
    if activation == "sigmoid":
        # 1/(1+exp(-z)) written with tanh: no overflow warnings, same values
        np.multiply(z, 0.5, out=z)
        np.tanh(z, out=z)
        z += 1.0
        z *= 0.5
        return z
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def forward(pop: np.ndarray, x: np.ndarray, h: int, c: int, activation: str = "tanh") -> np.ndarray:
    """Logits of every candidate on every row, class-major: ``(P, c, N)``.

    Two batched matmuls over the population, computed transposed (``W1^T X^T``) so that
    the N samples are the contiguous axis: the softmax reductions over the c classes
    then run as fast element-wise operations on length-N rows.
    """
    pop = np.asarray(pop, dtype=np.float32)
    x = np.asarray(x, dtype=np.float32)
    w1, b1, w2, b2 = unpack(pop, x.shape[1], h, c)
    hid = np.matmul(w1.transpose(0, 2, 1), x.T)  # (P, h, N)
    hid += b1[:, :, None]
    _act(hid, activation)
    z = np.matmul(w2.transpose(0, 2, 1), hid)  # (P, c, N)
    z += b2[:, :, None]
    return z


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def one_hot(y: np.ndarray, c: int) -> np.ndarray:
    """Class-major one-hot ``(c, N)`` float32."""
    return (np.arange(c)[:, None] == np.asarray(y)[None, :]).astype(np.float32)


def losses(z: np.ndarray, y: np.ndarray, fitness: str = "ce", onehot: np.ndarray | None = None) -> np.ndarray:
    """Mean loss per candidate ``(P,)`` from class-major logits ``(P, c, N)``, labels ``(N,)``."""
    t = one_hot(y, z.shape[1]) if onehot is None else onehot
    zs = z - z.max(axis=1, keepdims=True)
    e = np.exp(zs)
    tot = e.sum(axis=1)  # (P, N)
    if fitness == "ce":
        return (np.log(tot) - (zs * t).sum(axis=1)).mean(axis=1)
    if fitness == "mse":
        e /= tot[:, None, :]
        e -= t
        return (e * e).sum(axis=1).mean(axis=1)
    raise ValueError(f"fitness must be one of {FITNESSES}, got {fitness!r}")


def error_rates(z: np.ndarray, y: np.ndarray, onehot: np.ndarray | None = None) -> np.ndarray:
    """Training error rate per candidate; a tie with the true class counts as correct."""
    t = one_hot(y, z.shape[1]) if onehot is None else onehot
    return ((z * t).sum(axis=1) < z.max(axis=1)).mean(axis=1)


class SLFNObjective:
    """``f(pop (P, D)) -> (P,)``: the fitness of every candidate network on (x, y)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, h: int, n_classes: int,
                 activation: str = "tanh", fitness: str = "ce", error_weight: float = 0.1):  # fmt: skip
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if fitness not in FITNESSES:
            raise ValueError(f"fitness must be one of {FITNESSES}, got {fitness!r}")
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.y = np.asarray(y, dtype=np.int64)
        self.h, self.c = h, n_classes
        self.activation, self.fitness, self.error_weight = activation, fitness, error_weight
        self.dim = n_params(self.x.shape[1], h, n_classes)
        self._onehot = one_hot(self.y, n_classes)
        self.n_evals = 0

    def bounds(self, bound: float) -> tuple[np.ndarray, np.ndarray]:
        return bounds(self.x.shape[1], self.h, self.c, bound)

    def __call__(self, pop: np.ndarray) -> np.ndarray:
        z = forward(pop, self.x, self.h, self.c, self.activation)
        self.n_evals += z.shape[0]
        f = losses(z, self.y, self.fitness, self._onehot)
        if self.error_weight:
            f = f + self.error_weight * error_rates(z, self.y, self._onehot)
        return f.astype(np.float64)

    def predict_proba(self, vec: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Softmax probabilities ``(N, c)`` of one network ``vec (D,)`` on rows x."""
        return softmax(forward(vec[None], x, self.h, self.c, self.activation)[0].T.astype(np.float64))
