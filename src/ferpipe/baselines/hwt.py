"""HWT: Haar wavelet features + a linear classifier (after Evans 2017)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import numpy as np

from .. import heads
from ..config import bad_value
from . import features
from .base import FoldContext

NAME = "hwt"


@dataclasses.dataclass
class Params:
    """image_size: side of the gray face; levels: Haar levels; detail_levels: coarsest detail
    levels kept (0 = approximation only); c_grid: the L2 logistic regression's C values, one
    chosen per fold on its validation group."""

    image_size: int = 64
    levels: int = 3
    detail_levels: int = 1
    c_grid: list[float] = dataclasses.field(default_factory=lambda: [1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0, 100.0])

    def check(self, section: str = f"baselines.{NAME}") -> None:
        features.check_params_size(section, self.image_size, self.levels)
        if not 0 <= self.detail_levels <= self.levels:
            bad_value(section, self, "detail_levels", f"expected 0..levels ({self.levels})")
        if not self.c_grid or any(c <= 0 for c in self.c_grid):
            bad_value(section, self, "c_grid", "expected a non-empty list of positive numbers")


def describe(p: Params) -> str:
    side = p.image_size // 2**p.levels
    n = side * side * (1 + 3 * p.detail_levels)
    return (f"HWT (after Evans 2017): gray face resized to {p.image_size}x{p.image_size}; 2-D Haar wavelet transform "
            f"to {p.levels} levels; features = the level-{p.levels} approximation plus the coarsest "
            f"{p.detail_levels} detail level(s) (H, V, D), {n} values, standardised on the train groups. The paper "
            f"names no classifier: ours is an L2-regularised multinomial logistic regression with C chosen on the "
            f"validation group from {p.c_grid}.")  # fmt: skip


def features_of(images: np.ndarray, p: Params) -> np.ndarray:
    return features.haar_features(images, p.levels, p.detail_levels)


def fit_folds(feats, y, folds, p: Params, ctx: FoldContext) -> Iterator[tuple[int, np.ndarray, dict, float]]:
    """All folds x all C values in one batched solve (ferpipe.heads: scikit-learn's multinomial
    logistic objective, standardised features); C chosen per fold on its validation group."""
    t0 = time.perf_counter()
    problems = [heads.FoldHeadProblem(r["train"], r["val"], r["test"]) for *_, r in folds]
    fitted = heads.fit_fold_heads(feats[None], y, problems, list(p.c_grid), ctx.n_classes, ctx.pad_rows)
    each = (time.perf_counter() - t0) / max(len(folds), 1)  # one solve: its time shared evenly
    for i, (prob, info) in enumerate(fitted):
        info["selected"]["n_features"] = int(feats.shape[1])
        yield i, prob, info, each
