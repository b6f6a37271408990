"""Wall time per stage of the default pipeline, MLflow's share of the train stage, and the
train stage against its compute floor: a bare PyTorch forward pass over the same images
(every input size and flip view the frozen heads read, fp32, the stage's thread count).

Forces the stages of dvc.yaml to rerun one by one, in DAG order (`dvc repro -f -s`),
and prints a table. Persisted fold results are moved aside first so train and baselines
really recompute (they are put back only if the run fails).

    python benchmarks/bench_stages.py                   # in a project where `dvc repro` has run once
    python benchmarks/bench_stages.py --stages train    # only these stages
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-C", "--project", type=Path, default=Path.cwd(), help="DVC project root")
    ap.add_argument("--stages", help="comma-separated stage names (default: all, in DAG order)")
    args = ap.parse_args()
    from pipeline.flow import dvc_stages

    root = args.project.resolve()
    stages = [s.name for s in dvc_stages(root)]
    if args.stages:
        unknown = set(args.stages.split(",")) - set(stages)
        if unknown:
            sys.exit(f"unknown stage(s) {sorted(unknown)}; stages: {stages}")
        stages = [s for s in stages if s in args.stages.split(",")]
    aside = Path(tempfile.mkdtemp(prefix="bench-stages-"))
    moved = []
    for rel in ("artifacts/train", "artifacts/baselines"):
        if rel.split("/")[1] in stages and (root / rel).exists():
            shutil.move(root / rel, aside / rel.replace("/", "_"))
            moved.append(rel)
    # stage commands say `python`: make it this interpreter (the venv) whatever PATH was
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    rows, total = [], 0.0
    try:
        for stage in stages:
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "dvc", "repro", "-f", "-s", stage], cwd=root, env=env,
                               capture_output=True, text=True)  # fmt: skip
            dt = time.perf_counter() - t0
            if r.returncode:
                sys.exit(f"stage {stage} failed:\n{r.stderr[-2000:]}")
            rows.append((stage, dt))
            total += dt
    except BaseException:
        for rel in moved:
            if not (root / rel).exists():
                shutil.move(aside / rel.replace("/", "_"), root / rel)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    print(f"{'stage':14s} {'wall s':>8s}")
    for stage, dt in rows:
        print(f"{stage:14s} {dt:8.1f}")
    print(f"{'total':14s} {total:8.1f}")
    t = json.loads((root / "artifacts/train/run.json").read_text())["timings_s"]  # the train run record
    print(f"train stage internals: {t}; MLflow logging = {100 * t['mlflow_s'] / (t['total_s'] - t['mlflow_s']):.1f} % "
          "of the train work (target < 15 %)")
    if "train" in stages:
        floor = bare_forward_s(root)
        train_s = dict(rows)["train"]
        print(f"train stage {train_s:.1f} s (target <= 120 s) = {train_s / floor:.2f} x the bare forward pass "
              f"({floor:.1f} s); features {t.get('features_s', 0):.1f} s, folds {t.get('folds_s', 0):.1f} s")


def bare_forward_s(root: Path) -> float:
    """Seconds of a plain torchvision-style forward pass over the images the frozen heads read."""
    import torch

    sys.path.insert(0, str(root / "src"))
    from ferpipe import config, data
    from ferpipe.features import tap_features
    from ferpipe.model import build_resnet50, normalize
    from ferpipe.train_params import TrainParams

    p = config.load_section("train", [root / "params.yaml"])
    assert isinstance(p, TrainParams)
    torch.set_num_threads(p.threads)
    manifest = data.read_manifest(root / "artifacts/ingest/manifest.csv")
    net = build_resnet50(1000, p.stride_layout).eval()
    total = 0.0
    for size, taps in p.taps_by_size().items():
        x = data.load_images_uint8(manifest, root / "artifacts/ingest", size)
        t0 = time.perf_counter()
        with torch.no_grad():
            for flip in (False, True) if p.flip_features else (False,):
                for s in range(0, len(x), p.batch_size):
                    b = normalize(x[s : s + p.batch_size].float() / 255)
                    tap_features(net, torch.flip(b, dims=[3]) if flip else b, taps)
        total += time.perf_counter() - t0
    return total


if __name__ == "__main__":
    main()
