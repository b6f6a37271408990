"""The fold-result format shared by ResNet-50 training and the baselines.

One JSON file per (protocol, run, fold) under ``<results_dir>/<protocol>/``:
``run01_fold03.json``. It holds the test predictions and the test confusion matrix
(rows = true class, columns = predicted, paper eq. 7) plus a ``config_hash`` so a
rerun with the same config skips the fold (resume) and a changed config recomputes it.
The aggregate stage reads these files for any method.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import CLASSES
from .io import write_json


def config_hash(config: dict[str, Any]) -> str:
    """Stable hash of a JSON-serialisable config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n: int = len(CLASSES)):
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


@dataclass
class FoldResult:
    method: str
    protocol: str
    run: int  # 1-based, as in the paper's tables
    fold: int  # 1-based; fold k tests group k
    config_hash: str
    images: list[str]
    y_true: list[int]
    y_pred: list[int]
    probabilities: list[list[float]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # curves, chosen hyperparams
    classes: tuple[str, ...] = CLASSES  # the run's class list (ferpipe.classes): label i is classes[i]
    # wall time of this computation: a run fact, not a result, so never written to the fold
    # file (that stays byte-identical on a rerun); train/baselines keep it in their run record
    seconds: float | None = field(default=None, compare=False)

    @property
    def confusion_matrix(self) -> np.ndarray:
        return confusion_matrix(self.y_true, self.y_pred, len(self.classes))

    @property
    def accuracy(self) -> float:
        yt, yp = np.asarray(self.y_true), np.asarray(self.y_pred)
        return float((yt == yp).mean()) if len(yt) else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "protocol": self.protocol,
            "run": self.run,
            "fold": self.fold,
            "config_hash": self.config_hash,
            "classes": list(self.classes),
            "accuracy": self.accuracy,
            "confusion_matrix": self.confusion_matrix.tolist(),
            "images": self.images,
            "y_true": [int(v) for v in self.y_true],
            "y_pred": [int(v) for v in self.y_pred],
            "probabilities": self.probabilities,
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FoldResult:
        return cls(
            method=d["method"],
            protocol=d["protocol"],
            run=int(d["run"]),
            fold=int(d["fold"]),
            config_hash=d["config_hash"],
            images=list(d["images"]),
            y_true=list(d["y_true"]),
            y_pred=list(d["y_pred"]),
            probabilities=d.get("probabilities"),
            extra=d.get("extra", {}),
            classes=tuple(d.get("classes", CLASSES)),  # files from before the class list: the paper's seven
        )


def fold_path(results_dir: Path | str, protocol: str, run: int, fold: int) -> Path:
    return Path(results_dir) / protocol / f"run{run:02d}_fold{fold:02d}.json"


def save_fold(results_dir: Path | str, result: FoldResult) -> Path:
    path = fold_path(results_dir, result.protocol, result.run, result.fold)
    write_json(path, result.to_json())  # atomic: a killed run never leaves half a file
    return path


def load_fold(path: Path | str) -> FoldResult:
    with open(path) as fh:
        return FoldResult.from_json(json.load(fh))


def finished_fold(
    results_dir: Path | str, protocol: str, run: int, fold: int, cfg_hash: str
) -> FoldResult | None:
    """The saved result if this fold already finished with the same config, else None."""
    path = fold_path(results_dir, protocol, run, fold)
    if not path.exists():
        return None
    try:
        res = load_fold(path)
    except (json.JSONDecodeError, KeyError, ValueError):
        return None  # unreadable leftovers are recomputed, never trusted
    return res if res.config_hash == cfg_hash else None


def load_results(results_dir: Path | str, protocol: str) -> list[FoldResult]:
    files = sorted((Path(results_dir) / protocol).glob("run*_fold*.json"))
    return [load_fold(f) for f in files]


def group_by_run(folds: list[FoldResult]) -> dict[int, list[FoldResult]]:
    """{run: [FoldResult, ...]} in the order given."""
    out: dict[int, list[FoldResult]] = {}
    for f in folds:
        out.setdefault(f.run, []).append(f)
    return out


def check_complete(method: str, protocol: str, by_run: dict[int, list[FoldResult]]) -> None:
    """Refuse, with a named error, results that are not whole runs of one configuration:
    every run has folds 1..G (the same G), no image is tested twice within a run, every run
    tests the same images, and every fold carries the same config hash."""
    where = f"{method}/{protocol}"
    class_lists = {f.classes for fs in by_run.values() for f in fs}
    if len(class_lists) > 1:
        raise ValueError(f"{where}: fold results with different class lists {sorted(class_lists)}: rerun the stage")
    # a fold's config_hash may also cover its images (baselines: resume safety); the method's
    # configuration is then in extra.method_config_hash
    hashes = {f.extra.get("method_config_hash") or f.config_hash for fs in by_run.values() for f in fs}
    if len(hashes) > 1:
        raise ValueError(f"{where}: fold results from {len(hashes)} different configurations (config hashes "
                         f"{sorted(hashes)[:3]}...); a stage was changed mid-run: rerun it")  # fmt: skip
    n_groups = max(f.fold for fs in by_run.values() for f in fs)
    tested: dict[int, set] = {}
    for run, fs in sorted(by_run.items()):
        missing = sorted(set(range(1, n_groups + 1)) - {f.fold for f in fs})
        if missing:
            raise ValueError(f"{where}: run {run} lacks fold(s) {missing} of {n_groups} "
                             "(an interrupted or partial stage? rerun it)")  # fmt: skip
        seen: set = set()
        for f in sorted(fs, key=lambda f: f.fold):
            twice = seen.intersection(f.images)
            if twice:
                raise ValueError(f"{where}: run {run} fold {f.fold} tests {len(twice)} image(s) that an "
                                 f"earlier fold of the run already tested, e.g. {sorted(twice)[0]}")  # fmt: skip
            seen.update(f.images)
        tested[run] = seen
    first = min(tested)
    for run, seen in tested.items():
        if seen != tested[first]:
            diff = sorted(seen ^ tested[first])
            raise ValueError(f"{where}: run {run} tests other images than run {first} ({len(diff)} differ, "
                             f"e.g. {diff[0]}): the runs come from different split plans")  # fmt: skip
