"""Wavelet baselines quoted by Li & Lima (2021), re-implemented and run on the same folds.

One module per method (see :mod:`.base` for what a method module provides):

- :mod:`.hwt`: Haar wavelet transform features + a linear classifier (Evans 2017).
- :mod:`.cso`: 2-D DWT -> PCA -> an SLFN trained by cat swarm optimisation (Wang et al. 2017).
- :mod:`.bbo`: stationary wavelet entropy -> an SLFN trained by biogeography-based
  optimisation (Li et al. 2020).
- :mod:`.nn_pixels`: not from the paper: 1-nearest-neighbour on raw pixels, the
  memorisation floor a protocol's accuracies should be read against.

Shared below them: :mod:`.features` (wavelet features, PCA, scaling), :mod:`.slfn` (the
network and its fitness for many folds at once), :mod:`.swarm` (CSO and BBO over many
problems at once), :mod:`.swarm_slfn` (an SLFN trained by a swarm, fold by fold batch);
:mod:`.stage` is the DVC stage (``python -m ferpipe.baselines.stage``). The published
numbers live in :mod:`ferpipe.paper`; docs/baselines.md says what each source paper states
and what we chose where it is silent.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# A new baseline: its module (see .base) plus its name here; it then runs by default, with
# the defaults of its Params unless params.yaml sets baselines.<name>. The order is the report's.
METHODS: tuple[str, ...] = ("hwt", "cso", "bbo", "nn_pixels")
REGISTRY: dict[str, ModuleType] = {name: importlib.import_module(f"{__name__}.{name}") for name in METHODS}

__all__ = ["METHODS", "REGISTRY"]
