"""An SLFN trained by a swarm optimiser on many folds at once (shared by cso and bbo).

A method prepares each fold's rows (its features, fitted on the fold's train groups:
PCA, standardisation) as :class:`PreparedFold`; :func:`fit_folds` then trains one network
per fold, ``chunk`` folds per batched optimiser run, and yields every fold's test
probabilities and record as its chunk finishes (the stage saves them at once, so a killed
run keeps every finished chunk).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ..config import bad_value
from ..metrics import UNDERFIT_BELOW, accuracy_and_log_loss
from . import features, slfn, swarm


@dataclasses.dataclass
class SLFNParams:
    """Settings every swarm-trained SLFN method shares (its own params add the rest).

    image_size: side of the gray face. hidden: hidden units; activation: tanh | sigmoid.
    fitness: ce (softmax cross-entropy) | mse (softmax vs one-hot), plus error_weight x the
    training error rate. weight_bound: search box of each layer ±weight_bound/sqrt(fan_in).
    pop: population size. iters: at most this many iterations. patience: stop a fold once its
    best network's training error has not fallen for this many iterations (0 = run all iters).
    max_images: the stage refuses a dataset with more images (0 = no limit): swarm-trained
    networks were designed for hundreds of images, and their cost grows with the rows.
    """

    image_size: int = 64
    hidden: int = 20
    activation: str = "tanh"
    fitness: str = "ce"
    error_weight: float = 0.1
    weight_bound: float = 3.0
    pop: int = 20
    iters: int = 3000
    patience: int = 300
    max_images: int = 5000

    def check_network(self, section: str) -> None:
        def bad(key, why):
            bad_value(section, self, key, why)

        if self.activation not in slfn.ACTIVATIONS:
            bad("activation", f"expected one of {list(slfn.ACTIVATIONS)}")
        if self.fitness not in slfn.FITNESSES:
            bad("fitness", f"expected one of {list(slfn.FITNESSES)}")
        for key in ("image_size", "hidden", "pop"):
            if getattr(self, key) < 1:
                bad(key, "expected a positive integer")
        if self.max_images < 0:
            bad("max_images", "expected an integer >= 0 (0 = no limit)")
        if self.iters < 0:
            bad("iters", "expected an integer >= 0")
        if self.patience < 0:
            bad("patience", "expected an integer >= 0 (0 = always run all iters)")
        if self.weight_bound <= 0:
            bad("weight_bound", "expected a positive number")
        if self.error_weight < 0:
            bad("error_weight", "expected >= 0")


def stop_rule(p: SLFNParams) -> str:
    """The stopping rule in words, for a method's description."""
    return f" (a fold stops once its training error has not fallen for {p.patience} iterations)" if p.patience else ""


@dataclasses.dataclass
class PreparedFold:
    """One fold's standardised rows and what preparing them found (e.g. PCA components)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    notes: dict


def standardized_fold(x_train: np.ndarray, x_val: np.ndarray, x_test: np.ndarray, y: np.ndarray,
                      roles: dict[str, np.ndarray], notes: dict | None = None) -> PreparedFold:  # fmt: skip
    """A fold's train / val / test rows, standardised with the train rows' statistics."""
    stats = features.fit_standardizer(x_train)
    return PreparedFold(features.standardize(x_train, stats), y[roles["train"]], features.standardize(x_val, stats),
                        y[roles["val"]], features.standardize(x_test, stats), notes or {})  # fmt: skip


def batches(prepared: Sequence[PreparedFold], chunk: int) -> list[list[int]]:
    """Folds of equal shape (features, train rows rounded up to 8) in runs of at most ``chunk``.

    A fold is never padded with feature columns (extra weights would dilute the search) and
    its rows are padded to a size of its own, so nothing about a fold's batch reaches its result.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for i, f in enumerate(prepared):
        groups.setdefault(_shape(f), []).append(i)
    size = max(1, chunk)
    return [idx[k : k + size] for _, idx in sorted(groups.items()) for k in range(0, len(idx), size)]


def _shape(f: PreparedFold) -> tuple[int, int]:
    return f.x_train.shape[1], -(-f.x_train.shape[0] // 8) * 8


def fit_folds(prepared: Sequence[PreparedFold], seeds: Sequence, p: SLFNParams, optimizer: str, opt_kwargs: dict,
              *, n_classes: int, chunk: int) -> Iterator[tuple[int, np.ndarray, dict, float]]:  # fmt: skip
    """Yield ``(fold index, test probabilities (n_test, C), info, seconds)`` batch by batch."""
    h, c = p.hidden, n_classes
    for idx in batches(prepared, chunk):
        t0 = time.perf_counter()
        part = [prepared[i] for i in idx]
        d, n_pad = _shape(part[0])
        batch = slfn.FoldBatch([f.x_train for f in part], [f.y_train for f in part], h, c, d_pad=d, n_pad=n_pad,
                               activation=p.activation, fitness=p.fitness, error_weight=p.error_weight)  # fmt: skip
        hi = slfn.bounds(d, h, c, p.weight_bound)
        with torch.no_grad():
            res = swarm.OPTIMIZERS[optimizer](batch, -hi, hi, [seeds[i] for i in idx], pop_size=p.pop, iters=p.iters,
                                              patience=p.patience, **opt_kwargs)  # fmt: skip
        dt = (time.perf_counter() - t0) / len(part)
        for k, (i, fold) in enumerate(zip(idx, part, strict=True)):
            vec = res.x[k]
            prob = {name: slfn.softmax(slfn.logits(vec, x, h, c, p.activation))
                    for name, x in (("train", fold.x_train), ("val", fold.x_val), ("test", fold.x_test))}  # fmt: skip
            train_acc = float((prob["train"].argmax(1) == fold.y_train).mean())
            val_acc, val_loss = accuracy_and_log_loss(prob["val"], fold.y_val)
            hist = res.history[k][: res.iterations[k] + 1]
            step = max(1, len(hist) // 60)  # keep the JSON small: about 60 points per curve
            info = {"selected": {"hidden": h, "optimizer": optimizer, "train_accuracy": round(train_acc, 4),
                                 "under_trained": train_acc < UNDERFIT_BELOW, "fitness": round(float(res.f[k]), 5),
                                 "val_accuracy": round(val_acc, 4), "val_loss": round(val_loss, 5),
                                 "n_evals": int(res.n_evals[k]), "iterations": int(res.iterations[k]),
                                 "n_features": int(fold.x_train.shape[1]), **fold.notes},
                    "curves": {"best_fitness": {"iteration": list(range(0, len(hist), step)),
                                                "value": [round(float(v), 5) for v in hist[::step]]}}}  # fmt: skip
            yield i, prob["test"], info, dt
