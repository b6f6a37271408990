"""CSO: 2-D DWT -> PCA -> an SLFN trained by cat swarm optimisation (after Wang et al. 2017)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from ..config import bad_value
from . import features, swarm_slfn
from .base import FoldContext

NAME = "cso"


@dataclasses.dataclass
class Params(swarm_slfn.SLFNParams):
    """The network settings of :class:`swarm_slfn.SLFNParams`, and: wavelet / levels / coeffs
    (approx | all) of the DWT; pca_variance: keep the fewest components explaining this
    fraction of the train rows' variance, at most pca_max_components; the cat swarm:
    pop cats, iters iterations, mixture ratio mr (fraction tracing), seeking memory pool
    smp, seeking range srd, dimension change ratio cdc, self-position considering spc,
    tracing c1, inertia w, velocity limit vmax (fraction of the box width)."""

    image_size: int = 224
    wavelet: str = "db4"
    levels: int = 3
    coeffs: str = "approx"
    pca_variance: float = 0.98
    pca_max_components: int = 80
    pop: int = 20
    iters: int = 3000
    mr: float = 0.8
    smp: int = 5
    srd: float = 0.2
    cdc: float = 0.2
    spc: bool = True
    c1: float = 1.5
    w: float = 0.5
    vmax: float = 0.2

    def check(self, section: str = f"baselines.{NAME}") -> None:
        self.check_network(section)
        features.check_wavelet_params(section, self)

        def bad(key, why):
            bad_value(section, self, key, why)

        if self.coeffs not in ("approx", "all"):
            bad("coeffs", "expected one of ['approx', 'all']")
        if not 0 < self.pca_variance <= 1:
            bad("pca_variance", "expected a fraction in (0, 1]")
        for key in ("pca_max_components", "smp"):
            if getattr(self, key) < 1:
                bad(key, "expected a positive integer")
        for key in ("mr", "cdc"):
            if not 0 <= getattr(self, key) <= 1:
                bad(key, "expected a probability in [0, 1]")
        for key in ("srd", "vmax"):
            if getattr(self, key) <= 0:
                bad(key, "expected a positive number")


def describe(p: Params) -> str:
    side = p.image_size // 2**p.levels
    return (f"DWT + PCA + CSO-SLFN (after Wang et al. 2017): gray face at {p.image_size}x{p.image_size}; "
            f"{p.levels}-level {p.wavelet} DWT (periodised); the {side}x{side} "
            f"{'approximation subband' if p.coeffs == 'approx' else 'coefficients (all subbands)'} reduced by PCA fit "
            f"on the train groups to the fewest components explaining {100 * p.pca_variance:g} % of their variance "
            f"(at most {p.pca_max_components}), standardised; a single-hidden-layer network ({p.hidden} {p.activation} "
            f"units, softmax output) whose weights and biases are all found by cat swarm optimisation (Chu et al. "
            f"2006: {p.pop} cats, at most {p.iters} iterations{swarm_slfn.stop_rule(p)}, MR {p.mr}, SMP {p.smp}, SRD {p.srd}, CDC {p.cdc}, "
            f"SPC {'on' if p.spc else 'off'}, c1 {p.c1}, inertia {p.w}) minimising the training "
            f"{'cross-entropy' if p.fitness == 'ce' else 'mean squared error'} + {p.error_weight} x training error rate.")  # fmt: skip


def optimizer_kwargs(p: Params) -> dict:
    """The optimiser's own settings (ferpipe.baselines.swarm.cso)."""
    return {k: getattr(p, k) for k in ("mr", "smp", "srd", "cdc", "spc", "c1", "w", "vmax")}


def features_of(images: np.ndarray, p: Params) -> np.ndarray:
    return features.dwt_coefficients(images, p.wavelet, p.levels, p.coeffs)


def _prepare(feats, y, roles, p: Params) -> swarm_slfn.PreparedFold:
    """PCA fit on the fold's train rows, then standardised."""
    tr, va, te = roles["train"], roles["val"], roles["test"]
    pca = features.fit_pca(feats[tr].astype(np.float64), variance=p.pca_variance, max_components=p.pca_max_components)
    notes = {"pca_components": int(pca[1].shape[0]), "pca_explained": round(pca[2], 4)}
    return swarm_slfn.standardized_fold(*(features.apply_pca(feats[i].astype(np.float64), pca) for i in (tr, va, te)),
                                        y, roles, notes)  # fmt: skip


def fit_folds(feats, y, folds, p: Params, ctx: FoldContext) -> Iterator[tuple[int, np.ndarray, dict, float]]:
    prepared = [_prepare(feats, y, roles, p) for _, _, _, roles in folds]
    yield from swarm_slfn.fit_folds(prepared, ctx.seeds, p, "cso", optimizer_kwargs(p), n_classes=ctx.n_classes,
                                    chunk=ctx.chunk)  # fmt: skip
