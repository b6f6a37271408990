"""GPU check: the paper's protocol (fine-tuned ResNet-50) on one GPU, timed.

Runs the train stage's own code (ferpipe.train.run_training, tracking off) over the split
plan with several folds in flight at once (train.workers processes, each with its own
CUDA context; images resident on the GPU as uint8; bf16 autocast; channels_last), then
the paper's metrics (ferpipe.metrics) over every complete run. Needs only torch,
torchvision, numpy, pandas, pillow, pyyaml, safetensors, tqdm (no dvc/mlflow/prefect).

Scaling is honest: folds are queued run by run; at --budget-s no new fold starts, and
only complete runs (all folds of a run) are reported, with the count. Prints images/s,
mean GPU utilisation (nvidia-smi), wall time and OA; writes --metrics (JSON, with
provenance) and a tarball of the fold results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ferpipe import config, metrics, train  # noqa: E402
from ferpipe.foldio import group_by_run, load_results  # noqa: E402


class GpuSampler(threading.Thread):
    """Samples nvidia-smi utilisation every second (None where nvidia-smi is missing)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float, float]] = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(1.0):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)  # fmt: skip
                util, mem = (float(v) for v in out.stdout.strip().splitlines()[0].split(","))
                self.samples.append((time.time(), util, mem))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return

    def mean_util(self, t0: float, t1: float) -> float | None:
        v = [u for t, u, _ in self.samples if t0 <= t <= t1]
        return float(np.mean(v)) if v else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--manifest", type=Path, default=config.MANIFEST, help="manifest.csv from ingest (images beside it)")
    ap.add_argument("--plan", type=Path, default=config.SPLIT_PLAN, help="split_plan.csv from split")
    ap.add_argument("--weights", type=Path, default=config.WEIGHTS_FILE, help="ImageNet ResNet-50 safetensors (fp16 is upcast)")
    ap.add_argument("--params", type=Path, nargs="+", default=[config.PARAMS_FILE, REPO / "profiles/paper.yaml"],
                    help="params files; later ones override (default: params.yaml + profiles/paper.yaml)")
    ap.add_argument("--workers", type=int, default=8, help="folds trained concurrently on the GPU")
    ap.add_argument("--budget-s", type=float, default=330, help="no new fold starts after this many seconds")
    ap.add_argument("--out", type=Path, default=Path("artifacts/gpu_check"), help="fold results and logs")
    ap.add_argument("--metrics", type=Path, default=Path("metrics/paper.json"), help="metrics JSON to write")
    ap.add_argument("--provenance", type=Path, help="JSON merged into the metrics' provenance (git commit, ...)")
    ap.add_argument("--recipe", action="append", default=[],
                    help="NAME:key=value,... candidate recipes; with any, phase 1 compares them on the validation "
                    "groups of stratified run 1 (benchmarks/finetune_recipes.py) and phase 2 uses the best")
    ap.add_argument("--recipe-budget-s", type=float, default=120, help="time limit of phase 1")
    ap.add_argument("--recipe-folds", default="1-10", help="folds of stratified run 1 that phase 1 uses")
    args = ap.parse_args(argv)

    raw = config.read_params_files(args.params)
    raw["train"] = dict(raw.get("train", {}), workers=args.workers, log_mlflow=False, mode="finetune")
    chosen = None
    if args.recipe:
        sys.path.insert(0, str(REPO / "benchmarks"))
        import finetune_recipes

        rj = args.out / "recipes.json"
        t_r = time.time()
        params_file = args.out / "params_phase1.yaml"
        params_file.parent.mkdir(parents=True, exist_ok=True)
        import yaml

        params_file.write_text(yaml.safe_dump(raw))
        rc = finetune_recipes.main(["--manifest", str(args.manifest), "--plan", str(args.plan), "--weights",
                                    str(args.weights), "--params", str(params_file), "--image-size",
                                    str(raw["train"].get("image_size", 224)), "--workers", str(args.workers),
                                    "--budget-s", str(args.recipe_budget_s), "--folds", args.recipe_folds, "--json", str(rj),
                                    *[a for r in args.recipe for a in ("--recipe", r)]])  # fmt: skip
        if rc:
            return rc
        res = json.loads(rj.read_text())
        chosen = {"name": res["chosen"], "wall_s": round(time.time() - t_r, 1), "summary": res["summary"]}
        for item in filter(None, next(r for r in args.recipe if r.partition(":")[0] == res["chosen"]).partition(":")[2].split(",")):
            key, _, value = item.partition("=")
            raw["train"][key] = yaml.safe_load(value)
        print(f"gpu_check: phase 2 uses recipe {res['chosen']} (best mean validation accuracy)", flush=True)
    p = config.parse_section("train", raw["train"], train.TrainParams)
    device, dtype = train.resolve_runtime(p)
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "none"
    print(f"gpu_check: torch {torch.__version__}, device {device} ({gpu}), dtype {dtype}, "
          f"{args.workers} workers, budget {args.budget_s:.0f} s", flush=True)  # fmt: skip
    sampler = GpuSampler()
    sampler.start()
    t0 = time.time()
    summary = train.run_training(args.manifest, args.plan, args.weights, args.out, p,
                                 deadline=t0 + args.budget_s)  # fmt: skip
    t1 = time.time()
    sampler.stop.set()
    wall = t1 - t0
    results = [r for protocol in config.PROTOCOLS for r in load_results(args.out / p.method, protocol)
               if r.extra.get("method_config_hash", r.config_hash) == summary["config_hash"][p.method]]  # fmt: skip
    seen = sum(r.extra.get("train_images_seen", 0) for r in results)
    plan = train.cv.read_plan(args.plan)
    n_runs_plan, n_groups = int(plan["run"].max()), int(plan["fold"].max())
    # the aggregate stage's format ({method: {protocol: summary}}) plus provenance keys
    out = {p.method: {}, "config": summary["config"], "recipe_selection": chosen}
    for protocol in sorted({r.protocol for r in results}):
        by_run = group_by_run([r for r in results if r.protocol == protocol])
        complete = {run: rs for run, rs in by_run.items() if len(rs) == n_groups}
        if not complete:
            continue
        s = metrics.summarize({run: metrics.run_matrix([r.confusion_matrix for r in rs]) for run, rs in complete.items()})
        s["n_runs"] = len(complete)
        s["n_runs_planned"] = n_runs_plan
        out[p.method][protocol] = s
    util = sampler.mean_util(t0, t1)
    out["timing"] = {"wall_s": round(wall, 1), "train_images_seen": seen, "images_per_s": round(seen / wall, 1),
                     "gpu_util_mean_pct": util, "workers": args.workers, "budget_s": args.budget_s,
                     "folds_done": len(results), "folds_planned": summary["run"]["n_folds_planned"]}  # fmt: skip
    prov = json.loads(args.provenance.read_text()) if args.provenance and args.provenance.exists() else {}
    prov.update(gpu=gpu, torch=torch.__version__, python=platform.python_version(), cpu_cores=os.cpu_count(),
                date_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))  # fmt: skip
    out["provenance"] = prov
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(out, indent=1))
    with tarfile.open(args.out / "folds.tar.gz", "w:gz") as tar:
        tar.add(args.out / p.method, arcname=p.method)
    print(f"\ngpu_check: {len(results)}/{summary['run']['n_folds_planned']} folds in {wall:.0f} s, "
          f"{seen / wall:.0f} train images/s, mean GPU utilisation {util if util is None else round(util)} %")
    print("| protocol | complete runs | OA mean ± std (%) | grand OA (%) |\n|---|---|---|---|")
    for protocol, s in out[p.method].items():
        print(f"| {protocol} | {s['n_runs']}/{n_runs_plan} | {metrics.pm(s['oa_mean'], s['oa_std'])} | {s['grand_oa']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
