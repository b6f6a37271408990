"""Inference cost of the final model: the local predictor, and a bounded load test of the
REST front door (``python -m ferpipe.rest``, loopback only). Prints one JSON line:
requests/s, p50/p95 latency, the server's RSS before and after the load.

Local timings use generated gray 256x256 PNGs; the load test sends real faces from
``--faces`` (default ../shared/data/jaffe, never copied anywhere) so the face check runs.

    python benchmarks/bench_serving.py --model artifacts/final_model --threads 2 \\
        --serve artifacts/final_model --requests 200 --clients 8
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
import urllib.error
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
    pred.predict_bytes(blobs[:1], face_check=False)  # warm-up (generated images: no face to check)
    t0 = time.perf_counter()
    for b in blobs:
        pred.predict_bytes([b], face_check=False)
    one = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    pred.predict_bytes(blobs, face_check=False)
    batched = (time.perf_counter() - t0) / n
    return {"load_s": round(load, 3), "per_image_batch1_s": round(one, 4), "per_image_batch16_s": round(batched, 4),
            "threads": torch.get_num_threads(), "image_size": pred.meta["image_size"], "flip_tta": pred.meta["flip_tta"]}  # fmt: skip


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def bench_serve(model: str, n_requests: int, clients: int, faces: Path | None, threads: int) -> dict:
    """A bounded load test of ``python -m ferpipe.rest``: n_requests one-image requests from
    ``clients`` concurrent clients (loopback only), then the server is stopped."""
    import concurrent.futures as cf

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [sys.executable, "-m", "ferpipe.rest", "--model", model, "--port", str(port)]
    if threads:
        cmd += ["--threads", str(threads)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
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
        if faces is not None:  # real faces: the face check runs as it would for a user
            files = sorted(f for f in faces.iterdir() if f.suffix.lower() in (".tiff", ".tif", ".png", ".jpg"))
            blobs, params = [f.read_bytes() for f in files[:50]], {}
        else:  # generated images have no face: the check is switched off
            blobs, params = images(50), {"face_check": False}
        bodies = [json.dumps({"inputs": [base64.b64encode(b).decode()], "params": params}).encode() for b in blobs]

        def call(i: int) -> tuple[float, int]:
            req = urllib.request.Request(url + "/invocations", bodies[i % len(bodies)], {"Content-Type": "application/json"})
            t = time.perf_counter()
            try:
                with urllib.request.urlopen(req, timeout=120) as r:
                    r.read()
                    status = r.status
            except urllib.error.HTTPError as e:
                status = e.code
            return time.perf_counter() - t, status

        call(0)  # warm-up
        rss_before = rss_mb(proc.pid)
        t = time.perf_counter()
        with cf.ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(call, range(n_requests)))
        wall = time.perf_counter() - t
        lat = np.array([r[0] for r in results])
        return {"start_s": round(start, 2), "requests": n_requests, "clients": clients,
                "images": "real faces" if faces is not None else "generated (face_check off)",
                "requests_per_s": round(n_requests / wall, 2), "p50_latency_s": round(float(np.percentile(lat, 50)), 4),
                "p95_latency_s": round(float(np.percentile(lat, 95)), 4),
                "status_counts": {str(k): sum(r[1] == k for r in results) for k in sorted({r[1] for r in results})},
                "rss_mb_before": rss_before, "rss_mb_after": rss_mb(proc.pid)}  # fmt: skip
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("artifacts/final_model"), help="final model folder")
    ap.add_argument("--images", type=int, default=16, help="generated images per measurement")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for the local predictor (0: default)")
    ap.add_argument("--serve", help="also load-test `python -m ferpipe.rest` on this model (folder or MLflow URI)")
    ap.add_argument("--requests", type=int, default=200, help="requests in the load test (bounded)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients in the load test")
    default_faces = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "jaffe"
    ap.add_argument("--faces", type=Path, default=default_faces if default_faces.is_dir() else None,
                    help="folder of real face photos for the load test (default ../shared/data/jaffe when present; "
                         "without it generated images with face_check off)")
    args = ap.parse_args()
    out = {"local": bench_local(args.model, args.images, args.threads)}
    if args.serve:
        out["serve"] = bench_serve(args.serve, args.requests, args.clients, args.faces, args.threads)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
