"""Frozen-backbone features: pooled 2048-d ResNet-50 features of every image and its flip.

Computed once per (weights, images, size, precision, threads, torch) and cached next to the
train results, so the train and final_model stages share one forward pass over the data.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .finetune import autocast, to_input
from .foldio import config_hash
from .io import atomic_path

log = logging.getLogger("ferpipe.features")

CACHE_NAME = "features_cache.npz"
KEY_FIELDS = ("image_size", "stride_layout", "threads", "flip_features", "weights_sha256", "manifest_sha256",
              "torch", "device", "dtype")  # fmt: skip


def run_identity(weights_sha256: str, manifest_sha256: str, device: torch.device, dtype) -> dict:
    """What, besides the train params, decides the features (and so enters the cache key and
    the train config hash): the weights, the images, torch, the device and the precision."""
    return {"weights_sha256": weights_sha256, "manifest_sha256": manifest_sha256, "torch": torch.__version__,
            "device": device.type, "dtype": str(dtype)}  # fmt: skip


@torch.no_grad()
def extract_features(backbone: nn.Module, images: torch.Tensor, batch_size: int, flip: bool,
                     device: torch.device, dtype) -> np.ndarray:  # fmt: skip
    """Pooled features of (image[, flipped image]): shape (views, N, 2048)."""
    backbone = backbone.to(device).eval().to(memory_format=torch.channels_last)
    backbone.fc = nn.Identity()
    views = [False, True] if flip else [False]
    out = np.zeros((len(views), len(images), 2048), dtype=np.float32)
    total = len(views) * math.ceil(len(images) / batch_size)
    with tqdm(total=total, desc="features", unit="batch", disable=None, mininterval=5) as bar:
        for v, flipped in enumerate(views):
            for s in range(0, len(images), batch_size):
                x = to_input(images[s : s + batch_size], device)
                if flipped:
                    x = torch.flip(x, dims=[3])
                with autocast(device, dtype):
                    f = backbone(x)
                out[v, s : s + len(x)] = f.float().cpu().numpy()
                bar.update()
    return out


def cached_features(cache: Path | None, key: dict, compute: Callable[[], np.ndarray], write: bool = True) -> np.ndarray:
    """The cached array when its key (``KEY_FIELDS`` of ``key``) matches, else ``compute()``
    (saved when ``write``; no cache at all when ``cache`` is None)."""
    digest = config_hash({k: key[k] for k in KEY_FIELDS})
    if cache is not None and cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as z:
                if str(z["key"]) == digest:
                    log.info("features: cache hit %s", cache)
                    return z["features"]
        except (OSError, ValueError, KeyError) as exc:  # a damaged cache is recomputed, never trusted
            log.warning("features: ignoring unreadable cache %s (%s)", cache, exc)
    feats = compute()
    if write and cache is not None:
        with atomic_path(cache, suffix=".tmp.npz") as tmp:
            np.savez(tmp, features=feats, key=np.array(digest))
    return feats
