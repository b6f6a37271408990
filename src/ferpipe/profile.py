"""Run a params profile (an overlay of params.yaml) through train + aggregate.

    python -m ferpipe.profile smoke     # finetune smoke test, CPU, ~2 min
    python -m ferpipe.profile paper     # the paper's full fine-tuning (GPU)

A profile is ``profiles/<name>.yaml``; its sections override params.yaml key by key.
Outputs go to ``artifacts/profiles/<name>/`` and the metrics to ``metrics/<name>.json``
(committed, so the CI gate compares fresh runs against them). It reuses the ingest,
split and weights outputs of the default pipeline (run `dvc repro split weights` first).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import aggregate, config, train


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("name", help="profile name: profiles/<name>.yaml")
    ap.add_argument("--profiles-dir", type=Path, default=Path("profiles"), help="folder holding the profiles")
    ap.add_argument("--out", type=Path, help="output folder (default artifacts/profiles/<name>)")
    ap.add_argument("--metrics", type=Path, help="metrics JSON (default metrics/<name>.json)")
    args = ap.parse_args(argv)
    overlay = args.profiles_dir / f"{args.name}.yaml"
    if not overlay.exists():
        known = sorted(p.stem for p in args.profiles_dir.glob("*.yaml"))
        print(f"profile: error: {overlay} not found (known profiles: {', '.join(known) or 'none'})", file=sys.stderr)
        return 2
    out = args.out or Path("artifacts/profiles") / args.name
    metrics = args.metrics or config.METRICS_DIR / f"{args.name}.json"
    params = [str(config.PARAMS_FILE), str(overlay)]
    rc = train.main(["--params", *params, "--out", str(out / "train")])
    if rc:
        return rc
    return aggregate.main(["--results", str(out / "train"), "--out", str(out / "aggregate"),
                           "--metrics", str(metrics), "--mlflow-record", str(out / "train" / "mlflow.json")])  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
