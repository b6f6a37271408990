"""train stage: ResNet-50 on every (protocol, run, fold) of the split plan.

Modes
- frozen (CPU default): the ImageNet backbone in eval mode; tapped, pooled features
  (ferpipe.features) of every image and of its horizontal flip computed once and cached;
  per fold a softmax (multinomial logistic-regression) head is fit on the train groups
  (image + flip), its regularisation C chosen on the validation group, then tested on the
  test group (probabilities averaged over the image and its flip). Two heads side by side:
  ``resnet50_gap`` (the paper's network: global average of layer4) and ``resnet50_spatial``
  (``train.taps``: mid-level maps pooled on a grid, which keeps the face's layout).
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
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import classes, config, cv, data, finetune, heads, runners, tracking
from .config import CLASSES, ParamsError
from .cv import fold_seed
from .features import cache_path, cached_features, extract_features, run_identity, split_taps
from .foldio import FoldResult, config_hash, save_fold
from .io import sha256_file, write_json, write_run_record
from .model import build_resnet50
from .train_params import TrainParams, resolve_runtime

log = logging.getLogger("ferpipe.train")

# ---------------------------------------------------------------- finetune mode
def finetune_fold(pretrained: dict, images, y, roles, p: TrainParams, device, dtype, seed: int, n_classes: int):
    """The paper's method on one fold (ferpipe.finetune): -> (test probabilities, info)."""
    model, info = finetune.finetune(pretrained, images, y, roles, p, device, dtype, seed, n_classes)
    pt, _ = finetune.evaluate(model, images, y, roles["test"], p, device, dtype, n_classes)
    return pt, info


# ---------------------------------------------------------------- the stage
@dataclasses.dataclass
class FoldContext:
    """Everything one fold needs; picklable so a task runner can ship it to workers."""

    p: TrainParams
    method: str
    chash: str
    results_dir: Path
    image_names: list[str]
    y: np.ndarray
    classes: tuple[str, ...] = CLASSES  # the run's class list (ferpipe.classes)
    feats: np.ndarray | None = None  # frozen mode
    images: torch.Tensor | None = None  # finetune mode
    pretrained: dict | None = None  # finetune mode
    # frozen mode: every fold's head problem is zero-padded to this many rows, fixed for the
    # whole plan, so a fold's head is the same whichever folds share its batch (0 = all images)
    pad_rows: int = 0


@dataclasses.dataclass
class FoldTask:
    protocol: str
    run: int
    fold: int
    roles: dict[str, np.ndarray]
    chash: str = ""  # the fold's hash: method config + its images (run_folds sets it)


HEAD_BATCH = 20  # frozen mode: folds whose heads are solved together (one run of both protocols' sizes)


def _fold_result(ctx: FoldContext, task: FoldTask, probs: np.ndarray, info: dict, seconds: float) -> FoldResult:
    te = task.roles["test"]
    info = {**info, "method_config_hash": ctx.chash}
    res = FoldResult(ctx.method, task.protocol, task.run, task.fold, task.chash or ctx.chash,
                     images=[ctx.image_names[i] for i in te], y_true=ctx.y[te].tolist(),
                     y_pred=probs.argmax(1).tolist(), probabilities=np.round(probs, 6).tolist(),
                     extra=info, classes=ctx.classes, seconds=round(seconds, 4))  # fmt: skip
    save_fold(ctx.results_dir, res)
    return res


def compute_folds(ctx: FoldContext, tasks: list[FoldTask]) -> list[FoldResult]:
    """Train and test folds, save each result atomically, return them (task order).

    frozen: all the tasks' heads in one batched solve (ferpipe.heads); finetune: one by one."""
    p = ctx.p
    t0 = time.time()
    if p.mode == "frozen":
        pad = ctx.pad_rows or ctx.feats.shape[0] * ctx.feats.shape[1]
        problems = [heads.FoldHeadProblem(t.roles["train"], t.roles["val"], t.roles["test"]) for t in tasks]
        fitted = heads.fit_fold_heads(ctx.feats, ctx.y, problems, p.head_c_grid, len(ctx.classes), pad,
                                      p.head_max_iter, p.head_tol)
        each = (time.time() - t0) / max(len(tasks), 1)  # one solve: its time shared evenly
        return [_fold_result(ctx, t, probs, info, each) for t, (probs, info) in zip(tasks, fitted, strict=True)]
    device, dtype = resolve_runtime(p)
    out = []
    for t in tasks:
        t0 = time.time()
        seed = fold_seed(p.seed, t.protocol, t.run, t.fold)
        probs, info = finetune_fold(ctx.pretrained, ctx.images, ctx.y, t.roles, p, device, dtype, seed, len(ctx.classes))
        out.append(_fold_result(ctx, t, probs, info, time.time() - t0))
    return out


def compute_fold(ctx: FoldContext, task: FoldTask) -> FoldResult:
    """One fold (what the process and Prefect/Dask runners map over)."""
    return compute_folds(ctx, [task])[0]


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

        return make_runner(spec, compute_fold)
    if p is not None and p.workers > 1:
        return lambda ctx, tasks: runners.run_processes(ctx, tasks, compute_fold, p.workers, prepare=to_device)
    return run_sequential


def run_sequential(ctx: FoldContext, tasks: list[FoldTask]) -> list[FoldResult]:
    if ctx.p.mode == "frozen":  # heads in batches of HEAD_BATCH folds; same results as one at a time
        chunks = [tasks[i : i + HEAD_BATCH] for i in range(0, len(tasks), HEAD_BATCH)]
        return [r for chunk in runners.run_sequential(ctx, chunks, compute_folds, unit="batch") for r in chunk]
    return runners.run_sequential(to_device(ctx), tasks, compute_fold)


def method_config(p: TrainParams, base: dict, method: str) -> dict:
    """What one method's fold results depend on (its config hash): frozen heads see their own
    taps only, so changing the spatial taps leaves the paper's head finished."""
    other_mode = ("precision",) if p.mode == "frozen" else ("feature_precision",)  # the dtype is in run_identity
    cfg = {k: v for k, v in base.items() if k not in ("taps", "gap_head", "spatial_image_size", *other_mode)}
    if p.mode == "frozen":
        cfg["image_size"], cfg["taps"] = p.input_of(method)
    return cfg


def run_folds(ctx: FoldContext, folds: list, runner, deadline: float | None, workers: int) -> tuple[list, int, list]:
    """One method over the plan's folds: resume, compute the rest. -> (done, n_new, new).

    A fold's hash covers the method's config and the fold's images, so a changed split plan
    recomputes the folds it changed instead of resuming their old results."""
    fold_hash = cv.fold_hashes(ctx.chash, folds, ctx.image_names)
    fr = cv.FoldRun.open(ctx.results_dir, folds, lambda pr, r, f, _: fold_hash[(pr, r, f)])
    todo = [FoldTask(*f, chash=fold_hash[tuple(f[:3])]) for f in fr.todo]
    if fr.done:
        log.info("train: %s: resuming, %d fold(s) already finished, %d to go", ctx.method, len(fr.done), len(todo))
    if deadline is not None:  # the GPU check: no new fold after the deadline (whole runs are queued first)
        new = runners.run_processes(ctx, todo, compute_fold, workers, prepare=to_device, deadline=deadline)
    else:
        new = (runner or run_sequential)(ctx, todo) if todo else []
    for r in new:
        if r is not None:  # None: not started before the deadline
            fr.keep(r, save=False)  # each fold was saved by the process that computed it
    return fr.close(), fr.n_new, new


def run_training(manifest_path: Path, plan_path: Path, weights: Path, out: Path, p: TrainParams,
                 params_for_log: dict | None = None, runner=None, deadline: float | None = None) -> dict:  # fmt: skip
    t_start = time.time()
    frozen = p.mode == "frozen"
    # frozen features in train.feature_precision (fp32: the final model's own precision)
    device, dtype = resolve_runtime(dataclasses.replace(p, precision=p.feature_precision) if frozen else p)
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)
    manifest = data.read_manifest(manifest_path)
    folds, _ = cv.plan_folds(plan_path, manifest, p.max_runs, p.max_folds)
    run_classes = classes.read(manifest_path)
    y = data.labels_of(manifest, run_classes)
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: weights not found (run the weights stage)")
    cfg = {k: v for k, v in dataclasses.asdict(p).items() if k not in ("log_mlflow", "max_runs", "max_folds", "workers")}
    cfg.update(run_identity(sha256_file(weights), sha256_file(manifest_path), device, dtype))
    if not classes.matches_paper(run_classes):  # (the paper's seven leave earlier hashes valid)
        cfg["classes"] = list(run_classes)
    methods = list(p.frozen_methods) if frozen else [p.method]
    timings = {}

    t0 = time.time()
    sizes = sorted(p.taps_by_size(), reverse=True) if frozen else [p.image_size]
    images = {size: data.load_images_uint8(manifest, manifest_path.parent, size) for size in sizes}
    timings["load_images_s"] = time.time() - t0
    from safetensors.torch import load_file

    pretrained = {k: v.float() for k, v in load_file(str(weights)).items()}  # an fp16 copy is upcast
    feats_by_size = {}
    if frozen:  # one forward pass per input size computes every method's taps at that size
        t0 = time.time()
        for size, taps in p.taps_by_size().items():
            def compute(size=size, taps=taps):
                backbone = build_resnet50(1000, p.stride_layout)
                backbone.load_state_dict(pretrained)
                return extract_features(backbone, images[size], p.batch_size, p.flip_features, device, dtype, taps)

            feats_by_size[size] = cached_features(cache_path(out, size), {**cfg, "image_size": size, "taps": taps}, compute)
        timings["features_s"] = time.time() - t0

    done_by_method, new_all, n_new, todo_n, configs = {}, [], 0, 0, {}
    t0 = time.time()
    for method in methods:
        mcfg = method_config(p, cfg, method)
        configs[method] = mcfg
        ctx = FoldContext(p, method, config_hash(mcfg), out / method, manifest["path"].tolist(), y, run_classes)
        if frozen:
            size, taps = p.input_of(method)
            ctx.feats = split_taps(feats_by_size[size], p.taps_by_size()[size], taps)
            # the largest training set of the plan (all views) fixes the head padding
            ctx.pad_rows = ctx.feats.shape[0] * max((len(r["train"]) for *_, r in folds), default=1)
        else:
            ctx.images, ctx.pretrained = images[p.image_size], pretrained
        done, n, new = run_folds(ctx, folds, runner, deadline, p.workers)
        done_by_method[method], n_new, todo_n = done, n_new + n, todo_n + len(new)
        new_all += [r for r in new if r is not None]
    timings["folds_s"] = time.time() - t0

    mlflow_s = 0.0
    parent = None
    if p.log_mlflow:
        t0 = time.time()
        with tracking.stage_status(None, "train") as status:
            # a new parent per invocation (one from the orchestrator's environment if given)
            parent = tracking.parent_run_id() or tracking.start_parent(params_for_log or {"train": cfg})
            status.parent_id = parent
            for method, done in done_by_method.items():
                tracking.log_fold_runs(parent, done, configs[method])
        mlflow_s = time.time() - t0
    timings["mlflow_s"] = mlflow_s
    timings["total_s"] = time.time() - t_start
    n_done = sum(len(d) for d in done_by_method.values())
    # results only: train_summary.json is a DVC output and must not change when nothing did
    summary = {
        "method": p.method, "methods": methods, "n_folds": n_done,
        "config_hash": {m: config_hash(c) for m, c in configs.items()}, "config": cfg,
        "inputs": {m: dict(zip(("image_size", "taps"), p.input_of(m), strict=True)) for m in methods} if frozen else None,
        "mean_fold_accuracy": {f"{m}/{proto}": float(np.mean([r.accuracy for r in d if r.protocol == proto]))
                               for m, d in done_by_method.items() for proto in sorted({r.protocol for r in d})},
    }  # fmt: skip
    record = {
        "stage": "train", "methods": methods, "n_computed": n_new, "n_resumed": n_done - n_new,
        "n_folds_planned": n_done - n_new + todo_n, "n_skipped_by_deadline": todo_n - n_new,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "mlflow_share_of_train": round(mlflow_s / max(timings["total_s"] - mlflow_s, 1e-9), 4),
        "mlflow_parent_run_id": parent,
        "fold_seconds": {f"{r.method}/{r.protocol}/run{r.run:02d}_fold{r.fold:02d}": r.seconds for r in new_all},
    }  # fmt: skip
    write_json(out / "train_summary.json", summary)
    write_json(out / "resolved_config.json", cfg)  # the resolved config next to the results
    write_run_record(out, record)
    if parent:
        write_json(out / "mlflow.json", {"parent_run_id": parent, "tracking_uri": tracking.tracking_uri()})
    return {**summary, "run": record}


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
    run = summary["run"]
    print(json.dumps({"methods": summary["methods"], "n_folds": summary["n_folds"], "n_computed": run["n_computed"],
                      "n_resumed": run["n_resumed"], "mean_fold_accuracy": summary["mean_fold_accuracy"],
                      "timings_s": run["timings_s"]}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
