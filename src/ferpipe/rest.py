"""rest: the REST front door for the final model, with limits and honest status codes.

    python -m ferpipe.rest --model models:/ferpipe-resnet50@champion --port 5001
    make serve PORT=5001

Endpoints: ``GET /ping`` (200 when the model is loaded), ``GET /version`` (the model's
method, classes, limits), ``POST /invocations``. The request body is MLflow's scoring
format, so clients of ``mlflow models serve`` keep working: one of ``dataframe_split``
(``{"columns": ["image"], "data": [[b64], ...]}``), ``dataframe_records``
(``[{"image": b64}, ...]``), ``inputs`` or ``instances`` (a list of base64 strings), with
optional ``params``: ``face_crop`` (none | haar; default: the model's training setting)
and ``face_check`` (default true: an image without a face found by the ingest detector
gets an error, never a label; false classifies the whole image as before).

Answers (always one JSON object; the payload is never echoed back):
- 200 ``{"predictions": [...], "n_images": N, "n_failed": K}`` when at least one image was
  classified; each failed image keeps its row with ``error`` (why) and no label.
- 422: every image failed (same body). 400: malformed body or unknown option (``error``
  names it). 413: body over ``--max-body-mb`` or more than ``--max-images`` images.
  415: a Content-Type other than application/json (or none). 405: a method other than POST.
  408: the body did not arrive within the deadline. 503: the server is busy past the
  request's deadline, or more than ``--max-connections`` are open. 504: the deadline
  (``--deadline-s``) passed during the work, which stops there. A client that hangs up
  stops its request's work too.

Threads: requests are computed in worker threads, at most ``--max-concurrent`` at once;
the predictor is safe to share (``serving.FerPredictor``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .serving import FACE_CHECK, FACE_CROPS, MAX_PIXELS, FerPredictor, Stopped

log = logging.getLogger("ferpipe.rest")
FORMATS = ("dataframe_split", "dataframe_records", "inputs", "instances")
OPTIONS = {"face_crop": FACE_CROPS, "face_check": (True, False)}


@dataclasses.dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 32 * 2**20  # ~24 MB of image files once base64 is decoded
    max_images: int = 64  # per request: ~10 s of CPU at 224 px on two cores
    max_pixels: int = MAX_PIXELS  # per image, checked from the file header before decoding
    deadline_s: float = 30.0  # per request, queueing included
    max_concurrent: int = 2  # requests computed at once (the others wait, within their deadline)
    max_connections: int = 64  # open connections; more get 503 at once (uvicorn's limit_concurrency)


class RequestError(Exception):
    """A request the server refuses: HTTP status + a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def parse_request(body: bytes, content_type: str | None, limits: Limits) -> tuple[list[Any], dict]:
    """Body -> (the image values, the options). Raises RequestError naming what is wrong."""
    mime = (content_type or "").split(";")[0].strip().lower()
    if mime != "application/json":
        shown = f"'{content_type[:80]}'" if content_type else "none"
        raise RequestError(415, f"Content-Type must be application/json (got {shown})")
    try:
        payload = json.loads(body)
    except UnicodeDecodeError:
        raise RequestError(400, "body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise RequestError(400, f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise RequestError(400, "body is not valid JSON: nested too deeply") from None
    if not isinstance(payload, dict):
        raise RequestError(400, f"body must be a JSON object with one of {list(FORMATS)}, got a {type(payload).__name__}")
    unknown = sorted(set(payload) - set(FORMATS) - {"params"})
    keys = [k for k in FORMATS if k in payload]
    if unknown or len(keys) != 1:
        raise RequestError(400, f"body must have exactly one of {list(FORMATS)} (and optionally 'params'); "
                                f"got keys {sorted(payload)[:10]}")  # fmt: skip
    values = image_values(keys[0], payload[keys[0]])
    if not values:
        raise RequestError(400, "no images in the request")
    if len(values) > limits.max_images:
        raise RequestError(413, f"{len(values)} images in one request; the limit is {limits.max_images} "
                                "(split the batch, or start the server with a larger --max-images)")  # fmt: skip
    return values, parse_options(payload.get("params"))


def image_values(fmt: str, data: Any) -> list[Any]:
    """The ``image`` column of any of MLflow's JSON input formats."""
    def fail(expected: str):
        raise RequestError(400, f"'{fmt}' must be {expected}")

    if fmt == "dataframe_split":
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            fail('{"columns": ["image"], "data": [[<base64>], ...]}')
        cols = data.get("columns") or ["image"]
        if "image" not in cols:
            raise RequestError(400, f"'dataframe_split' has no 'image' column (columns: {cols[:10]})")
        at = cols.index("image")
        if not all(isinstance(r, list) and len(r) == len(cols) for r in data["data"]):
            fail(f"rows of {len(cols)} value(s), one per column")
        return [r[at] for r in data["data"]]
    if fmt == "dataframe_records" or (isinstance(data, list) and data and all(isinstance(r, dict) for r in data)):
        if not isinstance(data, list) or not all(isinstance(r, dict) and "image" in r for r in data):
            fail('a list of {"image": <base64>} records')
        return [r["image"] for r in data]
    if isinstance(data, dict):  # inputs / instances as {"image": [...]}
        if not isinstance(data.get("image"), list):
            fail('a list of base64 strings, or {"image": [<base64>, ...]}')
        return list(data["image"])
    if not isinstance(data, list):
        fail("a list of base64 strings")
    return list(data)


def parse_options(params: Any) -> dict:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise RequestError(400, f"'params' must be an object, got {type(params).__name__}")
    unknown = sorted(set(params) - set(OPTIONS))
    if unknown:
        raise RequestError(400, f"unknown option(s) {unknown[:5]}; allowed: {sorted(OPTIONS)}")
    opts = dict(params)
    if "face_crop" in opts and opts["face_crop"] not in FACE_CROPS:
        raise RequestError(400, f"face_crop must be one of {list(FACE_CROPS)}, got {str(opts['face_crop'])[:40]!r}")
    if "face_check" in opts and not isinstance(opts["face_check"], bool):
        raise RequestError(400, f"face_check must be true or false, got {str(opts['face_check'])[:40]!r}")
    return opts


def json_safe(rows: list[dict]) -> list[dict]:
    """NaN (an error row's probabilities) -> null: the answer is strict JSON."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]


def answer(rows: list[dict]) -> tuple[int, dict]:
    failed = sum(1 for r in rows if r.get("error"))
    body = {"predictions": json_safe(rows), "n_images": len(rows), "n_failed": failed}
    return (422 if failed == len(rows) else 200), body


# ---------------------------------------------------------------- the ASGI app
def create_app(predictor: FerPredictor, limits: Limits = Limits()):
    import anyio
    from starlette.applications import Starlette
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    slots = threading.BoundedSemaphore(limits.max_concurrent)

    def error(status: int, reason: str) -> JSONResponse:
        return JSONResponse({"error": reason}, status_code=status)

    async def ping(_request: Request):
        return JSONResponse({"status": "ok"})

    async def version(_request: Request):
        m = predictor.meta
        return JSONResponse({"method": m.get("method"), "classes": predictor.classes, "image_size": m.get("image_size"),
                             "face_crop": predictor.face_crop, "face_check_default": FACE_CHECK,
                             "ood_threshold": (m.get("ood") or {}).get("threshold"),
                             "limits": dataclasses.asdict(limits)})  # fmt: skip

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise RequestError(413, f"body of {int(declared):,} bytes is over the limit of {limits.max_body_bytes:,}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_body_bytes:
                raise RequestError(413, f"body is over the limit of {limits.max_body_bytes:,} bytes")
        return bytes(body)

    def compute(values: list, opts: dict, stop: threading.Event, deadline: float) -> list[dict]:
        # a worker thread: wait for a slot within the deadline, then work until told to stop
        if not slots.acquire(timeout=max(deadline - time.monotonic(), 0)):
            raise RequestError(503, f"server busy: no free slot within the {limits.deadline_s:g} s deadline")
        try:
            return predictor.predict_values(values, opts.get("face_crop"), opts.get("face_check", FACE_CHECK),
                                            should_stop=stop.is_set)  # fmt: skip
        finally:
            slots.release()

    async def invocations(request: Request):
        t0 = time.monotonic()
        deadline = t0 + limits.deadline_s
        try:
            with anyio.fail_after(limits.deadline_s):  # a slow sender holds no connection past the deadline
                body = await read_body(request)
            # parsing a large body takes a while: off the event loop, which keeps serving pings and watchers
            values, opts = await anyio.to_thread.run_sync(parse_request, body, request.headers.get("content-type"),
                                                          limits)  # fmt: skip
        except RequestError as exc:
            return error(exc.status, exc.reason)
        except TimeoutError:
            return error(408, f"the body did not arrive within the {limits.deadline_s:g} s deadline")
        except ClientDisconnect:
            return error(400, "client disconnected while sending the body")
        stop, why = threading.Event(), {}

        async def watch():  # sets `stop` when the client hangs up or the deadline passes
            while not stop.is_set():
                if time.monotonic() > deadline:
                    why["reason"] = "deadline"
                    stop.set()
                elif await request.is_disconnected():
                    why["reason"] = "client gone"
                    stop.set()
                else:
                    await anyio.sleep(0.05)

        result: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            try:
                result["rows"] = await anyio.to_thread.run_sync(compute, values, opts, stop, deadline)
            except (Stopped, RequestError) as exc:
                result["error"] = exc
            finally:
                stop.set()  # ends the watcher
        exc = result.get("error")
        if isinstance(exc, RequestError):
            return error(exc.status, exc.reason)
        if isinstance(exc, Stopped):
            if why.get("reason") == "client gone":
                log.info("rest: client gone, stopped a %d-image request (%s)", len(values), exc)
                return error(499, "client closed the request")
            return error(504, f"deadline of {limits.deadline_s:g} s passed; {exc}")
        status, body = answer(result["rows"])
        body["seconds"] = round(time.monotonic() - t0, 4)
        return JSONResponse(body, status_code=status)

    async def not_found(request: Request, _exc):
        return error(404, f"no route {request.url.path}; use POST /invocations, GET /ping or GET /version")

    async def not_allowed(request: Request, _exc):
        allow = "POST" if request.url.path == "/invocations" else "GET"
        response = error(405, f"{request.method} is not allowed on {request.url.path}; use {allow}")
        response.headers["Allow"] = allow
        return response

    async def internal(_request: Request, exc: Exception):
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:  # anyio task groups wrap errors
            exc = exc.exceptions[0]
        log.error("rest: internal error: %s: %s", type(exc).__name__, exc)
        return error(500, f"internal error: {type(exc).__name__}")

    routes = [Route("/ping", ping), Route("/health", ping), Route("/version", version),
              Route("/invocations", invocations, methods=["POST"])]  # fmt: skip
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed, 500: internal})


# ---------------------------------------------------------------- loading + CLI
def model_folder(model: str) -> Path:
    """A final_model folder, or the folder an MLflow model URI's pyfunc data was logged to."""
    if "://" not in model and not model.startswith(("models:/", "runs:/")):
        return Path(model)
    import os

    import mlflow
    import yaml

    from . import tracking

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    mlflow.set_tracking_uri(tracking.tracking_uri())
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model))
    spec = yaml.safe_load((local / "MLmodel").read_text())
    return local / spec["flavors"]["python_function"]["data"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ferpipe.rest", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    d = Limits()
    ap.add_argument("--model", default="models:/ferpipe-resnet50@champion",
                    help="final_model folder or MLflow model URI (MLFLOW_TRACKING_URI, default the repo's mlflow.db)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=5001, help="port (default 5001)")
    ap.add_argument("--max-body-mb", type=float, default=d.max_body_bytes / 2**20, help="largest request body, MiB")
    ap.add_argument("--max-images", type=int, default=d.max_images, help="most images in one request")
    ap.add_argument("--max-pixels", type=int, default=d.max_pixels, help="most pixels in one image (width x height)")
    ap.add_argument("--deadline-s", type=float, default=d.deadline_s, help="per-request time limit, queueing included")
    ap.add_argument("--max-concurrent", type=int, default=d.max_concurrent, help="requests computed at once")
    ap.add_argument("--max-connections", type=int, default=d.max_connections,
                    help="open connections; more are answered 503 at once")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    limits = Limits(int(args.max_body_mb * 2**20), args.max_images, args.max_pixels, args.deadline_s,
                    args.max_concurrent, args.max_connections)
    try:
        predictor = FerPredictor.load(model_folder(args.model), max_pixels=limits.max_pixels)
    except Exception as exc:  # noqa: BLE001 - a missing folder, an unknown alias, a broken store: say which
        print(f"rest: error: cannot load model {args.model}: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    print(f"rest: serving {args.model} ({predictor.meta.get('method')}) on http://{args.host}:{args.port}/invocations",
          file=sys.stderr)  # fmt: skip
    uvicorn.run(create_app(predictor, limits), host=args.host, port=args.port, log_level="warning",
                timeout_keep_alive=5, limit_concurrency=limits.max_connections)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
