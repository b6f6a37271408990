"""The paper's evaluation (eq. 7-11): summed confusion matrices, sensitivity, OA.

Pure functions over numpy arrays so the paper's own tables can be fed in as a test.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .config import CLASSES


def run_matrix(fold_matrices: Iterable[np.ndarray]) -> np.ndarray:
    """H(r): the sum of one run's test-fold confusion matrices (rows true, cols predicted)."""
    return np.sum(np.stack(list(fold_matrices)), axis=0)


def sensitivity(h: np.ndarray) -> np.ndarray:
    """E(t) = H_tt / sum_i H_ti, per class (NaN for a class with no test images)."""
    rows = h.sum(axis=1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rows > 0, np.diag(h) / rows, np.nan)


def overall_accuracy(h: np.ndarray) -> float:
    """OA = trace(H) / sum(H)."""
    return float(np.trace(h) / h.sum())


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (n-1), as the paper reports them."""
    v = np.asarray(values, dtype=float)
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def summarize(run_matrices: dict[int, np.ndarray], classes=CLASSES) -> dict:
    """Per-run OA and sensitivities plus their mean ± std and the grand matrix (percent)."""
    runs = sorted(run_matrices)
    oa = [100 * overall_accuracy(run_matrices[r]) for r in runs]
    sens = np.array([100 * sensitivity(run_matrices[r]) for r in runs])
    oa_mean, oa_std = mean_std(oa)
    per_class = {c: mean_std(sens[:, i]) for i, c in enumerate(classes)}
    grand = np.sum([run_matrices[r] for r in runs], axis=0)
    return {
        "classes": list(classes),
        "runs": runs,
        "oa_per_run": oa,
        "sensitivity_per_run": sens.tolist(),
        "oa_mean": oa_mean,
        "oa_std": oa_std,
        "sensitivity_mean": {c: m for c, (m, _) in per_class.items()},
        "sensitivity_std": {c: s for c, (_, s) in per_class.items()},
        "grand_matrix": grand.astype(int).tolist(),
        "grand_oa": 100 * overall_accuracy(grand),
    }


# Training accuracy under which a fold's model counts as under-trained (flagged in its fold
# result and warned about by aggregate): it does not even fit the data it was trained on.
UNDERFIT_BELOW = 0.95


def accuracy_and_log_loss(prob: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of class probabilities ``prob`` (n, C) for labels ``y``:
    how a validation group chooses a hyper-parameter (accuracy first, then the loss)."""
    acc = float((prob.argmax(1) == y).mean())
    loss = float(-np.log(np.clip(prob[np.arange(len(y)), y], 1e-12, None)).mean())
    return acc, loss


def pm(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {std:.2f}"
