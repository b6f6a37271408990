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
        "HWT (after Evans 2017): gray face resized to image_size; multi-level 2-D Haar wavelet "
        "transform (hwt_levels); features = the level approximation plus the coarsest "
        "hwt_detail_levels detail subbands (H, V, D); standardised on the train groups. The "
        "original classifier is not known: ours is an L2 multinomial logistic regression "
        "(hwt_classifier: logreg; linsvm = linear SVM) with C chosen on the validation group "
        "from hwt_c_grid."
    ),
    "cso": (
        "DWT + PCA + CSO-SLFN (after Wang et al. 2017): gray face resized to image_size; 2-D DWT "
        "(cso_wavelet, cso_levels, periodised); the approximation subband (cso_coeffs) reduced by "
        "PCA fit on the train groups (cso_pca_components) and standardised; a single-hidden-layer "
        "network (tanh, softmax output) whose weights and biases are all found by cat swarm "
        "optimisation (Chu et al. 2006: seeking/tracing modes, MR, SMP, SRD, CDC, SPC, c1, inertia "
        "w) minimising the training cross-entropy + 0.1 x training error rate; hidden size chosen "
        "on the validation group from hidden_grid."
    ),
    "bbo": (
        "SWE + BBO-SLFN (after Li, Tang & Sun 2020; parent SWE + Jaya method of Wang et al. 2018): "
        "gray face resized to image_size; 4-level stationary wavelet transform with db4 (swt2); "
        "Shannon entropy (bits) of the coefficient histogram (swe_bins bins) of each of the 13 "
        "subbands; standardised on the train groups; a single-hidden-layer network (tanh, softmax "
        "output) whose weights and biases are all found by biogeography-based optimisation (Simon "
        "2008: rank-based linear immigration/emigration, migration, Gaussian mutation, elitism; "
        "bbo_optimizer: jaya swaps in Jaya) minimising the training cross-entropy + 0.1 x training "
        "error rate; hidden size chosen on the validation group from hidden_grid."
    ),
}

__all__ = ["DESCRIPTION", "METHODS"]
