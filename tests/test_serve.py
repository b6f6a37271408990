"""REST serving through the real server (`python -m ferpipe.rest`, uvicorn on 127.0.0.1).

Builds a small final model with the real stage code (random-init ResNet-50, 32 px, generated
images of 3 subjects, a 3-fold subject plan so the OOD flag is calibrated), logs and
registers it in a throw-away SQLite store, starts the server on a free port and always
stops it. Real faces for the face detector come from ../shared/data/jaffe.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
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

sys.path.insert(0, str(Path(__file__).parent))
from conftest import SHARED_JAFFE, jaffe_available, make_image  # noqa: E402

pytestmark = pytest.mark.slow
PING_TIMEOUT_S = 120
SUBJECTS = ["KA", "KL", "KM"]
CODES = ["AN", "DI", "FE", "HA", "NE", "SA", "SU"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, payload, timeout: float = 60, content_type: str | None = "application/json",
         raw: bytes | None = None) -> tuple[int, bytes]:  # fmt: skip
    data = raw if raw is not None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, method="POST")
    if content_type is not None:
        req.add_header("Content-Type", content_type)
    else:  # urllib adds a form content type to every POST unless told otherwise
        req.add_unredirected_header("Content-Type", "")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def strict_loads(body: bytes):
    def no_nan(x):
        raise ValueError(f"non-standard JSON constant {x}")

    return json.loads(body, parse_constant=no_nan)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png_bytes(seed: int, shape=(61, 47)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jaffe_faces(n: int) -> list[bytes]:
    if not jaffe_available():
        pytest.skip(f"real faces needed: {SHARED_JAFFE} (213 JAFFE images) is missing")
    files = sorted(SHARED_JAFFE.glob("*.tiff"))
    return [files[i * len(files) // n].read_bytes() for i in range(n)]


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A final model logged + registered as fer-serve@champion in a temp store."""
    import torch

    from ferpipe import final_model, ingest, tracking
    from ferpipe.config import IngestParams
    from ferpipe.weights import random_init_state_dict, save_safetensors

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serve")
    i = 0
    for subj in SUBJECTS:
        for code in CODES:
            i += 1
            make_image(root / "raw" / f"{subj}.{code}1.{i}.tiff", seed=100 + i, size=64)
    ingest.ingest(root / "raw", root / "ing", IngestParams(image_size=32))
    manifest = (root / "ing" / "manifest.csv").read_text().splitlines()
    paths = [line.split(",")[0] for line in manifest[1:]]
    rows = ["protocol,run,fold,image,role"]
    for fold in range(3):  # leave-one-subject-out: test subject k, validate on k+1, train on the rest
        roles = {SUBJECTS[fold]: "test", SUBJECTS[(fold + 1) % 3]: "val", SUBJECTS[(fold + 2) % 3]: "train"}
        rows += [f"subject,1,{fold + 1},{p},{roles[Path(p).name[:2]]}" for p in paths]
    (root / "plan.csv").write_text("\n".join(rows) + "\n")
    save_safetensors(random_init_state_dict(), root / "w.safetensors")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "FERPIPE_MLFLOW_ARTIFACTS": str(root / "mlartifacts")}
    old = {k: os.environ.get(k) for k in [*env, tracking.PARENT_ENV]}
    os.environ.update(env)
    os.environ.pop(tracking.PARENT_ENV, None)
    try:
        raw = {"train": {"image_size": 32, "threads": 1, "taps": ["layer2:2", "layer3:2"], "spatial_image_size": 32}, "ingest": {"image_size": 32},
               "final_model": {"registered_model_name": "fer-serve", "alias": "champion"}}  # fmt: skip
        s = final_model.run_stage(root / "ing" / "manifest.csv", root / "w.safetensors", root / "final", raw, None, None,
                                  root / "plan.csv")  # fmt: skip
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert s["mlflow"]["registered_uri"] == "models:/fer-serve@champion"
    assert s["ood"]["calibrated"] and s["ood"]["n_validation"] == 21
    return root, env


def start_server(root: Path, store_env: dict, *extra: str):
    port = free_port()
    env = {**os.environ, **store_env, "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}
    log = open(root / f"serve-{port}.log", "wb")
    cmd = [sys.executable, "-m", "ferpipe.rest", "--model", "models:/fer-serve@champion", "--port", str(port),
           "--threads", "1", *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url, t0 = f"http://127.0.0.1:{port}", time.time()
    while True:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{Path(log.name).read_text()[-3000:]}")
        if time.time() - t0 > PING_TIMEOUT_S:
            pytest.fail(f"no /ping answer within {PING_TIMEOUT_S} s:\n{Path(log.name).read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/ping", timeout=2) as r:
                if r.status == 200:
                    return proc, url, log
        except OSError:
            time.sleep(0.3)


def stop_server(proc, log):
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


@pytest.fixture(scope="module")
def server(registered):
    root, store_env = registered
    proc, url, log = start_server(root, store_env, "--max-images", "8", "--max-body-mb", "2")
    try:
        yield url
    finally:
        stop_server(proc, log)


def split_payload(images: list[bytes], **params) -> dict:
    body: dict = {"dataframe_split": {"columns": ["image"], "data": [[b64(b)] for b in images]}}
    if params:
        body["params"] = params
    return body


def test_a_face_photo_is_classified_and_carries_its_ood_distance(server):
    status, body = post(server + "/invocations", split_payload(jaffe_faces(1)))
    assert status == 200, body[:2000]
    out = strict_loads(body)
    assert out["n_images"] == 1 and out["n_failed"] == 0
    p = out["predictions"][0]
    assert p["label"] in CLASSES and p["error"] == "" and p["face"] == "found"
    assert abs(sum(p[c] for c in CLASSES) - 1) < 1e-4 and p["label"] == max(CLASSES, key=lambda c: p[c])
    assert p["ood_distance"] >= 0 and isinstance(p["out_of_distribution"], bool)


def test_a_batch_keeps_per_image_errors_and_counts_them(server):
    payload = {"dataframe_records": [{"image": b64(jaffe_faces(1)[0])}, {"image": "bm90IGFuIGltYWdl"}],
               "params": {"face_crop": "haar"}}  # fmt: skip
    status, body = post(server + "/invocations", payload)
    assert status == 200, body[:2000]
    out = strict_loads(body)
    ok, bad = out["predictions"]
    assert out["n_failed"] == 1
    assert ok["label"] in CLASSES and ok["face"] == "found"
    assert bad["label"] is None and bad["anger"] is None and "cannot identify image" in bad["error"]


@pytest.mark.parametrize(("value", "reason"), [
    (b64(png_bytes(1, (1, 1))), "smaller than 32 px"),            # a 1 x 1 image
    (b64(png_bytes(2, (300, 300))), "no face found"),              # noise, face check on by default
    ("!!not base64!!", "not valid base64"),
    ("", "empty string"),
    (12345, "expected a base64 string, got int"),
])  # fmt: skip
def test_an_image_that_cannot_be_classified_is_a_422_with_its_reason(server, value, reason):
    status, body = post(server + "/invocations", {"inputs": [value]})
    assert status == 422, body[:500]
    out = strict_loads(body)
    assert out["n_failed"] == 1 and out["predictions"][0]["label"] is None
    assert reason in out["predictions"][0]["error"]


def test_face_check_false_classifies_the_whole_image_as_before(server):
    status, body = post(server + "/invocations", split_payload([png_bytes(2, (300, 300))], face_check=False))
    assert status == 200, body[:500]
    p = strict_loads(body)["predictions"][0]
    assert p["label"] in CLASSES and p["face"] == "not_searched"


@pytest.mark.parametrize(("payload", "kwargs", "status", "reason"), [
    ({"inputs": ["x"], "params": {"face_crop": "bogus"}}, {}, 400, "face_crop must be one of"),
    ({"inputs": ["x"], "params": {"colour": 1}}, {}, 400, "unknown option"),
    ({"dataframe_split": {"columns": ["img"], "data": [["x"]]}}, {}, 400, "no 'image' column"),
    (None, {"raw": b"{not json"}, 400, "not valid JSON"),
    ({"inputs": ["x"]}, {"content_type": None}, 415, "Content-Type must be application/json"),
    (None, {"raw": b"image\nAAAA" * 50, "content_type": "text/csv"}, 415, "Content-Type must be application/json"),
    ({"inputs": ["x"] * 9}, {}, 413, "the limit is 8"),
])  # fmt: skip
def test_a_bad_request_is_a_4xx_with_a_one_line_reason_never_the_payload(server, payload, kwargs, status, reason):
    got, body = post(server + "/invocations", payload, **kwargs)
    assert got == status, body[:500]
    out = strict_loads(body)
    assert reason in out["error"] and "\n" not in out["error"]
    assert len(body) < 400 and b"AAAA" not in body  # nothing echoed back


def test_a_get_on_invocations_is_a_405_naming_the_method(server):
    try:
        urllib.request.urlopen(server + "/invocations", timeout=10)
        raise AssertionError("GET /invocations answered 2xx")
    except urllib.error.HTTPError as e:
        assert e.code == 405 and e.headers["Allow"] == "POST"
        assert "GET is not allowed on /invocations" in strict_loads(e.read())["error"]


def test_an_oversize_body_is_refused_from_its_header_before_it_is_read(server):
    port = int(server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 3145728\r\n\r\n" + b"A" * 1000)  # 3 MiB announced, limit 2 MiB
        reply = s.recv(4096)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), reply[:300]
    assert "3,145,728 bytes is over the limit of 2,097,152" in strict_loads(body)["error"]


def test_concurrent_requests_get_the_sequential_answers(server):
    """8 threads, 200 requests through the real server == the same requests one at a time."""
    faces = jaffe_faces(50)
    payloads = [split_payload([f], face_crop="haar") for f in faces]

    def ask(i: int) -> str:
        status, body = post(server + "/invocations", payloads[i % 50])
        assert status == 200, body[:500]
        preds = strict_loads(body)["predictions"]
        return json.dumps(preds, sort_keys=True)

    sequential = [ask(i) for i in range(50)]
    assert sum('"face": "found"' in s for s in sequential) >= 45  # the detector really runs on faces
    with cf.ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(ask, range(200)))
    differing = [i for i, s in enumerate(concurrent) if s != sequential[i % 50]]
    assert not differing, f"{len(differing)} of 200 concurrent answers differ from the sequential ones"


def test_the_deadline_stops_the_work_with_a_504(registered):
    root, store_env = registered
    proc, url, log = start_server(root, store_env, "--deadline-s", "0.05", "--max-images", "64")
    try:
        status, body = post(url + "/invocations", split_payload(jaffe_faces(1) * 64, face_crop="haar"))
        assert status == 504, body[:500]
        assert "deadline of 0.05 s passed" in strict_loads(body)["error"]
    finally:
        stop_server(proc, log)


def test_a_client_that_hangs_up_stops_its_request(registered):
    root, store_env = registered
    proc, url, log = start_server(root, store_env, "--max-images", "64")
    try:
        body = json.dumps(split_payload(jaffe_faces(1) * 64, face_crop="haar")).encode()
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
            time.sleep(0.3)
        for _ in range(100):  # the server notices and logs the stop
            if b"client gone" in Path(log.name).read_bytes():
                break
            time.sleep(0.1)
        assert b"client gone, stopped a 64-image request" in Path(log.name).read_bytes()
    finally:
        stop_server(proc, log)
