"""Protocol audit: what a test image's fold lets a model memorise.

For every test image of every fold of the split plan: is the same subject among the fold's
training images, is a *sibling* (the same subject with the same expression label, i.e.
another shot of the same pose) among them, and how similar is the most similar training
image pixel by pixel (cosine of 32 px gray, zero-mean images: the ``nn_pixels`` baseline's
measure). JAFFE holds 2-4 near-identical shots per person and expression, so on the
paper's image-level (``stratified``) protocol nearly every test image has a sibling in
training, and a classifier can score well by recognising the person's photo. The split
stage reports the sibling shares; aggregate splits every method's accuracy by them.

Without subject ids (a dataset that has none) the subject columns are empty and the
audit says it cannot tell, and why; the pixel similarity is still measured.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .pixels import load_gray, unit_pixels

AUDIT_COLUMNS = ("protocol", "run", "fold", "image", "subject_in_train", "sibling_in_train", "max_pixel_similarity")
PIXEL_SIZE = 32
NO_SUBJECTS = "the manifest has no subject ids, so whether a test person also appears in training cannot be told"


def has_subjects(manifest: pd.DataFrame) -> bool:
    if "subject" not in manifest:
        return False
    return bool(manifest["subject"].fillna("").astype(str).str.strip().ne("").all())


def pixel_vectors(manifest: pd.DataFrame, root: Path, size: int = PIXEL_SIZE) -> np.ndarray:
    """Gray ``size`` px images, each zero-mean and unit-norm: (N, size * size)."""
    return unit_pixels(load_gray(manifest["path"].tolist(), Path(root), size))


def audit_plan(plan: pd.DataFrame, manifest: pd.DataFrame, pixels: np.ndarray | None) -> pd.DataFrame:
    """One row per (protocol, run, fold, test image): see the module docstring."""
    index_of = {p: i for i, p in enumerate(manifest["path"])}
    subjects = manifest["subject"].astype(str).to_numpy() if has_subjects(manifest) else None
    labels = manifest["label"].astype(str).to_numpy()
    rows = []
    for (protocol, run, fold), df in plan.groupby(["protocol", "run", "fold"], sort=False):
        train = np.array([index_of[i] for i in df.loc[df["role"] == "train", "image"]])
        test = np.array([index_of[i] for i in df.loc[df["role"] == "test", "image"]])
        sim = (pixels[test] @ pixels[train].T).max(1) if pixels is not None else np.full(len(test), np.nan)
        if subjects is not None:
            seen = set(subjects[train])
            seen_pose = set(zip(subjects[train], labels[train], strict=True))
            same = [subjects[t] in seen for t in test]
            sibling = [(subjects[t], labels[t]) in seen_pose for t in test]
        else:
            same = sibling = [None] * len(test)
        rows += [(protocol, int(run), int(fold), manifest["path"].iloc[t], a, b, round(float(s), 6))
                 for t, a, b, s in zip(test, same, sibling, sim, strict=True)]  # fmt: skip
    return pd.DataFrame(rows, columns=list(AUDIT_COLUMNS))


def shares(audit: pd.DataFrame) -> dict:
    """Per protocol: share of test images (over all runs) with the same subject / a sibling in training."""
    out = {}
    for protocol, df in audit.groupby("protocol", sort=False):
        known = df["sibling_in_train"].notna().all() and len(df)
        out[str(protocol)] = {
            "n_test_predictions": int(len(df)),
            "subject_in_train_share": float(df["subject_in_train"].astype(bool).mean()) if known else None,
            "sibling_in_train_share": float(df["sibling_in_train"].astype(bool).mean()) if known else None,
            "max_pixel_similarity_median": float(df["max_pixel_similarity"].median()),
            **({} if known else {"why_unknown": NO_SUBJECTS}),
        }  # fmt: skip
    return out


def read_audit(path: Path | str) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: protocol audit not found (run the split stage)")
    df = pd.read_csv(path, dtype={"image": str, "protocol": str})
    missing = set(AUDIT_COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"{path}: protocol audit lacks column(s) {sorted(missing)}")
    for col in ("subject_in_train", "sibling_in_train"):  # CSV booleans; empty = unknown
        df[col] = df[col].map({True: True, False: False, "True": True, "False": False})
    return df


def accuracy_by_sibling(folds, audit: pd.DataFrame) -> dict | None:
    """A method's accuracy on the test images with and without a sibling in their fold's
    training images (pooled over runs). None when the audit cannot tell (no subject ids)."""
    if audit.empty or audit["sibling_in_train"].isna().any():
        return None
    key = audit.set_index(["run", "fold", "image"])["sibling_in_train"]
    counts = {True: [0, 0], False: [0, 0]}
    for f in folds:
        for img, t, p in zip(f.images, f.y_true, f.y_pred, strict=True):
            if (f.run, f.fold, img) not in key.index:
                raise ValueError(f"{f.method}/{f.protocol} run {f.run} fold {f.fold}: test image {img} is not in the "
                                 "protocol audit: the fold results come from another split plan (rerun split, then "
                                 "train/baselines)")  # fmt: skip
            has = bool(key.loc[(f.run, f.fold, img)])
            counts[has][0] += int(t == p)
            counts[has][1] += 1
    return {name: {"n": n, "accuracy": round(100 * right / n, 4) if n else None}
            for name, (right, n) in (("with_sibling", counts[True]), ("without_sibling", counts[False]))}  # fmt: skip
