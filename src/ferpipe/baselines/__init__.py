"""Wavelet baselines quoted by Li & Lima (2021), re-implemented on the same folds.

Methods (the folder names under artifacts/baselines):

- ``hwt``: Haar wavelet transform features + a linear classifier (Evans 2017).
- ``cso``: 2-D DWT -> PCA -> SLFN trained by cat swarm optimisation (Wang et al. 2017).
- ``bbo``: stationary wavelet entropy -> SLFN trained by biogeography-based
  optimisation (Li, Tang & Sun 2020).

Modules: :mod:`.features` (wavelet features, PCA, scaling), :mod:`.optimizers`
(CSO, BBO, Jaya over a box), :mod:`.slfn` (population-batched network fitness) and
:mod:`.stage` (the DVC stage, ``python -m ferpipe.baselines.stage``).
"""

from __future__ import annotations

METHODS: tuple[str, ...] = ("hwt", "cso", "bbo")

# Quoted by the report: what each re-implementation does, including our own choices
# where the original papers (known to us from their abstracts) leave details open.
DESCRIPTION: dict[str, str] = {
    "hwt": (
        "HWT (after Evans 2017): gray face resized to image_size (default 64x64); 2-D Haar "
        "wavelet transform to hwt_levels (3) levels; features = the level-3 approximation plus "
        "the coarsest hwt_detail_levels (1) detail subbands (H, V, D), 256 values, standardised "
        "on the train groups. The original classifier is not known: ours is an L2-regularised "
        "multinomial logistic regression (hwt_classifier: logreg; linsvm = linear SVM) with C "
        "chosen on the validation group from hwt_c_grid (0.01, 0.1, 1)."
    ),
    "cso": (
        "DWT + PCA + CSO-SLFN (after Wang et al. 2017): gray face resized to image_size (64x64); "
        "3-level db4 DWT (periodised); the 8x8 approximation subband reduced by PCA fit on the "
        "train groups to cso_pca_components (20) and standardised; a single-hidden-layer network "
        "(tanh hidden layer, softmax output) whose weights and biases are all found by cat swarm "
        "optimisation (Chu et al. 2006: seeking/tracing modes; defaults 20 cats x 300 iterations, "
        "MR 0.8, SMP 5, SRD 0.2, CDC 0.2, SPC on, c1 1.5, inertia 0.5, tuned for this small "
        "evaluation budget) minimising training cross-entropy + 0.1 x training error rate; hidden "
        "size chosen on the validation group from hidden_grid (10, 20)."
    ),
    "bbo": (
        "SWE + BBO-SLFN (after Li, Tang & Sun 2020; db4 and 4 levels as found best by the parent "
        "SWE + Jaya method of Wang et al. 2018): gray face resized to image_size (64x64); 4-level "
        "stationary wavelet transform (swt2); the Shannon entropy (bits) of the normalised "
        "coefficient energies of each of the 13 subbands (swe_entropy: energy; histogram = of the "
        "coefficient histogram); standardised on the train groups; a single-hidden-layer network "
        "(tanh, softmax output) whose weights and biases are all found by biogeography-based "
        "optimisation (Simon 2008: rank-based linear immigration/emigration, migration, Gaussian "
        "mutation, 2 elites; 30 habitats x 300 generations; bbo_optimizer: jaya swaps in Jaya) "
        "minimising training cross-entropy + 0.1 x training error rate; hidden size chosen on the "
        "validation group from hidden_grid (10, 20)."
    ),
}

__all__ = ["DESCRIPTION", "METHODS"]
