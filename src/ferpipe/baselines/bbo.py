"""BBO: stationary wavelet entropy -> an SLFN trained by biogeography-based optimisation
(after Li et al. 2020)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from ..config import bad_value
from . import features, swarm_slfn
from .base import FoldContext

NAME = "bbo"
ENTROPIES = ("energy", "histogram")


@dataclasses.dataclass
class Params(swarm_slfn.SLFNParams):
    """The network settings of :class:`swarm_slfn.SLFNParams`, and: wavelet / levels of the
    stationary wavelet transform; entropy (energy | histogram with bins bins) of each block
    of a grid x grid split of every subband (1 = whole subbands, as in the paper); the
    optimiser: pop habitats, iters generations, elites kept, per-SIV mutation_prob and
    Gaussian mutation_scale (fraction of the box width)."""

    image_size: int = 64
    wavelet: str = "db4"
    levels: int = 4
    entropy: str = "energy"
    bins: int = 32
    grid: int = 1
    pop: int = 30
    iters: int = 3000
    elites: int = 2
    mutation_prob: float = 0.02
    mutation_scale: float = 0.05

    def check(self, section: str = f"baselines.{NAME}") -> None:
        self.check_network(section)
        features.check_wavelet_params(section, self)

        def bad(key, why):
            bad_value(section, self, key, why)

        if self.entropy not in ENTROPIES:
            bad("entropy", f"expected one of {list(ENTROPIES)}")
        if self.bins < 2:
            bad("bins", "expected an integer >= 2")
        if self.grid < 1 or self.image_size % self.grid:
            bad("grid", f"expected a positive integer dividing image_size ({self.image_size})")
        if self.pop < 2 or not 0 <= self.elites < self.pop:
            bad("elites", f"needs pop >= 2 and 0 <= elites < pop ({self.pop})")
        if not 0 <= self.mutation_prob <= 1:
            bad("mutation_prob", "expected a probability in [0, 1]")
        if self.mutation_scale < 0:
            bad("mutation_scale", "expected >= 0")


def n_features(p: Params) -> int:
    return (1 + 3 * p.levels) * p.grid**2


def describe(p: Params) -> str:
    what = "whole subband" if p.grid == 1 else f"block of a {p.grid}x{p.grid} grid per subband"
    ent = "normalised coefficient energies" if p.entropy == "energy" else f"coefficient histogram ({p.bins} bins)"
    return (f"SWE + BBO-SLFN (after Li et al. 2020): gray face at {p.image_size}x{p.image_size}; {p.levels}-level "
            f"{p.wavelet} stationary wavelet transform (swt2); the Shannon entropy (bits) of the {ent} of each {what} "
            f"({n_features(p)} features), standardised on the train groups; a single-hidden-layer network ({p.hidden} "
            f"{p.activation} units, softmax output) whose weights and biases are all found by biogeography-based "
            f"optimisation (Simon 2008: rank-based linear migration, Gaussian mutation {p.mutation_prob} per SIV, "
            f"{p.elites} elites; {p.pop} habitats, at most {p.iters} generations{swarm_slfn.stop_rule(p)}) minimising the training "
            f"{'cross-entropy' if p.fitness == 'ce' else 'mean squared error'} + {p.error_weight} x training error rate.")  # fmt: skip


def optimizer_kwargs(p: Params) -> dict:
    """The optimiser's own settings (ferpipe.baselines.swarm.bbo)."""
    return {k: getattr(p, k) for k in ("elites", "mutation_prob", "mutation_scale")}


def features_of(images: np.ndarray, p: Params) -> np.ndarray:
    return features.swe_features(images, p.wavelet, p.levels, p.entropy, p.bins, p.grid)


def fit_folds(feats, y, folds, p: Params, ctx: FoldContext) -> Iterator[tuple[int, np.ndarray, dict, float]]:
    prepared = [swarm_slfn.standardized_fold(feats[r["train"]], feats[r["val"]], feats[r["test"]], y, r)
                for _, _, _, r in folds]  # fmt: skip
    yield from swarm_slfn.fit_folds(prepared, ctx.seeds, p, "bbo", optimizer_kwargs(p), n_classes=ctx.n_classes,
                                    chunk=ctx.chunk)  # fmt: skip
