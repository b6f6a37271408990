"""Inference cost of the final model: local predictor and (optionally) the MLflow REST server.

Images are generated (gray, 256x256 PNG), never real data. Prints one JSON line.

    python benchmarks/bench_serving.py --model artifacts/final_model --threads 1
    MLFLOW_TRACKING_URI=sqlite:////tmp/x/mlflow.db python benchmarks/bench_serving.py \\
        --model artifacts/final_model --serve models:/ferpipe-resnet50@champion
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image


def images(n: int, size: int = 256) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), "L").save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def bench_local(model: Path, n: int, threads: int) -> dict:
    import torch

    from ferpipe.serving import FerPredictor

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    pred = FerPredictor.load(model, batch_size=16)
    load = time.perf_counter() - t0
    blobs = images(n)
    pred.predict_bytes(blobs[:1])  # warm-up
    t0 = time.perf_counter()
    for b in blobs:
        pred.predict_bytes([b])
    one = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    pred.predict_bytes(blobs)
    batched = (time.perf_counter() - t0) / n
    return {"load_s": round(load, 3), "per_image_batch1_s": round(one, 4), "per_image_batch16_s": round(batched, 4),
            "threads": torch.get_num_threads(), "image_size": pred.meta["image_size"], "flip_tta": pred.meta["flip_tta"]}  # fmt: skip


def bench_serve(uri: str, n: int) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "MLFLOW_DISABLE_TELEMETRY": "true"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(Path(bin_dir) / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
                             "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None or time.perf_counter() - t0 > 180:
                raise RuntimeError("server did not start")
            try:
                urllib.request.urlopen(url + "/ping", timeout=2).close()
                break
            except OSError:
                time.sleep(0.2)
        start = time.perf_counter() - t0
        b64 = [base64.b64encode(b).decode() for b in images(n)]

        def call(batch):
            body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[b] for b in batch]}}).encode()
            req = urllib.request.Request(url + "/invocations", body, {"Content-Type": "application/json"})
            t = time.perf_counter()
            with urllib.request.urlopen(req, timeout=120) as r:
                assert r.status == 200
                r.read()
            return time.perf_counter() - t

        call(b64[:1])  # warm-up
        single = [call([b]) for b in b64]
        batch = call(b64)
        return {"start_s": round(start, 2), "latency_1_image_median_s": round(float(np.median(single)), 4),
                f"latency_{n}_images_s": round(batch, 4)}  # fmt: skip
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("artifacts/final_model"), help="final model folder")
    ap.add_argument("--images", type=int, default=16, help="generated images per measurement")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for the local predictor (0: default)")
    ap.add_argument("--serve", help="also time `mlflow models serve` on this model URI (uses MLFLOW_TRACKING_URI)")
    args = ap.parse_args()
    out = {"local": bench_local(args.model, args.images, args.threads)}
    if args.serve:
        out["serve"] = bench_serve(args.serve, args.images)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
