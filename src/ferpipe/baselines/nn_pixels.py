"""nn_pixels: the memorisation floor, 1-nearest-neighbour on raw face pixels.

Not a method from the paper: a yardstick. Each test face takes the label of the single
most similar face of its fold's train and validation groups (``reference: train+val``: a
1-NN has no setting for the validation group to choose, so it may remember those faces too;
every image but the test group, as a memoriser would), compared pixel by pixel (gray,
``image_size`` px, each image zero-mean and unit-norm, cosine similarity). It learns nothing about expressions; it can
only recognise a near-copy of a training image. So on a protocol where it scores high, the
test set holds near-copies of training images (the same person posing the same expression
again), and an OA there measures recognising people as much as reading faces.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import numpy as np

from ..config import bad_value
from ..pixels import unit_pixels
from .base import FoldContext

NAME = "nn_pixels"


@dataclasses.dataclass
class Params:
    """image_size: side of the gray face the pixels are compared at; reference: the faces a
    test face is compared with (train+val: every image of the fold but the test group)."""

    image_size: int = 32
    reference: str = "train+val"

    def check(self, section: str = f"baselines.{NAME}") -> None:
        if not 4 <= self.image_size <= 256:
            bad_value(section, self, "image_size", "expected 4..256")
        if self.reference not in ("train+val", "train"):
            bad_value(section, self, "reference", "expected train+val or train")


def describe(p: Params) -> str:
    return (f"nn_pixels (memorisation floor, not from the paper): gray face at {p.image_size}x{p.image_size}, each "
            "image zero-mean and unit-norm; a test face takes the label of its most similar face among the fold's "
            f"{p.reference.replace('+', ' and ')} groups (cosine, 1-nearest neighbour). It learns no expression: it "
            "can only find near-copies of images it has seen.")  # fmt: skip


def features_of(images: np.ndarray, p: Params) -> np.ndarray:
    return unit_pixels(images)


def nearest(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of each test row's most similar train row, that similarity); ties: the first."""
    sim = test @ train.T
    idx = sim.argmax(1)
    return idx, sim[np.arange(len(test)), idx]


def fit_folds(feats, y, folds, p: Params, ctx: FoldContext) -> Iterator[tuple[int, np.ndarray, dict, float]]:
    """Per fold: the test group's nearest reference image. val_accuracy is measured with the
    train groups alone as reference (a diagnostic: the validation group chooses nothing)."""
    y = np.asarray(y)
    for i, (*_, roles) in enumerate(folds):
        t0 = time.perf_counter()
        tr, va, te = roles["train"], roles["val"], roles["test"]
        ref = np.concatenate([tr, va]) if p.reference == "train+val" else tr
        idx, sim = nearest(feats[ref], feats[te])
        prob = np.zeros((len(te), ctx.n_classes))
        prob[np.arange(len(te)), y[ref][idx]] = 1.0
        val_idx, _ = nearest(feats[tr], feats[va])
        info = {"selected": {"val_accuracy": float((y[tr][val_idx] == y[va]).mean()), "train_accuracy": 1.0,
                             "n_features": int(feats.shape[1])},
                "nearest_similarity_mean": float(sim.mean())}  # fmt: skip
        yield i, prob, info, time.perf_counter() - t0
