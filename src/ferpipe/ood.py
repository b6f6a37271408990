"""How far a photo lies from the images a model was trained on (out-of-distribution flag).

Distance: ``1 - max_j cos(z(x), z(t_j))``, the cosine distance to the nearest training
image, where ``z`` is the model's pooled backbone feature standardised with the training
images' mean and standard deviation, and ``t_j`` are the training images. Cheap (one
matrix product against at most ``MAX_BANK`` stored rows) and needs no density model.

Threshold: calibrated on held-out images, never on the training images themselves (whose
distance to the bank is 0). For every fold of run 1 of the calibration protocol (the
person-independent ``subject`` one when the plan has it: a new user's photo shows a new
person), the reference is the fold's training images, and the threshold is the
``1 - alpha`` quantile of the distances of its **validation** images. The folds' **test**
images, not used to set it, give the flagged rate we report (it should be near ``alpha``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

ALPHA = 0.05  # share of held-out (in-distribution) validation images allowed above the threshold
MAX_BANK_VALUES = 2**23  # training features kept in a served model (32 MB fp32; seeded row subsample above it)
CHUNK = 1024  # query rows per matrix product (bounded memory)


@dataclasses.dataclass
class Reference:
    """Standardisation + the L2-normalised standardised training features (the bank)."""

    mu: np.ndarray
    sd: np.ndarray
    bank: np.ndarray

    @classmethod
    def fit(cls, feats: np.ndarray, max_bank: int | None = None, seed: int = 0) -> Reference:
        feats = np.asarray(feats, dtype=np.float64)
        max_bank = max_bank or max(MAX_BANK_VALUES // feats.shape[1], 1)
        mu, sd = feats.mean(0), feats.std(0) + 1e-6
        if len(feats) > max_bank:  # a fixed, seeded subsample keeps a served model small
            feats = feats[np.sort(np.random.default_rng(seed).choice(len(feats), max_bank, replace=False))]
        return cls(mu.astype(np.float32), sd.astype(np.float32), _unit((feats - mu) / sd).astype(np.float32))

    def distance(self, feats: np.ndarray) -> np.ndarray:
        """Cosine distance of each row to its nearest bank row (0 = a training image)."""
        feats = np.asarray(feats, dtype=np.float32)
        out = np.empty(len(feats), dtype=np.float64)
        for s in range(0, len(feats), CHUNK):
            z = _unit((feats[s : s + CHUNK] - self.mu) / self.sd)
            out[s : s + CHUNK] = 1.0 - (z @ self.bank.T).max(1)
        return np.clip(out, 0.0, 2.0)

    def tensors(self) -> dict[str, np.ndarray]:
        return {"ood.mu": self.mu, "ood.sd": self.sd, "ood.bank": self.bank}

    @classmethod
    def from_tensors(cls, t: dict) -> Reference:
        return cls(*(np.asarray(t[f"ood.{k}"], dtype=np.float32) for k in ("mu", "sd", "bank")))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def calibrate(feats: np.ndarray, folds: list, alpha: float = ALPHA) -> dict:
    """Threshold from the validation images of run 1's folds (subject protocol when planned).

    ``folds``: ``cv.plan_folds`` output, (protocol, run, fold, {role: manifest rows});
    ``feats``: (n_images, d) in manifest order. Returns the threshold, the rates at which
    validation and test images exceed it, and the test distances (for the report).
    """
    protocols = [f[0] for f in folds]
    protocol = "subject" if "subject" in protocols else protocols[0]
    first_run = min(f[1] for f in folds if f[0] == protocol)
    val_d, test_d = [], []
    for _p, _r, _f, roles in (f for f in folds if f[0] == protocol and f[1] == first_run):
        ref = Reference.fit(feats[roles["train"]])
        val_d.append(ref.distance(feats[roles["val"]]))
        test_d.append(ref.distance(feats[roles["test"]]))
    val, test = np.concatenate(val_d), np.concatenate(test_d)
    threshold = float(np.quantile(val, 1 - alpha, method="higher"))
    return {
        "threshold": threshold,
        "alpha": alpha,
        "protocol": protocol,
        "run": int(first_run),
        "folds": len(val_d),
        "n_validation": int(len(val)),
        "n_test": int(len(test)),
        "validation_flag_rate": float((val > threshold).mean()),
        "test_flag_rate": float((test > threshold).mean()),
        "test_distance_quantiles": {f"q{int(q * 100):02d}": float(np.quantile(test, q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)},
        "test_distances": [round(float(v), 5) for v in test],  # the report's histogram
    }
