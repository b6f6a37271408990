"""Which backbone features the frozen head should read: an ablation chosen on validation groups.

For every candidate list of taps (``ferpipe.features``: ``<layer>:<grid>``), the train
stage's own head (``ferpipe.heads``: image + flip rows, C chosen per fold on its validation
group) is fitted on the folds of the first ``--runs`` runs of both protocols of the split
plan. One forward pass computes every layer; each candidate pools what it needs. Prints a
table: mean **validation** accuracy over both protocols (what chooses), then test OA per
protocol (shown, never used to choose), dimensions and fit time; writes it as JSON.

    python benchmarks/feature_taps.py --runs 3 --out benchmarks/results/feature_taps.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ferpipe import cv, data, heads
from ferpipe.features import LAYERS, parse_tap
from ferpipe.finetune import to_input
from ferpipe.io import write_json
from ferpipe.model import build_resnet50
from ferpipe.train_params import TrainParams

CANDIDATES = [
    ["layer4:1"], ["layer3:1"], ["layer4:2"], ["layer3:3"], ["layer2:3"], ["layer2:6"], ["layer1:6"],
    ["layer2:3", "layer3:3"], ["layer2:4", "layer3:2"], ["layer2:6", "layer3:3"], ["layer3:3", "layer4:1"],
    ["layer2:3", "layer3:3", "layer4:1"],
]  # fmt: skip


@torch.no_grad()
def pooled_maps(images: torch.Tensor, grids: dict[str, set[int]], batch: int) -> dict[str, np.ndarray]:
    """{'layer2:3': (2, N, d)} for every (layer, grid) asked, image and flip (fp32)."""
    from safetensors.torch import load_file

    net = build_resnet50(1000, "v1")
    net.load_state_dict(load_file("models/resnet50_imagenet.safetensors"))
    net.eval()
    out: dict[str, list] = {f"{layer}:{g}": [[], []] for layer, gs in grids.items() for g in gs}
    deepest = max(LAYERS.index(layer) for layer in grids)
    for v in (0, 1):
        for s in range(0, len(images), batch):
            x = to_input(images[s : s + batch], torch.device("cpu"))
            if v:
                x = torch.flip(x, dims=[3])
            h = net.maxpool(net.relu(net.bn1(net.conv1(x))))
            maps = {"stem": h}
            for name in LAYERS[1 : deepest + 1]:
                h = getattr(net, name)(h)
                maps[name] = h
            for layer, gs in grids.items():
                for g in gs:
                    out[f"{layer}:{g}"][v].append(torch.nn.functional.adaptive_avg_pool2d(maps[layer], g).flatten(1).numpy())
    return {k: np.stack([np.concatenate(v[0]), np.concatenate(v[1])]) for k, v in out.items()}


def ridge_folds(feats: np.ndarray, y: np.ndarray, problems, alphas: list[float], n_classes: int):
    """One-vs-all ridge regression in Gram form (lambda = alpha x mean diagonal of the Gram
    matrix), chosen per fold on its validation group; scores averaged over the views."""
    out = []
    views = range(feats.shape[0])
    for pr in problems:
        x_tr = np.concatenate([feats[v, pr.train] for v in views]).astype(np.float64)
        mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
        xs = (x_tr - mu) / sd
        t = np.eye(n_classes)[np.tile(y[pr.train], feats.shape[0])]
        k = xs @ xs.T
        evals, evecs = np.linalg.eigh(k)
        proj = evecs.T @ (t - t.mean(0))
        weights = [xs.T @ (evecs @ (proj / (evals + a * np.trace(k) / len(k))[:, None])) for a in alphas]
        val = [np.mean([((feats[v, pr.val] - mu) / sd) @ w for v in views], axis=0) for w in weights]
        accs = [float((sc.argmax(1) == y[pr.val]).mean()) for sc in val]
        best = max(range(len(alphas)), key=lambda g: (accs[g], -g))
        test = np.mean([((feats[v, pr.test] - mu) / sd) @ weights[best] for v in views], axis=0)
        out.append((test, {"selected": {"C": alphas[best], "val_accuracy": accs[best],
                                        "at_grid_edge": best in (0, len(alphas) - 1)}}))  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--manifest", type=Path, default=Path("artifacts/ingest/manifest.csv"), help="ingest manifest")
    ap.add_argument("--plan", type=Path, default=Path("artifacts/split/split_plan.csv"), help="split plan")
    ap.add_argument("--runs", type=int, default=3, help="first N runs of each protocol")
    ap.add_argument("--image-size", type=int, default=224, help="input side (px)")
    ap.add_argument("--candidate", action="append", help="a tap list, e.g. layer2:3,layer3:3 (repeatable; "
                    "default: the built-in list)")
    ap.add_argument("--c-grid", type=float, nargs="+", help="the head's C grid (default: train.head_c_grid)")
    ap.add_argument("--head", choices=["logistic", "ridge"], default="logistic",
                    help="the head: the train stage's logistic regression (default) or a ridge probe (alpha = --c-grid)")
    ap.add_argument("--out", type=Path, help="write the table as JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    p = TrainParams(head_c_grid=args.c_grid) if args.c_grid else TrainParams()
    cands = [c.split(",") for c in args.candidate] if args.candidate else CANDIDATES
    grids: dict[str, set[int]] = {}
    for c in cands:
        for t in c:
            layer, g = parse_tap(t, "--candidate", args.image_size)
            grids.setdefault(layer, set()).add(g)
    manifest = data.read_manifest(args.manifest)
    y = data.labels_of(manifest)
    images = data.load_images_uint8(manifest, args.manifest.parent, args.image_size)
    t0 = time.time()
    maps = pooled_maps(images, grids, 32)
    forward_s = time.time() - t0
    folds, _ = cv.plan_folds(args.plan, manifest, args.runs, 0)
    rows = []
    for c in cands:
        feats = np.concatenate([maps[t] for t in c], axis=-1)
        t0 = time.time()
        res = {}
        for proto in ("stratified", "subject"):
            fs = [f for f in folds if f[0] == proto]
            problems = [heads.FoldHeadProblem(r["train"], r["val"], r["test"]) for *_, r in fs]
            pad = 2 * max(len(pr.train) for pr in problems)
            fitted = []
            if args.head == "ridge":
                fitted = ridge_folds(feats, y, problems, p.head_c_grid, 7)
            for s in range(0, len(problems) if args.head == "logistic" else 0, 20):
                fitted += heads.fit_fold_heads(feats, y, problems[s : s + 20], p.head_c_grid, 7, pad,
                                               p.head_max_iter, p.head_tol)  # fmt: skip
            val = np.mean([info["selected"]["val_accuracy"] for _, info in fitted])
            right = sum(int((prob.argmax(1) == y[pr.test]).sum()) for (prob, _), pr in zip(fitted, problems, strict=True))
            chosen = [info["selected"]["C"] for _, info in fitted]
            res[proto] = {"val_acc": float(val), "test_oa": 100 * right / sum(len(pr.test) for pr in problems),
                          "edge": float(np.mean([info["selected"]["at_grid_edge"] for _, info in fitted])),
                          "C_counts": {str(c): chosen.count(c) for c in p.head_c_grid}}  # fmt: skip
        rows.append({"taps": c, "dims": int(feats.shape[-1]), "fit_s": round(time.time() - t0, 1),
                     "val_mean": float(np.mean([res[k]["val_acc"] for k in res])), **res})  # fmt: skip
        r = rows[-1]
        print(f"{','.join(c):28s} d={r['dims']:6d} val {r['val_mean']:.4f} (strat {res['stratified']['val_acc']:.3f} "
              f"subj {res['subject']['val_acc']:.3f}) | test OA strat {res['stratified']['test_oa']:.2f} "
              f"subj {res['subject']['test_oa']:.2f} | C chosen {res['stratified']['C_counts']} / "
              f"{res['subject']['C_counts']} | {r['fit_s']} s", flush=True)  # fmt: skip
    best = max(rows, key=lambda r: r["val_mean"])
    print(f"chosen on validation: {','.join(best['taps'])} (mean val acc {best['val_mean']:.4f}); forward pass "
          f"{forward_s:.1f} s for {len(images)} images x 2 views")  # fmt: skip
    if args.out:
        write_json(args.out, {"command": "python benchmarks/" + Path(__file__).name + " " + " ".join(sys.argv[1:]),
                              "runs": args.runs, "image_size": args.image_size, "c_grid": p.head_c_grid,
                              "forward_s": round(forward_s, 1), "rows": rows, "chosen": best["taps"]})  # fmt: skip
    print(json.dumps({"chosen": best["taps"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
