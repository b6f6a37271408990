"""Wavelet features of the three baselines (numpy + PyWavelets only).

All functions take a stack of grayscale images ``(N, S, S)`` (float, any scale) and
return one feature row per image, so the features of all images are computed once per
method and then sliced per fold by the stage. Everything fitted on data
(PCA, standardisation) lives in :func:`fit_pca` / :func:`fit_standardizer` and is fit on
the train groups of a fold only.

- :func:`haar_features`  (HWT, Evans 2017): multi-level 2-D Haar transform; the level-L
  approximation plus the details of the coarsest ``detail_levels`` levels.
- :func:`dwt_coefficients` (CSO, Wang et al. 2017): a 2-D DWT (``wavedec2``, periodised,
  so each level halves the sides exactly); the approximation or all coefficients,
  reduced per fold by PCA.
- :func:`swe_features` (BBO, Li et al. 2020; Wang et al. 2018): stationary wavelet
  entropy, the Shannon entropy (bits) of every ``swt2`` subband (final approximation +
  3 details per level = 1 + 3L subbands), optionally per block of a g x g grid.
"""

from __future__ import annotations

import numpy as np
import pywt


class FeatureError(ValueError):
    """Impossible feature settings (e.g. an image side not divisible by 2**levels)."""


# ---------------------------------------------------------------- images
def size_problem(size: int, levels: int) -> str | None:
    """Why a ``size`` x ``size`` image cannot take a ``levels``-level decomposition, or None."""
    step = 2**levels
    if levels < 1:
        return f"levels: expected a positive integer, got {levels!r}"
    if size < step or size % step:
        return (f"image_size={size} must be divisible by 2**levels={step} (a {levels}-level wavelet "
                f"decomposition halves the side {levels} times); use e.g. {step * max(1, round(size / step))}")  # fmt: skip
    return None


def check_size(size: int, levels: int, what: str) -> None:
    """Images handed to a feature extractor (a programming error when wrong)."""
    if why := size_problem(size, levels):
        raise FeatureError(f"{what}: {why}")


def check_params_size(section: str, size: int, levels: int) -> None:
    """params.yaml check: ``{section}.image_size`` must suit a ``levels``-level decomposition."""
    from ..config import ParamsError

    if why := size_problem(size, levels):
        raise ParamsError(f"params.yaml: {section}.{why}")


def check_wavelet_params(section: str, p) -> None:
    """params.yaml check of a method's ``wavelet``, ``levels`` and ``image_size``."""
    from ..config import bad_value

    if p.wavelet not in pywt.wavelist(kind="discrete"):
        bad_value(section, p, "wavelet", "expected a PyWavelets discrete wavelet name (e.g. haar, db4, sym4)")
    check_params_size(section, p.image_size, p.levels)


# ---------------------------------------------------------------- Haar (HWT)
def haar2(x: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One level of the orthonormal 2-D Haar transform over the last two axes.

    For every 2x2 block [[a, b], [c, d]]: cA = (a+b+c+d)/2, cH = (a+b-c-d)/2,
    cV = (a-b+c-d)/2, cD = (a-b-c+d)/2 -- the same values and names as
    ``pywt.dwt2(x, 'haar')``.
    """
    if x.shape[-1] % 2 or x.shape[-2] % 2:
        raise FeatureError(f"haar2: sides must be even, got {x.shape[-2:]}")
    a = x[..., 0::2, 0::2]
    b = x[..., 0::2, 1::2]
    c = x[..., 1::2, 0::2]
    d = x[..., 1::2, 1::2]
    return (a + b + c + d) / 2, ((a + b - c - d) / 2, (a - b + c - d) / 2, (a - b - c + d) / 2)


def haar_decompose(x: np.ndarray, levels: int) -> list:
    """Multi-level Haar, pywt ``wavedec2`` order: [cA_L, (cH_L, cV_L, cD_L), ..., (.._1)]."""
    details = []
    approx = x
    for _ in range(levels):
        approx, det = haar2(approx)
        details.append(det)
    return [approx, *details[::-1]]


def haar_features(images: np.ndarray, levels: int = 3, detail_levels: int = 1) -> np.ndarray:
    """HWT features ``(N, F)``: level-``levels`` approximation + coarsest detail levels.

    ``detail_levels`` = 0 keeps the approximation only; ``detail_levels`` = ``levels``
    keeps every coefficient (an orthonormal re-basis of the pixels).
    For side S: F = (S/2**L)**2 * (1 + 3 * detail_levels).
    """
    check_size(images.shape[-1], levels, "hwt")
    if not 0 <= detail_levels <= levels:
        raise FeatureError(f"hwt: detail_levels must be in [0, {levels}], got {detail_levels}")
    coeffs = haar_decompose(images.astype(np.float32), levels)
    parts = [coeffs[0]] + [band for det in coeffs[1 : 1 + detail_levels] for band in det]
    return np.concatenate([p.reshape(len(images), -1) for p in parts], axis=1)


# ---------------------------------------------------------------- DWT + PCA (CSO)
def dwt_coefficients(images: np.ndarray, wavelet: str = "db4", levels: int = 3,
                     coeffs: str = "approx") -> np.ndarray:  # fmt: skip
    """2-D DWT coefficients ``(N, F)``; ``coeffs`` = 'approx' (level-L LL band) or 'all'."""
    check_size(images.shape[-1], levels, "cso")
    if coeffs not in ("approx", "all"):
        raise FeatureError(f"cso: coeffs must be 'approx' or 'all', got {coeffs!r}")
    c = pywt.wavedec2(images.astype(np.float64), wavelet, mode="periodization", level=levels,
                      axes=(-2, -1))  # fmt: skip
    parts = [c[0]] if coeffs == "approx" else [c[0]] + [band for det in c[1:] for band in det]
    return np.concatenate([p.reshape(len(images), -1) for p in parts], axis=1).astype(np.float32)


def fit_pca(x: np.ndarray, n_components: int | None = None, variance: float | None = None,
            max_components: int | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """PCA by SVD of the centred train rows -> (mean, components (k, F), explained fraction).

    k = ``n_components``, or the fewest components whose explained variance reaches
    ``variance`` (e.g. 0.95); never more than ``max_components`` nor min(n - 1, F).
    """
    if (n_components is None) == (variance is None):
        raise ValueError("fit_pca: give exactly one of n_components and variance")
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    ev = s**2
    frac = np.cumsum(ev) / ev.sum() if ev.sum() > 0 else np.ones_like(ev)
    k = n_components if variance is None else int(np.searchsorted(frac, variance - 1e-12) + 1)
    k = max(1, min(k, x.shape[0] - 1, x.shape[1], max_components or k))
    comp = vt[:k]
    # deterministic sign: the largest-|loading| entry of each component is positive
    signs = np.sign(comp[np.arange(k), np.abs(comp).argmax(axis=1)])
    return mean, comp * signs[:, None], float(frac[k - 1])


def apply_pca(x: np.ndarray, pca: tuple[np.ndarray, np.ndarray, float]) -> np.ndarray:
    mean, comp, _ = pca
    return (x - mean) @ comp.T


# ---------------------------------------------------------------- SWE (BBO)
def _entropy_rows(v: np.ndarray, kind: str, bins: int) -> np.ndarray:
    """Shannon entropy (bits) of each row of ``v`` (M, K).

    histogram: p = histogram of the row's values over ``bins`` equal bins spanning its
      [min, max]; a constant row has one occupied bin -> 0 bits; max log2(bins).
    energy: p_i = v_i**2 / sum v**2 (wavelet energy entropy); an all-zero row -> 0 bits.
    """
    m = v.shape[0]
    if kind == "histogram":
        lo = v.min(axis=1, keepdims=True)
        span = v.max(axis=1, keepdims=True) - lo
        scale = np.where(span > 0, bins / np.where(span > 0, span, 1.0), 0.0)
        idx = np.minimum(((v - lo) * scale).astype(np.int64), bins - 1)
        counts = np.bincount((idx + np.arange(m)[:, None] * bins).ravel(), minlength=m * bins)
        p = counts.reshape(m, bins) / v.shape[1]
    elif kind == "energy":
        e = v.astype(np.float64) ** 2
        tot = e.sum(axis=1, keepdims=True)
        p = np.divide(e, tot, out=np.zeros_like(e), where=tot > 0)
    else:
        raise FeatureError(f"bbo: swe_entropy must be 'histogram' or 'energy', got {kind!r}")
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
    return terms.sum(axis=1)


def swe_features(images: np.ndarray, wavelet: str = "db4", levels: int = 4,
                 entropy: str = "energy", bins: int = 32, grid: int = 1) -> np.ndarray:  # fmt: skip
    """Stationary wavelet entropy ``(N, (1 + 3*levels) * grid**2)``.

    ``pywt.swt2`` (undecimated, so every subband keeps the image size) to ``levels``;
    subband order [cA_L, cH_L, cV_L, cD_L, ..., cH_1, cV_1, cD_1]; each subband split
    into ``grid`` x ``grid`` blocks (grid=1: the whole subband, as in the papers) and
    the entropy of each block (see :func:`_entropy_rows`) is one feature. Coefficients
    below 1e-9 x the image's max |value| (x 2**levels) count as 0 (transform round-off).
    A constant image gives 0 bits for every subband with 'histogram'; with 'energy' its
    details are 0 bits and its approximation, flat, log2(S*S) bits.
    """
    size = images.shape[-1]
    check_size(size, levels, "bbo")
    if grid < 1 or size % grid:
        raise FeatureError(f"bbo: swe_grid={grid} must be >= 1 and divide image_size={size}")
    if bins < 2:
        raise FeatureError(f"bbo: swe_bins must be >= 2, got {bins}")
    n = len(images)
    c = pywt.swt2(images.astype(np.float64), wavelet, level=levels, trim_approx=True,
                  axes=(-2, -1))  # fmt: skip
    bands = [c[0]] + [band for det in c[1:] for band in det]
    # round-off of the transform (e.g. ~1e-16 "details" of a flat image) is exact zero here,
    # else the scale-free entropies would be computed on numerical noise
    tol = 1e-9 * np.abs(images).reshape(n, -1).max(axis=1).clip(min=1e-12) * 2.0**levels
    b = size // grid
    feats = []
    for band in bands:
        band = np.where(np.abs(band) <= tol[:, None, None], 0.0, band)
        blocks = band.reshape(n, grid, b, grid, b).transpose(0, 1, 3, 2, 4).reshape(n * grid * grid, b * b)
        feats.append(_entropy_rows(blocks, entropy, bins).reshape(n, grid * grid))
    return np.concatenate(feats, axis=1).astype(np.float32)


# ---------------------------------------------------------------- per-fold helpers
def fit_standardizer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of the train rows; constant columns get std 1 (they stay 0)."""
    mu = x.mean(axis=0)
    sd = x.std(axis=0)
    return mu, np.where(sd > 1e-8, sd, 1.0)


def standardize(x: np.ndarray, stats: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return ((x - stats[0]) / stats[1]).astype(np.float32)
