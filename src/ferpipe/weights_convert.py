"""Reading Keras' TensorFlow.js ResNet-50 and converting it to torchvision names and layout.

Kernels HWIO -> OIHW; each conv bias folded into the following BatchNorm; the Keras BN
epsilon (1e-3) folded into running_var; Keras' caffe input (BGR, 0-255, minus the mean
pixel) folded into conv1 so torchvision's RGB [0, 1] normalisation applies; the dense
kernel transposed for ``fc``. Used by the weights stage (:mod:`ferpipe.weights`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from .model import build_resnet50
from .weights_fetch import WeightsError

KERAS_BN_EPS = 1e-3  # Keras BatchNormalization default (and the value in this model.json)
TORCH_BN_EPS = 1e-5  # torch.nn.BatchNorm2d default
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # keras.applications caffe preprocessing


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
