"""Shared fixtures: tiny generated face-like images, never real data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
SHARED_JAFFE = REPO.parent / "shared" / "data" / "jaffe"


def make_image(path: Path, seed: int, size: int = 40, mode: str = "L") -> Path:
    """A small distinct gray/colour image; seed makes its bytes unique."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size, size) if mode == "L" else (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)
    return path


def write_params(path: Path, **sections) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(sections))
    return path


@pytest.fixture
def tiny_params(tmp_path) -> Path:
    """A fast CPU config: small images, few runs/groups."""
    return write_params(
        tmp_path / "params.yaml",
        ingest={"image_size": 32},
        split={"protocols": ["stratified", "subject"], "n_runs": 2, "n_groups": 3, "seed": 7},
    )


@pytest.fixture
def jaffe_like(tmp_path) -> Path:
    """JAFFE-named folder: 4 subjects x 7 expressions x 2 shots = 56 images."""
    root = tmp_path / "jaffe"
    codes = ["AN", "DI", "FE", "HA", "NE", "SA", "SU"]
    i = 0
    for subj in ["KA", "KL", "KM", "KR"]:
        for code in codes:
            for shot in (1, 2):
                i += 1
                make_image(root / f"{subj}.{code}{shot}.{i}.tiff", seed=i)
    return root


def jaffe_available() -> bool:
    return SHARED_JAFFE.is_dir() and len(list(SHARED_JAFFE.glob("*.tiff"))) == 213
