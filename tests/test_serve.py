"""REST serving: `mlflow models serve -m models:/<name>@champion --env-manager local` answers.

Builds a small final model with the real stage code (random-init ResNet-50, 32 px, generated
faces), logs and registers it in a throw-away SQLite store, starts the server on a free
127.0.0.1 port, POSTs base64 images to /invocations and always stops the server.
"""

from __future__ import annotations

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
import pytest
from PIL import Image

from ferpipe.config import CLASSES

pytestmark = pytest.mark.slow
PING_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, payload: dict, timeout: float = 60) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def strict_loads(body: bytes):
    def no_nan(x):
        raise ValueError(f"non-standard JSON constant {x}")

    return json.loads(body, parse_constant=no_nan)


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A final model logged + registered as fer-serve@champion in a temp store."""
    import torch

    from ferpipe import final_model, ingest, tracking
    from ferpipe.config import IngestParams
    from ferpipe.weights import random_init_state_dict, save_safetensors

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_image

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serve")
    i = 0
    for subj in ["KA", "KL"]:
        for code in ["AN", "DI", "FE", "HA", "NE", "SA", "SU"]:
            i += 1
            make_image(root / "raw" / f"{subj}.{code}1.{i}.tiff", seed=100 + i, size=40)
    ingest.ingest(root / "raw", root / "ing", IngestParams(image_size=32))
    save_safetensors(random_init_state_dict(), root / "w.safetensors")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "FERPIPE_MLFLOW_ARTIFACTS": str(root / "mlartifacts")}
    old = {k: os.environ.get(k) for k in [*env, tracking.PARENT_ENV]}
    os.environ.update(env)
    os.environ.pop(tracking.PARENT_ENV, None)
    try:
        raw = {"train": {"image_size": 32, "threads": 1}, "ingest": {"image_size": 32},
               "final_model": {"registered_model_name": "fer-serve", "alias": "champion"}}  # fmt: skip
        s = final_model.run_stage(root / "ing" / "manifest.csv", root / "w.safetensors", root / "final", raw, None, None)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert s["mlflow"]["registered_uri"] == "models:/fer-serve@champion"
    return root, env


@pytest.fixture(scope="module")
def server(registered):
    root, store_env = registered
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)  # uvicorn + mlflow of this environment
    env = {**os.environ, **store_env, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
           "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}  # fmt: skip
    log = open(root / "serve.log", "wb")
    cmd = [str(Path(bin_dir) / "mlflow"), "models", "serve", "-m", "models:/fer-serve@champion",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{(root / 'serve.log').read_text()[-3000:]}")
            if time.time() - t0 > PING_TIMEOUT_S:
                pytest.fail(f"no /ping answer within {PING_TIMEOUT_S} s:\n{(root / 'serve.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        print(f"\nserver ready after {time.time() - t0:.1f} s")
        yield url
    finally:  # always stop the server and its workers (its own process group)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        log.close()


def png_b64(seed: int, shape=(61, 47)) -> str:
    arr = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def test_invocations_dataframe_split(server):
    t0 = time.time()
    status, body = post(server + "/invocations", {"dataframe_split": {"columns": ["image"], "data": [[png_b64(1)]]}})
    latency = time.time() - t0
    assert status == 200, body[:2000]
    preds = strict_loads(body)["predictions"]
    assert len(preds) == 1
    p = preds[0]
    assert p["label"] in CLASSES and p["error"] == ""
    assert abs(sum(p[c] for c in CLASSES) - 1) < 1e-4 and p["label"] == max(CLASSES, key=lambda c: p[c])
    print(f"one-image request: {latency * 1000:.0f} ms")


def test_invocations_records_params_and_a_corrupt_image(server):
    payload = {"dataframe_records": [{"image": png_b64(2, (80, 120, 3))}, {"image": "bm90IGFuIGltYWdl"}],
               "params": {"face_crop": "haar"}}  # fmt: skip
    status, body = post(server + "/invocations", payload)
    assert status == 200, body[:2000]
    ok, bad = strict_loads(body)["predictions"]
    assert ok["label"] in CLASSES and ok["face"] == "not_found" and abs(sum(ok[c] for c in CLASSES) - 1) < 1e-4
    assert bad["label"] is None and bad["error"] and bad["anger"] is None


def test_wrong_column_is_a_client_error(server):
    status, body = post(server + "/invocations", {"dataframe_split": {"columns": ["img"], "data": [["x"]]}})
    assert status == 400 and b"image" in body
