"""What every baseline module provides, and what the stage hands it per method.

A baseline is one module with:

- ``NAME``: its folder under ``artifacts/baselines`` and its key under ``baselines:`` in
  params.yaml;
- ``Params``: a dataclass of its own settings (``image_size`` plus anything else), with a
  ``check(section)`` that raises :class:`ferpipe.config.ParamsError` on a bad value;
- ``describe(p) -> str``: one paragraph for the report, written from the settings in use;
- ``features_of(images (N, S, S) float32 in [0, 1], p) -> (N, F)``: computed once for all images;
- ``fit_folds(feats, y, folds, p, ctx) -> iterator of (fold index, test probabilities,
  info, seconds)``: fit on each fold's train group (choices on its val group), predict its
  test group; yielded as folds finish so the stage can save them at once.

Registering it is one line in ``ferpipe/baselines/__init__.py``.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class FoldContext:
    """The run-wide facts a method needs besides its own settings."""

    n_classes: int
    pad_rows: int  # the largest train group of the plan (row padding fixed for every batch)
    chunk: int  # folds per batched optimiser run (speed only: results do not depend on it)
    seeds: list[np.random.SeedSequence]  # one per fold, in the order of the folds given
