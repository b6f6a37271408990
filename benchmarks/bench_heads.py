"""Frozen-head fitting time per fold against the number of training images.

Uses the train stage's cached JAFFE features (artifacts/train/features_cache_224.npz; run
`dvc repro train` first). Larger sets are made for this benchmark only by repeating the
213 images' features with small Gaussian jitter (labels repeated): the solver's cost
depends on the matrix sizes, not on where the features came from. For each size, a few
stratified folds (10 groups: 8 train, 1 val, 1 test) are fitted with the batched solver
(ferpipe.heads, the train stage's default C grid) and, on the smallest size, with
scikit-learn's LogisticRegression for comparison. Prints seconds per fold, the row-space
dimension, the projected time for 10 runs x 10 folds x 2 protocols, and how the time grew
against the rows from the previous size (linear = the two ratios equal). Above 2,048 rows
the basis comes from the d x d side (ferpipe.heads.RowSpace), so the cost is linear in rows.

    python benchmarks/bench_heads.py --sizes 213 500 1500 --folds 4
    python benchmarks/bench_heads.py --sizes 1500 15000 --folds 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from ferpipe import data, heads  # noqa: E402
from ferpipe.train_params import TrainParams  # noqa: E402


def folds_for(y: np.ndarray, n_folds: int, seed: int = 0) -> list[heads.FoldHeadProblem]:
    from sklearn.model_selection import StratifiedKFold

    groups = np.zeros(len(y), dtype=int)
    for g, (_, te) in enumerate(StratifiedKFold(10, shuffle=True, random_state=seed).split(y, y)):
        groups[te] = g
    out = []
    for k in range(n_folds):
        te, va = groups == k, groups == (k + 1) % 10
        out.append(heads.FoldHeadProblem(np.flatnonzero(~te & ~va), np.flatnonzero(va), np.flatnonzero(te)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--features", type=Path, default=REPO / "artifacts/train/features_cache_224.npz",
                    help="the train stage's feature cache")  # fmt: skip
    ap.add_argument("--manifest", type=Path, default=REPO / "artifacts/ingest/manifest.csv", help="for the labels")
    ap.add_argument("--sizes", type=int, nargs="+", default=[213, 500, 1500], help="numbers of images")
    ap.add_argument("--folds", type=int, default=4, help="folds timed per size (the projection scales them)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with np.load(args.features) as z:
        base = z["features"][..., :2048]  # (views, 213, 2048): the layer4 global average
    y0 = data.labels_of(data.read_manifest(args.manifest))
    p = TrainParams()
    rng = np.random.default_rng(0)
    print(f"C grid {p.head_c_grid}, tol {p.head_tol}, {args.threads} threads; 'projected' = per-fold time x 200 folds")
    print(f"{'images':>7} {'train rows':>10} {'row-space dim':>13} {'batched s/fold':>14} {'projected 200 folds s':>22}"
          f" {'time ratio / rows ratio vs previous':>36}")  # fmt: skip
    prev = None
    for n in args.sizes:
        reps = int(np.ceil(n / base.shape[1]))
        feats = np.concatenate([base + (rng.normal(0, 0.05, base.shape) * base.std() if r else 0)
                                for r in range(reps)], axis=1)[:, :n].astype(np.float32)  # fmt: skip
        y = np.tile(y0, reps)[:n]
        problems = folds_for(y, args.folds)
        pad = feats.shape[0] * max(len(f.train) for f in problems)
        t0 = time.perf_counter()
        heads.fit_fold_heads(feats, y, problems, p.head_c_grid, 7, pad, p.head_max_iter, p.head_tol)
        per_fold = (time.perf_counter() - t0) / len(problems)
        dim = min(pad, feats.shape[2])
        growth = f"{per_fold / prev[1]:.1f} / {n / prev[0]:.1f}" if prev else "-"
        print(f"{n:>7} {pad:>10} {dim:>13} {per_fold:>14.2f} {200 * per_fold:>22.0f} {growth:>36}", flush=True)
        prev = (n, per_fold)
        if n == min(args.sizes):
            from sklearn.linear_model import LogisticRegression

            t0 = time.perf_counter()
            for f in problems:
                x = np.concatenate([feats[v, f.train] for v in range(feats.shape[0])])
                space, zt = heads.RowSpace.fit(x)
                for c in p.head_c_grid:
                    LogisticRegression(C=c, max_iter=p.head_max_iter).fit(zt, np.tile(y[f.train], feats.shape[0]))
            sk = (time.perf_counter() - t0) / len(problems)
            print(f"{'':>7} scikit-learn lbfgs, same row space, one fold at a time: {sk:.2f} s/fold "
                  f"({200 * sk:.0f} s projected)")  # fmt: skip


if __name__ == "__main__":
    main()
