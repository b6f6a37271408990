"""Orchestration cost: the Prefect flow vs plain `dvc repro`, and the fold fan-out runners.

1. ``--project DIR`` (a DVC project whose stages are up to date, e.g. a clone after one
   run): wall time of ``dvc repro`` vs ``python -m pipeline --no-mlflow`` when every stage
   is skipped, i.e. the fixed cost the flow adds (server start, one dvc call per stage).
2. Frozen-mode folds on synthetic features (no ResNet): ``run_sequential`` vs
   ``make_runner('prefect')`` vs a local Dask cluster (``dask://`` to a LocalCluster),
   checking the predictions are identical.

    python benchmarks/bench_pipeline.py --project /tmp/pf/main --repeat 2
    python benchmarks/bench_pipeline.py --folds-only --images 213 --runs 4 --workers 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def timed(cmd: list[str], cwd: Path) -> float:
    t0 = time.time()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return time.time() - t0


def bench_flow(project: Path, repeat: int) -> None:
    env_py = sys.executable
    rows = []
    for _ in range(repeat):
        rows.append((timed([env_py, "-m", "dvc", "repro"], project),
                     timed([env_py, "-m", "pipeline", "--no-mlflow", "-C", str(project)], project)))  # fmt: skip
    for i, (d, f) in enumerate(rows, 1):
        print(f"up-to-date pipeline, try {i}: dvc repro {d:.1f} s | python -m pipeline {f:.1f} s | overhead {f - d:+.1f} s")


def synthetic(n: int, runs: int, groups: int, dim: int, tmp: Path):
    import numpy as np
    import pandas as pd

    from ferpipe import cv, data, split, train
    from ferpipe.config import CLASSES, SplitParams

    manifest = pd.DataFrame({"path": [f"i{i:04d}.png" for i in range(n)], "label": [CLASSES[i % 7] for i in range(n)],
                             "subject": [f"S{i % 10}" for i in range(n)]})  # fmt: skip
    plan, _ = split.make_plan(manifest, SplitParams(protocols=["stratified"], n_runs=runs, n_groups=groups, seed=3))
    y = data.labels_of(manifest)
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(2, n, dim)).astype(np.float32)
    feats[:, :, :7] += 1.5 * np.eye(7, dtype=np.float32)[y]
    p = train.TrainParams(threads=1, log_mlflow=False)
    ctx = train.FoldContext(p, p.method, "bench", tmp / p.method, manifest["path"].tolist(), y, feats=feats)
    tasks = [train.FoldTask(pr, r, f, roles) for pr, r, f, roles in cv.fold_indices(plan, cv.check_plan_matches(plan, manifest))]
    return ctx, tasks


def bench_folds(images: int, runs: int, workers: int, dim: int) -> None:
    import dataclasses

    from distributed import LocalCluster

    from ferpipe import train
    from pipeline.fanout import make_runner

    with tempfile.TemporaryDirectory() as d:
        ctx, tasks = synthetic(images, runs, 10, dim, Path(d))
        t0 = time.time()
        ref = train.run_sequential(ctx, tasks)
        print(f"{len(tasks)} folds, {images} images x {dim} features: sequential {time.time() - t0:.1f} s")
        t0 = time.time()
        got = make_runner(f"prefect:{workers}")(dataclasses.replace(ctx, results_dir=Path(d) / "p"), tasks)
        print(f"  prefect:{workers} (threads, incl. flow start) {time.time() - t0:.1f} s")
        assert [r.probabilities for r in got] == [r.probabilities for r in ref]
        t0 = time.time()
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as c:
            t1 = time.time()
            got = make_runner(c.scheduler_address)(dataclasses.replace(ctx, results_dir=Path(d) / "d"), tasks)
            t2 = time.time()
        print(f"  dask LocalCluster x{workers}: cluster start {t1 - t0:.1f} s, folds {t2 - t1:.1f} s")
        assert [r.probabilities for r in got] == [r.probabilities for r in ref]
        print("  identical predictions and probabilities: yes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--project", type=Path, help="an up-to-date DVC project (a clone) for the flow overhead")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--folds-only", action="store_true", help="only the fan-out benchmark")
    ap.add_argument("--images", type=int, default=213)
    ap.add_argument("--runs", type=int, default=2, help="runs of 10 folds")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dim", type=int, default=2048, help="feature dimension (ResNet-50: 2048)")
    args = ap.parse_args()
    for key, value in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                       "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90"}.items():  # fmt: skip
        os.environ.setdefault(key, value)
    if args.project and not args.folds_only:
        bench_flow(args.project.resolve(), args.repeat)
    bench_folds(args.images, args.runs, args.workers, args.dim)


if __name__ == "__main__":
    main()
