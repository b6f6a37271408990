"""Loading the ingested images and the split plan (shared by train, baselines, final model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from . import classes
from .config import CLASSES as PAPER_CLASSES


def read_manifest(path: Path | str) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: manifest not found (run the ingest stage first)")
    return pd.read_csv(path, dtype={"subject": str, "sha256": str}, keep_default_na=False)


def labels_of(manifest: pd.DataFrame, run_classes=PAPER_CLASSES) -> np.ndarray:
    """Class indices in the run's class list (ferpipe.classes); unknown labels are a named error."""
    return classes.label_ids(manifest["label"], run_classes)


def load_images_uint8(manifest: pd.DataFrame, root: Path, size: int) -> torch.Tensor:
    """All images decoded once into one (N, 3, size, size) uint8 tensor."""
    out = torch.empty((len(manifest), 3, size, size), dtype=torch.uint8)
    for i, rel in enumerate(manifest["path"]):
        with Image.open(root / rel) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            out[i] = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)
    return out
