"""final_model stage: one model trained on ALL the ingested images, saved, logged, registered.

The cross-validation stages measure the method; this stage builds the model a user runs
(``ferpipe.predict``, ``mlflow models serve``). Mode = ``train.mode``:

- frozen: the served method's (``resnet50_spatial``: ``train.taps``) backbone features of
  every image and its horizontal flip, read from the train stage's cache (both stages compute
  them in ``train.feature_precision``, fp32 by default: the precision the model serves in),
  standardised, a multinomial logistic-regression head
  with C = the value the folds of ``final_model.c_source`` selected most often (ties: the
  smaller C) or ``final_model.head_c`` when no fold results exist. The standardisation,
  the row-space projection and the head are folded into ONE ``nn.Linear``, so inference
  is a plain forward pass; the stage checks the fused module against the sklearn head.
- finetune: ``train.finetune_fold`` on all images (no test group), for the median best
  epoch the folds found (``train.epochs`` when there are none).

Outputs (``--out``): ``model.safetensors`` + ``model.json`` (classes, image size,
preprocessing, face-crop setting; see ``ferpipe.serving``), ``final_model_summary.json``
(chosen C, training accuracy, fusion check), ``run.json`` (timings) and, when logged, ``mlflow.json``.
MLflow: a pyfunc model (input: DataFrame column ``image`` = base64 file bytes), with a
signature and explicit pip requirements, registered as ``final_model.registered_model_name``
with alias ``final_model.alias``; its run is a child of the pipeline's parent run.

    python -m ferpipe.final_model --manifest artifacts/ingest/manifest.csv \\
        --weights models/resnet50_imagenet.safetensors --out artifacts/final_model --params params.yaml
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import classes, config, cv, data, finetune, heads, ood, tracking
from .config import IngestParams, ParamsError, register_section
from .features import (
    GAP_TAPS,
    cache_path,
    cached_features,
    extract_features,
    run_identity,
    split_taps,
)
from .io import sha256_file, swap_dir, temp_dir_beside, write_json, write_run_record
from .serving import FACE_CROPS, FerNet, save_model
from .train_params import TrainParams, resolve_runtime

log = logging.getLogger("ferpipe.final_model")

C_SOURCES = ("subject", "stratified", "any", "params")
PIP_PACKAGES = ("mlflow", "torch", "torchvision", "numpy", "pandas", "pillow", "opencv-python-headless",
                "safetensors", "pyyaml", "tqdm")  # fmt: skip


@register_section("final_model")
@dataclasses.dataclass
class FinalModelParams:
    registered_model_name: str = "ferpipe-resnet50"
    alias: str = "champion"
    # frozen head C: the most frequent choice of the folds of this protocol
    # (subject = person-independent, what a deployed model faces; any = all folds;
    # params = always head_c). head_c is also the fallback when no fold results exist.
    c_source: str = "subject"
    head_c: float = 0.1
    log_mlflow: bool = True
    register: bool = True  # register the logged model and point the alias at it
    input_example: bool = True  # log a small generated example (MLflow runs the model once on it)

    def check(self):
        if self.c_source not in C_SOURCES:
            raise ParamsError(f"params.yaml: final_model.c_source: expected one of {C_SOURCES}, got {self.c_source!r}")
        if self.head_c <= 0:
            raise ParamsError(f"params.yaml: final_model.head_c: expected a positive number, got {self.head_c}")
        if not self.registered_model_name.strip():
            raise ParamsError("params.yaml: final_model.registered_model_name: must not be empty")


# ---------------------------------------------------------------- choices from the folds
def fold_selections(method_dir: Path, source: str, key: str) -> tuple[collections.Counter, str]:
    """Counter of ``extra.selected[key]`` over the fold results of ``source`` (falls back to all)."""
    def count(pattern: str) -> collections.Counter:
        c: collections.Counter = collections.Counter()
        for f in sorted(method_dir.glob(pattern)):
            try:
                v = json.loads(f.read_text()).get("extra", {}).get("selected", {}).get(key)
            except (OSError, json.JSONDecodeError):
                continue
            if v is not None:
                c[v] += 1
        return c

    if source in ("subject", "stratified"):
        c = count(f"{source}/run*_fold*.json")
        if c:
            return c, source
    return count("*/run*_fold*.json"), "any"


def choose_c(train_dir: Path | None, method: str, fp: FinalModelParams) -> tuple[float, dict]:
    """The most frequently selected C (ties: the smaller, i.e. more regularised) or head_c."""
    if fp.c_source != "params" and train_dir is not None:
        counts, used = fold_selections(Path(train_dir) / method, fp.c_source, "C")
        if counts:
            c = min(counts, key=lambda v: (-counts[v], float(v)))
            return float(c), {"source": f"folds:{used}", "counts": {str(k): n for k, n in sorted(counts.items())}}
    return fp.head_c, {"source": "params:final_model.head_c", "counts": {}}


def choose_epochs(train_dir: Path | None, method: str, fp: FinalModelParams, p: TrainParams) -> tuple[int, dict]:
    if train_dir is not None:
        counts, used = fold_selections(Path(train_dir) / method, fp.c_source if fp.c_source != "params" else "any",
                                       "best_epoch")  # fmt: skip
        if counts:
            epochs = int(np.median(list(counts.elements())))
            return max(epochs, 1), {"source": f"folds:{used} (median best epoch)", "counts": dict(counts)}
    return p.epochs, {"source": "params:train.epochs", "counts": {}}


# ---------------------------------------------------------------- the two modes
def fuse_head(coef: np.ndarray, intercept: np.ndarray, basis: np.ndarray, mu: np.ndarray, sd: np.ndarray):
    """logits = (((f - mu) / sd) @ basis) @ coef.T + intercept, as one affine map of f."""
    a = basis @ coef.T  # (d, n_classes)
    weight = (a / sd[:, None]).T
    bias = intercept - (mu / sd) @ a
    return weight, bias


def fit_frozen(net: FerNet, feats: np.ndarray, y: np.ndarray, p: TrainParams, c: float, run_classes) -> dict:
    """Fit the softmax head on all images (+ flips) (ferpipe.heads) and fold it into ``net.head``."""
    timings = {}
    t0 = time.time()
    n_views = feats.shape[0]
    missing = [run_classes[i] for i in range(len(run_classes)) if not (y == i).any()]
    if missing:
        raise ValueError(f"the final model needs images of every class; missing: {missing}")
    x = np.concatenate([feats[v] for v in range(n_views)])
    space, coef, intercept, solver = heads.fit_head(x, np.tile(y, n_views), c, len(run_classes), p.head_max_iter,
                                                    p.head_tol)  # fmt: skip
    timings["fit_head_s"] = time.time() - t0
    weight, bias = fuse_head(coef.T, intercept, space.basis, space.mu, space.sd)
    with torch.no_grad():
        net.head.weight.copy_(torch.from_numpy(weight).float())
        net.head.bias.copy_(torch.from_numpy(bias).float())

    # the fused head must give the fitted head's probabilities (on the same features)
    from scipy.special import softmax

    ref = np.mean([softmax(space(feats[v]) @ coef + intercept, axis=1) for v in range(n_views)], axis=0)
    with torch.no_grad():
        fused = np.mean([torch.softmax(net.head(torch.from_numpy(feats[v]).float()), 1).numpy()
                         for v in range(n_views)], axis=0)  # fmt: skip
    return {
        "C": c,
        "train_accuracy": float((ref.argmax(1) == y).mean()),
        "fusion_max_abs_diff": float(np.abs(fused - ref).max()),
        "n_iter": solver["iterations"],
        "converged": solver["converged"],
        "row_space_dim": space.dim,
        "timings": timings,
        "_ref_proba": ref,
    }


def frozen_features(net: FerNet, images: torch.Tensor, p: TrainParams, key: dict, train_dir: Path | None,
                    device, dtype) -> np.ndarray:  # fmt: skip
    """The served head's features, read from the train stage's cache when it holds exactly these
    (same weights, images, precision, threads, torch, taps); computed otherwise (never written
    there: that folder is the train stage's output). The cache holds every frozen method's taps."""
    size = images.shape[-1]
    taps = p.taps_by_size().get(size, net.taps)  # the cache of this input size holds these taps

    def compute():
        feats = extract_features(net.backbone, images, p.batch_size, p.flip_features, device, dtype, taps)
        net.to("cpu")
        return feats

    cache = cache_path(train_dir, size) if train_dir is not None else None
    feats = cached_features(cache, {**key, "image_size": size, "taps": taps}, compute, write=False)
    return split_taps(feats, taps, net.taps)


def fit_finetune(net: FerNet, images: torch.Tensor, y: np.ndarray, p: TrainParams, pretrained: dict,
                 device, dtype, n_classes: int) -> dict:  # fmt: skip
    """The folds' recipe on every image, for ``p.epochs`` epochs (the caller passes the folds'
    median best epoch). No validation role: nothing is selected on the training images."""
    t0 = time.time()
    every = np.arange(len(y), dtype=np.int64)
    model, info = finetune.finetune(pretrained, images.to(device), y, {"train": every}, p, device, dtype, p.seed,
                                    n_classes)  # fmt: skip
    pr, _ = finetune.evaluate(model, images.to(device), y, every, p, device, dtype, n_classes)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    net.backbone.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")}, strict=True)
    net.head.load_state_dict({"weight": state["fc.weight"], "bias": state["fc.bias"]})
    return {"train_accuracy": float((pr.argmax(1) == y).mean()), "curves": info["curves"],
            "selected": info["selected"], "timings": {"finetune_s": time.time() - t0}}  # fmt: skip


# ---------------------------------------------------------------- the stage
def ood_reference(net: FerNet, images: torch.Tensor, feats: np.ndarray | None, manifest, plan: Path | None,
                  p: TrainParams) -> tuple[ood.Reference | None, dict]:  # fmt: skip
    """The out-of-distribution reference of the served model (``ferpipe.ood``): its pooled
    features of every training image, and a threshold calibrated on the split plan's
    held-out validation images. Frozen mode reuses the head's features (unflipped view)."""
    if plan is None:
        return None, {"calibrated": False, "why": "no split plan given (--plan): predictions carry no OOD flag"}
    if feats is None:  # a backbone fine-tuned on every image has seen the calibration images too
        return None, {"calibrated": False, "why": "the fine-tuned backbone was trained on every image, so no image "
                      "is held out to calibrate a threshold: predictions carry no OOD flag"}  # fmt: skip
    f0 = np.asarray(feats[0], dtype=np.float32)
    folds, _ = cv.plan_folds(plan, manifest)
    cal = ood.calibrate(f0, folds)
    return ood.Reference.fit(f0, seed=p.seed), {"calibrated": True, **cal}


def build_final_model(manifest_path: Path, weights: Path, out: Path, p: TrainParams, ip: IngestParams,
                      fp: FinalModelParams, train_dir: Path | None = config.TRAIN_DIR,
                      plan: Path | None = None) -> tuple[Path, dict]:  # fmt: skip
    """Train on every manifest image; write the model folder into a temp dir, return (tmp, summary)."""
    t_start = time.time()
    timings: dict[str, float] = {}
    if p.mode == "frozen":  # the train stage's feature precision: its cache is reused
        p = dataclasses.replace(p, precision=p.feature_precision)
    device, dtype = resolve_runtime(p)
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)
    manifest = data.read_manifest(manifest_path)
    run_classes = classes.read(manifest_path)
    y = data.labels_of(manifest, run_classes)
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: weights not found (run the weights stage)")
    weights_sha, manifest_sha = sha256_file(weights), sha256_file(manifest_path)
    t0 = time.time()
    # the served method's input: resnet50_spatial reads spatial_image_size images (frozen mode)
    size, taps = p.input_of(p.method) if p.mode == "frozen" else (p.image_size, GAP_TAPS)
    images = data.load_images_uint8(manifest, manifest_path.parent, size)
    timings["load_images_s"] = time.time() - t0
    from safetensors.torch import load_file

    pretrained = load_file(str(weights))
    flip_tta = ("prob" if p.flip_features else "none") if p.mode == "frozen" else "logit"
    torch.manual_seed(p.seed)
    net = FerNet(len(run_classes), p.stride_layout, flip_tta, taps)
    net.backbone.load_state_dict({k: v for k, v in pretrained.items() if not k.startswith("fc.")}, strict=True)
    choice: dict[str, Any]
    if p.mode == "frozen":
        c, choice = choose_c(train_dir, p.method, fp)
        t0 = time.time()
        key = {**dataclasses.asdict(p), **run_identity(weights_sha, manifest_sha, device, dtype)}
        feats = frozen_features(net, images, p, key, train_dir, device, dtype)
        timings["features_s"] = time.time() - t0
        info = fit_frozen(net, feats, y, p, c, run_classes)
    else:
        feats = None
        epochs, choice = choose_epochs(train_dir, p.method, fp, p)
        p = dataclasses.replace(p, epochs=epochs, patience=epochs + 1)
        info = fit_finetune(net, images, y, p, pretrained, device, dtype, len(run_classes))
    timings.update(info.pop("timings"))
    ref = info.pop("_ref_proba", None)
    net = net.to("cpu").eval()
    t0 = time.time()
    reference, ood_info = ood_reference(net, images, feats, manifest, plan, p)
    timings["ood_s"] = time.time() - t0

    # end-to-end check: the saved module's forward on a few training images
    t0 = time.time()
    k = min(4, len(images))
    with torch.no_grad():
        probs = net(images[:k].float().div(255).contiguous(memory_format=torch.channels_last)).numpy()
    e2e = {"n_images": k, "probabilities_sum_to_one": bool(np.allclose(probs.sum(1), 1, atol=1e-4))}
    if ref is not None:
        e2e["max_abs_diff_vs_head"] = float(np.abs(probs - ref[:k]).max())
    timings["check_s"] = time.time() - t0

    meta = {
        "method": p.method,
        "mode": p.mode,
        "image_size": size,
        "stride_layout": p.stride_layout,
        "flip_tta": flip_tta,
        "taps": list(net.taps),
        "input": "float RGB in [0, 1], shape (N, 3, image_size, image_size); the module normalises",
        "output": "class probabilities (N, n_classes), classes in 'classes' order",
        "preprocessing": {
            "steps": ["decode (first frame, EXIF orientation)", "gray (grayscale: true) or RGB",
                      "Haar face crop (face_crop: haar; centre square when no face) or centre square",
                      "bicubic resize to ingest_image_size", "bicubic resize to image_size (if different)",
                      "gray -> 3 channels", "/255", "ImageNet mean/std (inside the module)"],
            "grayscale": ip.grayscale,
            "face_crop": ip.face_crop,
            "face_margin": ip.face_margin,
            "ingest_image_size": ip.image_size,
            "mean": list(net.mean.flatten().tolist()),
            "std": list(net.std.flatten().tolist()),
        },
        "classes": list(run_classes),
        "training": {"n_images": int(len(y)), "class_counts": {c: int((y == i).sum()) for i, c in enumerate(run_classes)},
                     "manifest_sha256": manifest_sha, "weights_sha256": weights_sha,
                     **({"C": info["C"]} if "C" in info else {})},  # fmt: skip
    }
    if reference is not None:
        meta["ood"] = {"distance": "cosine distance to the nearest training image (standardised pooled features)",
                       **{k: ood_info[k] for k in ("threshold", "alpha", "protocol", "run", "validation_flag_rate",
                                                    "test_flag_rate")}}  # fmt: skip
    tmp = temp_dir_beside(out)
    t0 = time.time()
    save_model(net, meta, tmp, reference)
    timings["save_s"] = time.time() - t0
    timings["total_s"] = time.time() - t_start
    summary = {
        "method": p.method, "mode": p.mode, "choice": choice, **info, "end_to_end_check": e2e, "ood": ood_info,
        "device": device.type, "feature_dtype": (str(dtype) if dtype else "torch.float32") if p.mode == "frozen" else None,
        "threads": torch.get_num_threads(),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }  # fmt: skip
    return tmp, summary


# ---------------------------------------------------------------- MLflow
def pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in PIP_PACKAGES:
        try:
            reqs.append(f"{pkg}=={version(pkg).split('+')[0]}")
        except PackageNotFoundError:
            reqs.append(pkg)
    return reqs


def signature(default_face_crop: str, model_classes):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("string", "image")])
    outputs = Schema([ColSpec("string", "label", required=False), *[ColSpec("double", c, required=False) for c in model_classes],
                      ColSpec("string", "face"), ColSpec("double", "ood_distance", required=False),
                      ColSpec("boolean", "out_of_distribution", required=False), ColSpec("string", "error")])  # fmt: skip
    params = ParamSchema([ParamSpec("face_crop", "string", default_face_crop), ParamSpec("face_check", "boolean", True)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def example_input():
    """A generated gray 64x64 PNG, base64: shows the input format (never real data)."""
    import base64
    import io

    import pandas as pd
    from PIL import Image

    yy, xx = np.mgrid[0:64, 0:64]
    arr = ((np.sin(xx / 6.0) + np.cos(yy / 9.0) + 2) * 60).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG")
    return pd.DataFrame({"image": [base64.b64encode(buf.getvalue()).decode("ascii")]})


def log_to_mlflow(model_dir: Path, meta: dict, summary: dict, fp: FinalModelParams,
                  parent_id: str | None, params_for_log: dict | None = None) -> dict:  # fmt: skip
    """Log the pyfunc model in a (child) run, register it, point the alias at it."""
    import mlflow

    c = tracking.client()
    exp = None
    if parent_id:
        try:
            exp = c.get_run(parent_id).info.experiment_id
        except Exception as exc:  # noqa: BLE001 - a record from another store: log without a parent
            log.warning("final_model: parent run %s not found in %s (%s): logging without a parent",
                        parent_id, tracking.tracking_uri(), exc)  # fmt: skip
            parent_id = None
    exp = exp or tracking.experiment_id(c)
    tags = {"ferpipe.kind": "final_model", "git_commit": tracking.git_commit(), "data_hash": tracking.data_hash(),
            "method": meta["method"]}  # fmt: skip
    if parent_id:
        tags[tracking.PARENT_TAG] = parent_id
    pkg = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory(prefix="ferpipe-final-") as tmp:
        data_dir = Path(tmp) / "fernet"
        data_dir.mkdir()
        for name in ("model.safetensors", "model.json", "ood.safetensors"):
            if not (model_dir / name).exists():
                continue
            try:
                os.link(model_dir / name, data_dir / name)
            except OSError:
                shutil.copy2(model_dir / name, data_dir / name)
        code = Path(tmp) / "code" / "ferpipe"  # the package snapshot that serves the model
        shutil.copytree(pkg, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        flat = tracking._flatten({"final_model": dataclasses.asdict(fp), "model": {k: meta[k] for k in (
            "method", "image_size", "stride_layout", "flip_tta", "taps")}, "preprocessing": {
            k: v for k, v in meta["preprocessing"].items() if k in ("grayscale", "face_crop", "face_margin",
                                                                   "ingest_image_size")}})  # fmt: skip
        if "C" in summary:
            flat["head.C"] = str(summary["C"])
        metrics = {"train_accuracy": summary.get("train_accuracy")}
        metrics.update({f"time_{k}": v for k, v in summary["timings_s"].items()})
        if "fusion_max_abs_diff" in summary:
            metrics["fusion_max_abs_diff"] = summary["fusion_max_abs_diff"]
        t0 = time.time()
        with mlflow.start_run(experiment_id=exp, run_name="final_model", tags=tags) as run:
            mlflow.log_params({k: v[:6000] for k, v in flat.items()})
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
            info = mlflow.pyfunc.log_model(
                name="model",
                loader_module="ferpipe.serving",
                data_path=str(data_dir),
                code_paths=[str(code)],
                signature=signature(meta["preprocessing"]["face_crop"], meta["classes"]),
                input_example=example_input() if fp.input_example else None,
                pip_requirements=pip_requirements(),
                registered_model_name=fp.registered_model_name if fp.register else None,
                metadata={"ferpipe_method": meta["method"], "classes": list(meta["classes"])},
            )
            mlflow.log_dict(summary, "final_model_summary.json")
            run_id = run.info.run_id
    record = {"run_id": run_id, "parent_run_id": parent_id, "model_uri": info.model_uri,
              "tracking_uri": tracking.tracking_uri(), "log_seconds": round(time.time() - t0, 2)}  # fmt: skip
    if fp.register:
        version = str(info.registered_model_version)
        c.set_registered_model_alias(fp.registered_model_name, fp.alias, version)
        c.set_model_version_tag(fp.registered_model_name, version, "git_commit", tags["git_commit"])
        record.update(registered_model=fp.registered_model_name, version=version, alias=fp.alias,
                      registered_uri=f"models:/{fp.registered_model_name}@{fp.alias}")  # fmt: skip
    return record


def run_stage(manifest: Path, weights: Path, out: Path, raw_params: dict, train_dir: Path | None,
              mlflow_record: Path | None, plan: Path | None = None) -> dict:  # fmt: skip
    p = config.parse_section("train", raw_params.get("train"), TrainParams)
    ip = config.parse_section("ingest", raw_params.get("ingest"), IngestParams)
    fp = config.parse_section("final_model", raw_params.get("final_model"), FinalModelParams)
    if ip.face_crop not in FACE_CROPS:
        raise ParamsError(f"params.yaml: ingest.face_crop: expected one of {FACE_CROPS}, got {ip.face_crop!r}")
    tmp, summary = build_final_model(manifest, weights, out, p, ip, fp, train_dir, plan)
    try:
        meta = json.loads((tmp / "model.json").read_text())
        if fp.log_mlflow:
            parent = tracking.parent_run_id(mlflow_record)
            with tracking.stage_status(parent, "final_model"):
                record = log_to_mlflow(tmp, meta, summary, fp, parent, raw_params)
            summary["mlflow"] = record
            summary["timings_s"]["mlflow_s"] = record["log_seconds"]
            write_json(tmp / "mlflow.json", record)
        # results in the summary (a DVC output); wall times and run ids in the run record
        run_facts = {"stage": "final_model", "timings_s": summary["timings_s"], "mlflow": summary.get("mlflow")}
        write_json(tmp / "final_model_summary.json",
                   {k: v for k, v in summary.items() if k not in ("timings_s", "mlflow")})
        write_run_record(tmp, run_facts)
        swap_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--manifest", type=Path, default=config.MANIFEST, help="manifest.csv from ingest (all rows train)")
    ap.add_argument("--weights", type=Path, default=config.WEIGHTS_FILE, help="ImageNet ResNet-50 safetensors")
    ap.add_argument("--out", type=Path, default=Path("artifacts/final_model"), help="output model folder")
    ap.add_argument("--params", type=Path, nargs="+", default=[config.PARAMS_FILE],
                    help="params file(s) (sections train, ingest, final_model); later files override earlier")
    ap.add_argument("--plan", type=Path, default=config.SPLIT_PLAN,
                    help="split plan: its held-out validation images calibrate the out-of-distribution flag")
    ap.add_argument("--train-results", type=Path, default=config.TRAIN_DIR,
                    help="train stage output: the folds' selected C (frozen) or best epoch (finetune)")
    ap.add_argument("--mlflow-record", type=Path, default=config.TRAIN_DIR / "mlflow.json",
                    help="where the train stage recorded the pipeline's MLflow parent run")
    ap.add_argument("--no-mlflow", action="store_true", help="do not log/register (overrides final_model.log_mlflow)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        raw = config.read_params_files(args.params)
        if args.no_mlflow:
            raw["final_model"] = {**(raw.get("final_model") or {}), "log_mlflow": False}
        summary = run_stage(args.manifest, args.weights, args.out, raw, args.train_results, args.mlflow_record,
                            args.plan)
    except (ParamsError, FileNotFoundError, ValueError, tracking.ParentRunError) as exc:
        print(f"final_model: error: {exc}", file=sys.stderr)
        return 2
    keys = ("method", "C", "train_accuracy", "fusion_max_abs_diff", "choice", "timings_s")
    print(json.dumps({k: summary[k] for k in keys if k in summary}))
    if "mlflow" in summary:
        print(f"final_model: logged {summary['mlflow'].get('registered_uri') or summary['mlflow']['model_uri']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
