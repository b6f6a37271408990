"""Wavelet baselines quoted by Li & Lima (2021), re-implemented and run on the same folds.

One module per method (see :mod:`.base` for what a method module provides):

- :mod:`.hwt`: Haar wavelet transform features + a linear classifier (Evans 2017).
- :mod:`.cso`: 2-D DWT -> PCA -> an SLFN trained by cat swarm optimisation (Wang et al. 2017).
- :mod:`.bbo`: stationary wavelet entropy -> an SLFN trained by biogeography-based
  optimisation (Li et al. 2020).

Shared below them: :mod:`.features` (wavelet features, PCA, scaling), :mod:`.slfn` (the
network and its fitness for many folds at once), :mod:`.swarm` (CSO and BBO over many
problems at once), :mod:`.swarm_slfn` (an SLFN trained by a swarm, fold by fold batch);
:mod:`.stage` is the DVC stage (``python -m ferpipe.baselines.stage``). The published
numbers live in :mod:`ferpipe.paper`; docs/baselines.md says what each source paper states
and what we chose where it is silent.
"""

from __future__ import annotations

from types import ModuleType

from . import bbo, cso, hwt

# A new baseline: its module (see .base) plus one entry here. The order is the report's.
REGISTRY: dict[str, ModuleType] = {m.NAME: m for m in (hwt, cso, bbo)}
METHODS: tuple[str, ...] = tuple(REGISTRY)

__all__ = ["METHODS", "REGISTRY"]
