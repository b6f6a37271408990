"""Fine-tuning recipe ablation: validation accuracy of recipes on the same folds.

Chooses a recipe by its mean VALIDATION accuracy (the fold's validation group, at the
restored best epoch); test accuracy is printed beside it but is not used to choose.

    python benchmarks/finetune_recipes.py --image-size 112 --folds 1,4 \\
        --recipe default: --recipe sgd:optimizer=sgd,lr=0.01,bn=train,head_init=random

Each --recipe is NAME:key=value,... overriding params.yaml's train section (mode is
always finetune). Prints one line per fold and a table per recipe; --json writes all.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from ferpipe import config, cv, data, finetune, runners, train  # noqa: E402


@dataclasses.dataclass
class Ctx:
    method: str
    images: torch.Tensor
    y: np.ndarray
    pretrained: dict
    params: dict  # recipe name -> TrainParams


def parse_recipe(spec: str, base: dict) -> tuple[str, train.TrainParams]:
    name, _, body = spec.partition(":")
    raw = dict(base, mode="finetune")
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        raw[key] = yaml.safe_load(value)
    return name, config.parse_section("train", raw, train.TrainParams)


def prepare(ctx: Ctx) -> Ctx:
    p = next(iter(ctx.params.values()))
    device, _ = train.resolve_runtime(p)
    return dataclasses.replace(ctx, images=ctx.images.to(device))


def compute(ctx: Ctx, task) -> dict:
    name, protocol, run, fold, roles = task
    p = ctx.params[name]
    device, dtype = train.resolve_runtime(p)
    seed = train.fold_seed(p.seed, protocol, run, fold)
    t0 = time.time()
    model, info = finetune.finetune(ctx.pretrained, ctx.images, ctx.y, roles, p, device, dtype, seed, len(config.CLASSES))
    pt, _ = finetune.evaluate(model, ctx.images, ctx.y, roles["test"], p, device, dtype, len(config.CLASSES))
    if device.type == "cuda":
        torch.cuda.synchronize()
    sel = info["selected"]
    return {"recipe": name, "protocol": protocol, "run": run, "fold": fold,
            "val_start": sel["val_accuracy_at_start"], "val_best": sel["val_accuracy"],
            "best_epoch": sel["best_epoch"], "test_correct": int((pt.argmax(1) == ctx.y[roles["test"]]).sum()),
            "test_n": len(roles["test"]), "seconds": time.time() - t0, "images_seen": info["train_images_seen"],
            "val_curve": info["curves"]["val_accuracy"]}  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--manifest", type=Path, default=config.MANIFEST, help="manifest.csv from ingest")
    ap.add_argument("--plan", type=Path, default=config.SPLIT_PLAN, help="split_plan.csv from split")
    ap.add_argument("--weights", type=Path, default=config.WEIGHTS_FILE, help="ImageNet ResNet-50 safetensors")
    ap.add_argument("--params", type=Path, default=config.PARAMS_FILE, help="params.yaml (train section = base recipe)")
    ap.add_argument("--image-size", type=int, default=112, help="input side in pixels")
    ap.add_argument("--protocol", default="stratified", help="protocol of the plan to use")
    ap.add_argument("--run", type=int, default=1, help="run of the plan to use")
    ap.add_argument("--folds", default="1-10", help="folds, e.g. 1-10 or 1,4")
    ap.add_argument("--recipe", action="append", required=True, help="NAME:key=value,... (repeatable)")
    ap.add_argument("--workers", type=int, default=1, help="concurrent worker processes")
    ap.add_argument("--json", type=Path, help="write every fold's numbers here")
    ap.add_argument("--budget-s", type=float, help="no new fold starts after this many seconds; recipes are "
                    "then compared on the folds every recipe finished")
    args = ap.parse_args(argv)
    lo, _, hi = args.folds.partition("-")
    folds = list(range(int(lo), int(hi) + 1)) if hi else [int(f) for f in args.folds.split(",")]
    base = dict(config.read_params_file(args.params).get("train", {}), image_size=args.image_size)
    params = dict(parse_recipe(s, base) for s in args.recipe)
    manifest = data.read_manifest(args.manifest)
    plan = cv.read_plan(args.plan)
    plan = plan[(plan.protocol == args.protocol) & (plan.run == args.run) & plan.fold.isin(folds)]
    index_of = cv.check_plan_matches(plan, manifest)
    from safetensors.torch import load_file

    ctx = Ctx("recipes", data.load_images_uint8(manifest, args.manifest.parent, args.image_size),
              data.labels_of(manifest), {k: v.float() for k, v in load_file(str(args.weights)).items()}, params)  # fmt: skip
    # fold-major order: under a time budget every recipe has the same folds done
    tasks = [(name, pr, run, fold, roles) for pr, run, fold, roles in cv.fold_indices(plan, index_of)
             for name in params]  # fmt: skip
    t0 = time.time()
    deadline = t0 + args.budget_s if args.budget_s else None
    rows = runners.run_processes(ctx, tasks, compute, args.workers, prepare=prepare, deadline=deadline)
    wall = time.time() - t0
    common = set.intersection(*({r["fold"] for r in rows if r and r["recipe"] == n} for n in params))
    rows = [r for r in rows if r and r["fold"] in common]
    if not rows:
        print("no fold finished for every recipe within the budget", file=sys.stderr)
        return 1
    for r in rows:
        print(f"{r['recipe']:>14} fold {r['fold']:2d}: val start {r['val_start']:.3f} best {r['val_best']:.3f} "
              f"(epoch {r['best_epoch']}) test {r['test_correct']}/{r['test_n']} {r['seconds']:.0f}s")
    print("\n| recipe | folds | mean val acc (chooses) | test OA (not used) | s/fold | img/s | recipe |")
    print("|---|---|---|---|---|---|---|")
    summary = {}
    for name in params:
        rs = [r for r in rows if r["recipe"] == name]
        val = float(np.mean([r["val_best"] for r in rs]))
        oa = 100 * sum(r["test_correct"] for r in rs) / sum(r["test_n"] for r in rs)
        sec = float(np.mean([r["seconds"] for r in rs]))
        ips = sum(r["images_seen"] for r in rs) / sum(r["seconds"] for r in rs)
        spec = next(s for s in args.recipe if s.partition(":")[0] == name).partition(":")[2] or "(params.yaml)"
        summary[name] = {"mean_val_accuracy": val, "test_oa": oa, "seconds_per_fold": sec, "folds": len(rs),
                         "overrides": spec, "images_per_s_per_worker": ips}
        print(f"| {name} | {len(rs)} | {val:.3f} | {oa:.1f} | {sec:.0f} | {ips:.0f} | {spec} |")
    best = max(summary, key=lambda k: summary[k]["mean_val_accuracy"])  # ties: the first listed
    print(f"\nchosen by validation accuracy: {best}; wall {wall:.0f} s, {args.workers} worker(s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "summary": summary, "chosen": best, "wall_s": wall,
                                         "image_size": args.image_size, "recipes": args.recipe}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
