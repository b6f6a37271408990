"""train stage: ResNet-50 on every (protocol, run, fold) of the split plan.

Modes
- frozen (CPU default): the ImageNet backbone in eval mode; pooled features of every
  image and of its horizontal flip computed once and cached; per fold a softmax
  (multinomial logistic-regression) head is fit on the train groups (image + flip),
  its regularisation C chosen on the validation group, then tested on the test group
  (probabilities averaged over the image and its flip).
- finetune (the paper's method, for a GPU): all layers trained with flip/shift/scale/
  rotation augmentation, early stopping on the validation group, best checkpoint tested.

Folds already finished with the same config are skipped, so a killed run resumes.

    python -m ferpipe.train --manifest artifacts/ingest/manifest.csv \\
        --plan artifacts/split/split_plan.csv --weights models/resnet50_imagenet.safetensors \\
        --out artifacts/train
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import config, data, finetune, runners, tracking
from .config import CLASSES, ParamsError, register_section
from .finetune import autocast, to_input
from .foldio import FoldResult, config_hash, finished_fold, fold_path, save_fold
from .io import sha256_file, write_json
from .model import build_resnet50

log = logging.getLogger("ferpipe.train")


@register_section("train")
@dataclasses.dataclass
class TrainParams:
    mode: str = "frozen"  # frozen | finetune
    image_size: int = 224
    stride_layout: str = "v1"  # must match the weights stage
    threads: int = 2  # torch CPU threads: results are identical only for the same count
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 where supported) | bf16 | fp32
    batch_size: int = 32
    seed: int = 2021
    max_runs: int = 0  # 0 = every run of the plan
    max_folds: int = 0  # 0 = every fold
    # frozen mode
    head_c_grid: list[float] = dataclasses.field(default_factory=lambda: [0.01, 0.1, 1.0])
    head_max_iter: int = 1000
    flip_features: bool = True
    # finetune mode (recipe chosen on validation groups: docs/finetune.md)
    epochs: int = 30
    patience: int = 0  # 0 = no early stopping (the best validation epoch is still restored)
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.01  # the new head's rate
    body_lr_mult: float = 1.0  # pretrained layers train at lr * body_lr_mult
    warmup_epochs: int = 1
    momentum: float = 0.9  # sgd only
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    bn: str = "adapt"  # adapt (re-estimate on train images, then frozen) | frozen (ImageNet stats) | train
    head_init: str = "probe"  # probe (linear probe first) | random
    probe_iters: int = 100
    probe_l2: float = 0.001
    freeze_stages: int = 0  # 0 = train all; 1 = freeze the stem; 2 = stem + layer1; ...
    grad_clip: float = 1.0  # max gradient norm, 0 = off
    augment: bool = True
    augment_shift: float = 0.08  # fraction of the image side
    augment_scale: float = 0.1
    augment_rotate: float = 10.0  # degrees
    workers: int = 1  # folds trained concurrently in worker processes (a GPU fits several)
    log_mlflow: bool = True

    def check(self):
        choices = {"mode": ("frozen", "finetune"), "stride_layout": ("v1", "stock"),
                   "device": ("auto", "cpu", "cuda"), "precision": ("auto", "bf16", "fp32"),
                   "optimizer": ("adamw", "sgd"), "bn": ("adapt", "frozen", "train"),
                   "head_init": ("probe", "random")}  # fmt: skip
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ParamsError(f"params.yaml: train.{key}: expected one of {allowed}, got {getattr(self, key)!r}")
        for key in ("image_size", "threads", "batch_size", "epochs", "workers"):
            if getattr(self, key) < 1:
                raise ParamsError(f"params.yaml: train.{key}: expected a positive integer, got {getattr(self, key)}")
        if not self.head_c_grid or any(c <= 0 for c in self.head_c_grid):
            raise ParamsError(f"params.yaml: train.head_c_grid: expected positive numbers, got {self.head_c_grid}")

    @property
    def method(self) -> str:
        return f"resnet50_{self.mode}"


# ---------------------------------------------------------------- runtime set-up
def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_runtime(p: TrainParams) -> tuple[torch.device, torch.dtype | None]:
    torch.set_num_threads(p.threads)
    if p.device == "cuda" and not torch.cuda.is_available():
        raise ParamsError("params.yaml: train.device is 'cuda' but no CUDA device is available")
    device = torch.device("cuda" if p.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    if p.precision == "fp32":
        return device, None
    bf16_ok = device.type == "cuda" or cpu_has_bf16()
    if p.precision == "bf16" and not bf16_ok:
        raise ParamsError("params.yaml: train.precision is bf16 but this CPU has no bf16 support")
    return device, torch.bfloat16 if bf16_ok else None


def fold_seed(base: int, protocol: str, run: int, fold: int) -> int:
    ss = np.random.SeedSequence([base, config.PROTOCOLS.index(protocol), run, fold])
    return int(ss.generate_state(1)[0])


# ---------------------------------------------------------------- frozen mode
@torch.no_grad()
def extract_features(backbone: nn.Module, images: torch.Tensor, p: TrainParams,
                     device: torch.device, dtype) -> np.ndarray:  # fmt: skip
    """Pooled 2048-d features of (image, flipped image): shape (2, N, 2048)."""
    backbone = backbone.to(device).eval().to(memory_format=torch.channels_last)
    backbone.fc = nn.Identity()
    views = [False, True] if p.flip_features else [False]
    out = np.zeros((len(views), len(images), 2048), dtype=np.float32)
    total = len(views) * math.ceil(len(images) / p.batch_size)
    with tqdm(total=total, desc="features", unit="batch", disable=None, mininterval=5) as bar:
        for v, flip in enumerate(views):
            for s in range(0, len(images), p.batch_size):
                x = to_input(images[s : s + p.batch_size], device)
                if flip:
                    x = torch.flip(x, dims=[3])
                with autocast(device, dtype):
                    f = backbone(x)
                out[v, s : s + len(x)] = f.float().cpu().numpy()
                bar.update()
    return out


def cached_features(cache: Path, key: dict, compute) -> np.ndarray:
    """Features are the slow part of frozen mode: keep them keyed by everything they depend on."""
    digest = config_hash(key)
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) == digest:
                log.info("features: cache hit %s", cache)
                return z["features"]
    feats = compute()
    from .io import atomic_path

    with atomic_path(cache, suffix=".tmp.npz") as tmp:
        np.savez(tmp, features=feats, key=np.array(digest))
    return feats


def row_space_projection(x_train: np.ndarray):
    """Map features onto the row space of the (standardised) training matrix.

    With an L2 penalty the logistic-regression weights lie in that row space
    (representer theorem), so fitting on these n <= 2n_train coordinates gives exactly
    the model fit on all 2048 features, about 20x faster.
    """
    gram = x_train @ x_train.T
    eigval, eigvec = np.linalg.eigh(gram)
    keep = eigval > eigval.max() * 1e-10
    basis = x_train.T @ (eigvec[:, keep] / np.sqrt(eigval[keep]))  # orthonormal columns (d, k)
    return lambda x: x @ basis


def fit_head(feats: np.ndarray, y: np.ndarray, roles: dict, p: TrainParams, seed: int):
    """Logistic-regression head; C chosen on the validation group. -> (probs on test, info)."""
    from sklearn.linear_model import LogisticRegression

    tr, va, te = roles["train"], roles["val"], roles["test"]
    n_views = feats.shape[0]
    x_tr = np.concatenate([feats[v, tr] for v in range(n_views)]).astype(np.float64)
    y_tr = np.concatenate([y[tr]] * n_views)
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6  # standardised on the train groups only
    project = row_space_projection((x_tr - mu) / sd)
    z_tr = project((x_tr - mu) / sd)

    def proba(model, idx):
        return np.mean([model.predict_proba(project((feats[v, idx] - mu) / sd)) for v in range(n_views)], axis=0)

    curve_acc, curve_loss, best = [], [], None
    for c in p.head_c_grid:
        model = LogisticRegression(C=c, max_iter=p.head_max_iter, random_state=seed % (2**31))
        model.fit(z_tr, y_tr)
        pv = proba(model, va)
        acc = float((pv.argmax(1) == y[va]).mean())
        loss = float(-np.log(np.clip(pv[np.arange(len(va)), y[va]], 1e-12, None)).mean())
        curve_acc.append(acc)
        curve_loss.append(loss)
        if best is None or (acc, -loss) > (best[0], -best[1]):
            best = (acc, loss, c, model)
    acc, loss, c, model = best
    info = {"selected": {"C": c, "val_accuracy": acc, "val_loss": loss},
            "curves": {"val_accuracy_by_C": curve_acc, "val_loss_by_C": curve_loss}}  # fmt: skip
    return proba(model, te), info


# ---------------------------------------------------------------- finetune mode
def finetune_fold(pretrained: dict, images, y, roles, p: TrainParams, device, dtype, seed: int):
    """The paper's method on one fold (ferpipe.finetune): -> (test probabilities, info)."""
    model, info = finetune.finetune(pretrained, images, y, roles, p, device, dtype, seed, len(CLASSES))
    pt, _ = finetune.evaluate(model, images, y, roles["test"], p, device, dtype, len(CLASSES))
    return pt, info


# ---------------------------------------------------------------- the stage
def select_folds(plan, p: TrainParams):
    if p.max_runs:
        plan = plan[plan["run"] <= p.max_runs]
    if p.max_folds:
        plan = plan[plan["fold"] <= p.max_folds]
    return plan


@dataclasses.dataclass
class FoldContext:
    """Everything one fold needs; picklable so a task runner can ship it to workers."""

    p: TrainParams
    method: str
    chash: str
    results_dir: Path
    image_names: list[str]
    y: np.ndarray
    feats: np.ndarray | None = None  # frozen mode
    images: torch.Tensor | None = None  # finetune mode
    pretrained: dict | None = None  # finetune mode


@dataclasses.dataclass
class FoldTask:
    protocol: str
    run: int
    fold: int
    roles: dict[str, np.ndarray]


def compute_fold(ctx: FoldContext, task: FoldTask) -> FoldResult:
    """Train and test one fold, save its result atomically, return it."""
    p = ctx.p
    device, dtype = resolve_runtime(p)
    seed = fold_seed(p.seed, task.protocol, task.run, task.fold)
    t0 = time.time()
    if p.mode == "frozen":
        probs, info = fit_head(ctx.feats, ctx.y, task.roles, p, seed)
    else:
        probs, info = finetune_fold(ctx.pretrained, ctx.images, ctx.y, task.roles, p, device, dtype, seed)
    info["timings"] = {"fold": round(time.time() - t0, 3)}
    te = task.roles["test"]
    res = FoldResult(ctx.method, task.protocol, task.run, task.fold, ctx.chash,
                     images=[ctx.image_names[i] for i in te], y_true=ctx.y[te].tolist(),
                     y_pred=probs.argmax(1).tolist(), probabilities=np.round(probs, 6).tolist(),
                     extra=info)  # fmt: skip
    save_fold(ctx.results_dir, res)
    return res


def to_device(ctx: FoldContext) -> FoldContext:
    """Once per process: the uint8 images to the compute device (GPU-resident when there is one)."""
    device, _ = resolve_runtime(ctx.p)
    if ctx.images is not None and ctx.images.device != device:
        ctx = dataclasses.replace(ctx, images=ctx.images.to(device))
    return ctx


def fold_runner(spec: str | None, p: TrainParams | None = None):
    """-> runner(ctx, tasks): sequential; worker processes on this machine when
    ``train.workers`` > 1; or, given 'prefect' / 'dask://host:port', the Prefect fan-out."""
    if spec and spec != "sequential":
        from pipeline.fanout import make_runner  # optional: only when fan-out is asked for

        return make_runner(spec)
    if p is not None and p.workers > 1:
        return lambda ctx, tasks: runners.run_processes(ctx, tasks, compute_fold, p.workers, prepare=to_device)
    return run_sequential


def run_sequential(ctx: FoldContext, tasks: list[FoldTask]) -> list[FoldResult]:
    return runners.run_sequential(to_device(ctx), tasks, compute_fold)


def run_training(manifest_path: Path, plan_path: Path, weights: Path, out: Path, p: TrainParams,
                 params_for_log: dict | None = None, runner=None, deadline: float | None = None) -> dict:  # fmt: skip
    t_start = time.time()
    device, dtype = resolve_runtime(p)
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)
    manifest = data.read_manifest(manifest_path)
    plan = select_folds(data.read_plan(plan_path), p)
    index_of = data.check_plan_matches(plan, manifest)
    y = data.labels_of(manifest)
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: weights not found (run the weights stage)")
    cfg = {k: v for k, v in dataclasses.asdict(p).items() if k not in ("log_mlflow", "max_runs", "max_folds", "workers")}
    cfg.update(weights_sha256=sha256_file(weights), manifest_sha256=sha256_file(manifest_path),
               torch=torch.__version__, device=device.type, dtype=str(dtype))
    ctx = FoldContext(p, p.method, config_hash(cfg), out / p.method, manifest["path"].tolist(), y)
    timings = {}

    t0 = time.time()
    images = data.load_images_uint8(manifest, manifest_path.parent, p.image_size)
    timings["load_images_s"] = time.time() - t0
    from safetensors.torch import load_file

    pretrained = {k: v.float() for k, v in load_file(str(weights)).items()}  # an fp16 copy is upcast
    if p.mode == "frozen":
        t0 = time.time()
        key = {k: cfg[k] for k in ("image_size", "stride_layout", "threads", "flip_features",
                                   "weights_sha256", "manifest_sha256", "torch", "device", "dtype")}  # fmt: skip

        def compute():
            backbone = build_resnet50(1000, p.stride_layout)
            backbone.load_state_dict(pretrained)
            return extract_features(backbone, images, p, device, dtype)

        ctx.feats = cached_features(out / "features_cache.npz", key, compute)
        timings["features_s"] = time.time() - t0
    else:
        ctx.images, ctx.pretrained = images, pretrained

    done, todo = [], []
    for protocol, run, fold, roles in data.fold_indices(plan, index_of):
        prev = finished_fold(ctx.results_dir, protocol, run, fold, ctx.chash)
        if prev is not None:
            done.append(prev)
        else:
            todo.append(FoldTask(protocol, run, fold, roles))
    if done:
        log.info("train: resuming, %d fold(s) already finished, %d to go", len(done), len(todo))
    t0 = time.time()
    if deadline is not None:  # the GPU check: no new fold after the deadline (whole runs are queued first)
        new = runners.run_processes(ctx, todo, compute_fold, p.workers, prepare=to_device, deadline=deadline)
    else:
        new = (runner or run_sequential)(ctx, todo) if todo else []
    new = [r for r in new if r is not None]
    timings["folds_s"] = time.time() - t0
    done = sorted(done + list(new), key=lambda r: (r.protocol, r.run, r.fold))
    # fold files from an older plan (e.g. more runs) would be read by aggregate: remove them
    keep = {fold_path(ctx.results_dir, r.protocol, r.run, r.fold) for r in done}
    for stale in ctx.results_dir.glob("*/run*_fold*.json"):
        if stale not in keep:
            stale.unlink()

    mlflow_s = 0.0
    parent = None
    if p.log_mlflow:
        t0 = time.time()
        with tracking.stage_status(None, "train") as status:
            # a new parent per invocation (one from the orchestrator's environment if given)
            parent = tracking.parent_run_id() or tracking.start_parent(params_for_log or {"train": cfg})
            status.parent_id = parent
            tracking.log_fold_runs(parent, done, cfg)
        mlflow_s = time.time() - t0
    timings["mlflow_s"] = mlflow_s
    timings["total_s"] = time.time() - t_start
    summary = {
        "method": p.method, "config_hash": ctx.chash, "config": cfg,
        "n_folds": len(done), "n_folds_planned": len(done) - len(new) + len(todo), "n_computed": len(new), "n_resumed": len(done) - len(new),
        "mean_fold_accuracy": {proto: float(np.mean([r.accuracy for r in done if r.protocol == proto]))
                               for proto in sorted({r.protocol for r in done})},
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "mlflow_share_of_train": round(mlflow_s / max(timings["total_s"] - mlflow_s, 1e-9), 4),
        "mlflow_parent_run_id": parent,
    }  # fmt: skip
    write_json(out / "train_summary.json", summary)
    write_json(out / "resolved_config.json", cfg)  # the resolved config next to the results
    if parent:
        write_json(out / "mlflow.json", {"parent_run_id": parent, "tracking_uri": tracking.tracking_uri()})
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--manifest", type=Path, default=config.MANIFEST, help="manifest.csv from ingest")
    ap.add_argument("--plan", type=Path, default=config.SPLIT_PLAN, help="split_plan.csv from split")
    ap.add_argument("--weights", type=Path, default=config.WEIGHTS_FILE, help="ImageNet ResNet-50 safetensors")
    ap.add_argument("--out", type=Path, default=config.TRAIN_DIR, help="output folder (fold results per method)")
    ap.add_argument("--params", type=Path, nargs="+", default=[config.PARAMS_FILE],
                    help="params file(s); later files override sections of earlier ones (profiles)")
    ap.add_argument("--runner", help="fold fan-out: sequential (default), prefect, or dask://HOST:PORT "
                    "(default from $FERPIPE_FOLD_RUNNER); results are identical")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        raw = config.read_params_files(args.params)
        p = config.parse_section("train", raw.get("train"), TrainParams)
        runner = fold_runner(args.runner or os.environ.get("FERPIPE_FOLD_RUNNER"), p)
        summary = run_training(args.manifest, args.plan, args.weights, args.out, p, params_for_log=raw, runner=runner)
    except (ParamsError, FileNotFoundError, ValueError) as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: summary[k] for k in ("method", "n_folds", "n_computed", "n_resumed",
                                              "mean_fold_accuracy", "timings_s")}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
