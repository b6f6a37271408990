"""The run's class list: decided once at ingest (``data.classes``), read by every stage.

- ``paper`` (default): the paper's seven expressions in the paper's order; other labels are
  dropped (``ingest.drop_unknown_labels``) or rejected, and a missing class fails validate.
- ``auto``: the classes present after ingest, the paper's ones first (in the paper's order),
  any others (e.g. ``contempt``) appended alphabetically.
- an explicit list: exactly these classes in this order; it also decides which labels are
  kept.

Ingest writes the result next to the manifest (``classes.json``); train, baselines,
aggregate, compare, report, final_model and predict take it from there (and fold results,
model metadata and aggregate summaries carry it on), never from a constant.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .config import CLASSES as PAPER_CLASSES
from .config import ParamsError
from .io import write_json

CLASSES_FILE = "classes.json"
SETTINGS = ("paper", "auto")


def check_setting(setting) -> None:
    if isinstance(setting, str) and setting in SETTINGS:
        return
    if isinstance(setting, list) and setting and all(isinstance(c, str) and c.strip() for c in setting):
        if len(set(setting)) != len(setting):
            raise ParamsError(f"params.yaml: data.classes: a class is listed twice: {setting}")
        return
    raise ParamsError(f"params.yaml: data.classes: expected 'paper', 'auto' or a list of class names, got {setting!r}")


def wanted(setting) -> tuple[str, ...] | None:
    """The labels ingest keeps (None = every label, for ``auto``)."""
    if setting == "paper":
        return PAPER_CLASSES
    if setting == "auto":
        return None
    return tuple(str(c).strip().lower() for c in setting)


def resolve(setting, present: Iterable[str]) -> tuple[str, ...]:
    """The run's class list from the setting and the labels present after ingest."""
    keep = wanted(setting)
    if keep is not None:
        return keep
    present = set(present)
    return tuple(c for c in PAPER_CLASSES if c in present) + tuple(sorted(present - set(PAPER_CLASSES)))


def write(ingest_dir: Path | str, classes: Sequence[str], setting) -> None:
    write_json(Path(ingest_dir) / CLASSES_FILE, {"classes": list(classes), "setting": setting,
                                                 "matches_paper": matches_paper(classes)})  # fmt: skip


def read(manifest_path: Path | str) -> tuple[str, ...]:
    """The class list recorded beside ``manifest_path``; the paper's seven for a workspace
    ingested before the list was recorded."""
    path = Path(manifest_path).parent / CLASSES_FILE
    if not path.exists():
        return PAPER_CLASSES
    try:
        classes = json.loads(path.read_text())["classes"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: unreadable class list ({exc}); rerun the ingest stage") from exc
    if not classes or len(set(classes)) != len(classes):
        raise ValueError(f"{path}: expected a list of distinct class names, got {classes!r}")
    return tuple(classes)


def read_setting(manifest_path: Path | str):
    """The ``data.classes`` setting ingest used ('paper' for an older workspace)."""
    path = Path(manifest_path).parent / CLASSES_FILE
    try:
        return json.loads(path.read_text()).get("setting", "paper")
    except (OSError, ValueError, AttributeError):
        return "paper"


def matches_paper(classes: Sequence[str]) -> bool:
    """True when the classes are the paper's seven (published numbers are comparable)."""
    return tuple(classes) == PAPER_CLASSES


def label_ids(labels: Iterable[str], classes: Sequence[str], where: str = "manifest") -> np.ndarray:
    """Class indices of ``labels``; a label outside ``classes`` is a named error."""
    index = {c: i for i, c in enumerate(classes)}
    labels = list(labels)
    bad = sorted({lab for lab in labels if lab not in index})
    if bad:
        row = next(i for i, lab in enumerate(labels) if lab in bad)
        raise ValueError(f"{where}: label(s) {bad} are not in the run's classes {list(classes)} "
                         f"(first at row {row + 2}); rerun ingest with data.classes set accordingly")  # fmt: skip
    return np.array([index[lab] for lab in labels], dtype=np.int64)
