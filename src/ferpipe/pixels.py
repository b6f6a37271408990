"""Raw face pixels, the way the wavelet baselines, the memorisation floor (``nn_pixels``)
and the protocol audit read them: gray, resized once, and (for similarity) each image
zero-mean and unit-norm, so a dot product is the cosine similarity of two faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def load_gray(paths: list[str], root: Path | str, size: int) -> np.ndarray:
    """Decode images once into float32 ``(N, size, size)`` in [0, 1] (bicubic, antialiased).

    RGB inputs are converted with PIL's ``convert('L')`` (the ingested JAFFE faces are gray
    replicated to 3 channels, so this returns the original gray values).
    """
    root = Path(root)
    out = np.empty((len(paths), size, size), dtype=np.float32)
    for i, rel in enumerate(paths):
        with Image.open(root / rel) as im:
            im = im.convert("L")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            out[i] = np.asarray(im, dtype=np.float32) / 255.0
    return out


def unit_pixels(images: np.ndarray) -> np.ndarray:
    """(N, S, S) -> (N, S * S): each image zero-mean and unit-norm (float32)."""
    x = images.reshape(len(images), -1).astype(np.float64)
    x -= x.mean(1, keepdims=True)
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)
