"""Frozen-backbone features: ResNet-50 feature maps tapped and pooled on a spatial grid.

A *tap* is ``<layer>:<grid>``: the output of ``stem`` (conv1 + BN + ReLU + max-pool) or
``layer1``..``layer4``, average-pooled to a ``grid x grid`` layout (1 = the global average
the paper's network uses) and flattened channel-major. Global pooling of layer4 throws
away where on the face a pattern is; a grid over a mid-level map keeps the layout
(docs/features.md measures it). Several taps are concatenated.

Computed once per (weights, images, size, precision, threads, torch, taps) for every image
and its flip, and cached next to the train results, so the train and final_model stages
share one forward pass over the data (the final model's ``FerNet`` computes the same taps
with :func:`tap_features` at serving time).
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

from .config import ParamsError
from .finetune import autocast, to_input
from .foldio import config_hash
from .io import atomic_path

log = logging.getLogger("ferpipe.features")

CACHE_NAME = "features_cache_{size}.npz"  # one per input size, next to the train results


def cache_path(folder: Path | str, size: int) -> Path:
    return Path(folder) / CACHE_NAME.format(size=size)
KEY_FIELDS = ("image_size", "stride_layout", "threads", "flip_features", "weights_sha256", "manifest_sha256",
              "torch", "device", "dtype", "taps")  # fmt: skip
LAYERS = ("stem", "layer1", "layer2", "layer3", "layer4")
CHANNELS = {"stem": 64, "layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}
STRIDE = {"stem": 4, "layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}  # input px per map cell
GAP_TAPS = ("layer4:1",)  # the paper's network: global average of layer4


def parse_tap(tap: str, key: str = "train.taps", image_size: int | None = None) -> tuple[str, int]:
    """'layer2:3' -> ('layer2', 3); a bad name or grid fails naming the key and what is allowed."""
    layer, _, grid = str(tap).partition(":")
    if layer not in LAYERS:
        raise ParamsError(f"params.yaml: {key}: unknown tap {tap!r}; expected <layer>:<grid> with layer one of "
                          f"{list(LAYERS)} (e.g. layer2:3)")  # fmt: skip
    if not grid.isdigit() or int(grid) < 1:
        raise ParamsError(f"params.yaml: {key}: tap {tap!r} needs a grid of 1 or more (e.g. {layer}:3; 1 = global average)")
    side = image_size // STRIDE[layer] if image_size else None
    if side is not None and int(grid) > side:
        raise ParamsError(f"params.yaml: {key}: tap {tap!r}: a grid of {grid} is larger than the {side} x {side} map "
                          f"{layer} has at {image_size} px (allowed 1..{side})")  # fmt: skip
    return layer, int(grid)


def check_taps(taps, key: str = "train.taps", image_size: int | None = None) -> list[str]:
    if not isinstance(taps, (list, tuple)) or not taps:
        raise ParamsError(f"params.yaml: {key}: expected a non-empty list of taps <layer>:<grid>, layer one of "
                          f"{list(LAYERS)} (e.g. [layer2:3, layer3:3]); got {taps!r}")  # fmt: skip
    for t in taps:
        parse_tap(t, key, image_size)
    if len(set(taps)) != len(taps):
        raise ParamsError(f"params.yaml: {key}: a tap is listed twice in {list(taps)}")
    return list(taps)


def tap_dim(tap: str) -> int:
    layer, grid = parse_tap(tap)
    return CHANNELS[layer] * grid * grid


def tap_features(backbone: nn.Module, x: torch.Tensor, taps) -> torch.Tensor:
    """Network input (N, 3, H, W) -> the taps' pooled maps, concatenated: (N, sum of tap_dim).

    Runs the backbone only as deep as the deepest tap."""
    wanted = [parse_tap(t) for t in taps]
    deepest = max(LAYERS.index(layer) for layer, _ in wanted)
    maps = {}
    h = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))
    maps["stem"] = h
    for name in LAYERS[1 : deepest + 1]:
        h = getattr(backbone, name)(h)
        maps[name] = h
    pooled = [torch.nn.functional.adaptive_avg_pool2d(maps[layer], grid).flatten(1) for layer, grid in wanted]
    return torch.cat(pooled, 1)


def run_identity(weights_sha256: str, manifest_sha256: str, device: torch.device, dtype) -> dict:
    """What, besides the train params, decides the features (and so enters the cache key and
    the train config hash): the weights, the images, torch, the device and the precision."""
    return {"weights_sha256": weights_sha256, "manifest_sha256": manifest_sha256, "torch": torch.__version__,
            "device": device.type, "dtype": str(dtype)}  # fmt: skip


@torch.no_grad()
def extract_features(backbone: nn.Module, images: torch.Tensor, batch_size: int, flip: bool,
                     device: torch.device, dtype, taps=GAP_TAPS) -> np.ndarray:  # fmt: skip
    """Tapped features of (image[, flipped image]): shape (views, N, sum of tap_dim)."""
    backbone = backbone.to(device).eval().to(memory_format=torch.channels_last)
    views = [False, True] if flip else [False]
    out = np.zeros((len(views), len(images), sum(tap_dim(t) for t in taps)), dtype=np.float32)
    total = len(views) * math.ceil(len(images) / batch_size)
    with tqdm(total=total, desc="features", unit="batch", disable=None, mininterval=5) as bar:
        for v, flipped in enumerate(views):
            for s in range(0, len(images), batch_size):
                x = to_input(images[s : s + batch_size], device)
                if flipped:
                    x = torch.flip(x, dims=[3])
                with autocast(device, dtype):
                    f = tap_features(backbone, x, taps)
                out[v, s : s + len(x)] = f.float().cpu().numpy()
                bar.update()
    return out


def split_taps(feats: np.ndarray, taps, wanted) -> np.ndarray:
    """The columns of ``wanted`` taps (in that order) from features computed for ``taps``."""
    starts, at = {}, 0
    for t in taps:
        starts[t] = (at, at + tap_dim(t))
        at += tap_dim(t)
    return np.concatenate([feats[..., slice(*starts[t])] for t in wanted], axis=-1)


def cached_features(cache: Path | None, key: dict, compute: Callable[[], np.ndarray], write: bool = True) -> np.ndarray:
    """The cached array when its key (``KEY_FIELDS`` of ``key``) matches, else ``compute()``
    (saved when ``write``; no cache at all when ``cache`` is None)."""
    digest = config_hash({k: key[k] for k in KEY_FIELDS})  # "taps": the union computed, in order
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
