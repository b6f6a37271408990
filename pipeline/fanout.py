"""Fold fan-out: the train stage's (protocol, run, fold) trainings as Prefect tasks.

``make_runner(spec)`` returns ``runner(ctx, tasks) -> list[FoldResult]``, the contract of
:func:`ferpipe.train.run_sequential`; the train stage picks it up from ``--runner`` or
``$FERPIPE_FOLD_RUNNER`` (:func:`ferpipe.train.fold_runner`). Results are identical to the
sequential run whatever the runner (every fold is seeded from its own (protocol, run, fold)),
and the runner is not a DVC param, so switching it never invalidates the cache.

Specs
    sequential             no Prefect at all (the default of the train stage)
    prefect[:N]            a Prefect flow, folds on a thread pool of this process (N threads;
                           default: cores // train.threads)
    dask[:N]               a temporary dask ``LocalCluster`` of N worker processes (1 thread each)
    dask://HOST:PORT       an existing Dask cluster (``tcp://HOST:PORT`` is the same), through
                           prefect-dask's ``DaskTaskRunner(address=...)``

    FERPIPE_FOLD_RUNNER=dask://10.0.0.5:8786 dvc repro train
    python -m ferpipe.train --runner prefect ...
    python -m pipeline --dask-address 10.0.0.5:8786          # the whole DAG, train fanned out

A Dask cluster over several machines::

    .venv/bin/dask scheduler --host 0.0.0.0 --port 8786     # on one machine
    .venv/bin/dask worker tcp://10.0.0.5:8786 --nworkers 2 --nthreads 1   # on each machine

Scheduler and workers run from a checkout of the same commit with its ``.venv`` (``make
install``): they need ``ferpipe`` and the same libraries. This package is uploaded to them
by the runner (``Client.upload_file``; the scheduler unpickles the task graph, so it needs
it too), and a worker whose ferpipe code or numpy / scikit-learn / torch versions differ from
this process is refused with the difference named, because its folds would not reproduce.
Give each worker process ``train.threads`` cores (``--nworkers`` x ``train.threads`` <=
cores); finetune results are bit-identical only on the same hardware kind and thread count.
Restart long-lived workers after updating their checkout.

Several GPUs on one machine, one fold per GPU: one single-threaded worker per GPU, each
seeing only its own device (``CUDA_VISIBLE_DEVICES``); ``dask-cuda``'s ``dask cuda worker``
does exactly this, or by hand::

    for i in 0 1 2 3; do CUDA_VISIBLE_DEVICES=$i dask worker tcp://HOST:8786 \\
        --nworkers 1 --nthreads 1 --resources GPU=1 & done
    FERPIPE_DASK_RESOURCES=GPU=1 FERPIPE_FOLD_RUNNER=dask://HOST:8786 dvc repro train

(``FERPIPE_DASK_RESOURCES`` makes every fold task ask for that resource, so CPU-only workers
on the same scheduler never get a fold.)

How the data travels: the fold context (features or images, labels, pretrained weights) is
sent to the cluster once (``Client.scatter``) and every fold task gets a reference to it;
workers copy it between themselves as needed. The fold tasks run with Prefect caching off
(``cache_policy=NONE``: no hashing of large arrays) and results kept in memory. Workers
compute in a scratch folder; this process writes every fold file as its result arrives, so
a killed run keeps (and the next run resumes) the folds already finished, whichever
machine computed them. The Prefect API (the temporary local server, or ``PREFECT_API_URL``)
must be reachable from the workers for their task runs to be recorded; across machines use
a persistent server (``prefect server start --host 0.0.0.0``) and set ``PREFECT_API_URL``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pipeline  # noqa: F401  (Prefect/MLflow environment defaults)

CONNECT_TIMEOUT_S = 3.0

# finetune folds use process-wide state (torch's global RNG, the reused ResNet-50 of
# ferpipe.train.reusable_model): one at a time per process, however many threads run them
_FINETUNE_LOCK = threading.Lock()
# contexts waiting for their flow, by token: the flow itself takes only the token as a
# parameter, because Prefect ships the flow's parameters along with every task it submits
_JOBS: dict[str, tuple] = {}


class FanoutError(ValueError):
    """A fold-runner spec that cannot work (unknown, or its cluster is unreachable)."""


@dataclasses.dataclass(frozen=True)
class RunnerSpec:
    kind: str  # prefect | dask-local | dask
    workers: int | None = None
    address: str | None = None  # tcp://host:port for kind == "dask"

    @property
    def label(self) -> str:
        """The spec string again (parse_spec(label) == self)."""
        name = "prefect" if self.kind == "prefect" else "dask"
        return self.address or (f"{name}:{self.workers}" if self.workers else name)


def parse_spec(spec: str) -> RunnerSpec:
    s = spec.strip()
    low = s.lower()
    if "://" in s:
        scheme, rest = s.split("://", 1)
        if scheme.lower() not in ("dask", "tcp", "tls"):
            raise FanoutError(f"fold runner '{spec}': unknown scheme '{scheme}://' (expected dask:// or tcp://)")
        parts = urlsplit(f"tcp://{rest}")
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or not port or parts.path not in ("", "/"):
            raise FanoutError(f"fold runner '{spec}': expected dask://HOST:PORT, e.g. dask://10.0.0.5:8786")
        proto = "tls" if scheme.lower() == "tls" else "tcp"
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return RunnerSpec("dask", address=f"{proto}://{host}:{port}")
    name, _, count = low.partition(":")
    if name in ("prefect", "dask") and (not count or count.isdigit()):
        workers = int(count) if count else None
        if workers is not None and workers < 1:
            raise FanoutError(f"fold runner '{spec}': the worker count must be >= 1")
        return RunnerSpec("prefect" if name == "prefect" else "dask-local", workers=workers)
    raise FanoutError(f"fold runner '{spec}': expected sequential, prefect[:N], dask[:N] or dask://HOST:PORT")


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail within ``timeout`` seconds, naming the address, when nothing listens there."""
    parts = urlsplit(address)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout):
            return
    except OSError as exc:
        why = exc.strerror or str(exc) or type(exc).__name__
        raise FanoutError(
            f"cannot reach the Dask scheduler at {address} ({why}, waited at most {timeout:g} s). "
            f"Start one (`dask scheduler --port {parts.port}`, then `dask worker {address}` on each "
            "machine from the repository root), fix the address, or train sequentially "
            "(no --runner / --dask-address, FERPIPE_FOLD_RUNNER unset)."
        ) from None


def _is_loopback(host: str | None) -> bool:
    import ipaddress

    if not host or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _api_url_for_workers(run_ctx, spec: RunnerSpec) -> str | None:
    """The Prefect API the workers should report to: this flow's (no server start per worker).

    A loopback URL (the temporary server) is useless to workers on other machines: for a
    remote scheduler those keep their own settings (set ``PREFECT_API_URL`` everywhere to a
    persistent server to see every fold in one UI).
    """
    url = str(run_ctx.client.api_url)
    if spec.kind == "dask" and not _is_loopback(urlsplit(spec.address).hostname) \
            and _is_loopback(urlsplit(url).hostname):  # fmt: skip
        return None
    return url


def _default_workers(ctx) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, ctx.p.threads))


def _resources() -> dict[str, float]:
    raw = os.environ.get("FERPIPE_DASK_RESOURCES", "").strip()
    out = {}
    for item in filter(None, (x.strip() for x in raw.split(","))):
        name, _, amount = item.partition("=")
        try:
            out[name.strip()] = float(amount or 1)
        except ValueError:
            raise FanoutError(f"FERPIPE_DASK_RESOURCES: expected NAME=AMOUNT[,...], got '{raw}'") from None
    return out


def task_runner_for(spec: RunnerSpec, ctx):
    """The Prefect task runner for ``spec`` (built per call: it needs the train params)."""
    if spec.kind == "prefect":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=spec.workers or _default_workers(ctx))
    from prefect_dask import DaskTaskRunner

    if spec.kind == "dask-local":
        n = spec.workers or _default_workers(ctx)
        return DaskTaskRunner(cluster_kwargs={"n_workers": n, "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": None})  # fmt: skip
    return DaskTaskRunner(address=spec.address, client_kwargs={"timeout": "15s"})


# ---------------------------------------------------------------- cluster preparation
def code_fingerprint() -> dict[str, str]:
    """What decides a fold's numbers on a worker: the ferpipe code and the numeric libraries."""
    import hashlib

    import numpy
    import sklearn
    import torch

    import ferpipe

    h = hashlib.sha256()
    root = Path(ferpipe.__file__).parent
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return {"ferpipe": h.hexdigest()[:16], "numpy": numpy.__version__, "scikit-learn": sklearn.__version__,
            "torch": torch.__version__}  # fmt: skip


def package_zip() -> Path:
    """This package as a zip (content-addressed), for ``Client.upload_file``."""
    import hashlib
    import zipfile

    src = Path(__file__).parent
    files = sorted(src.glob("*.py"))
    digest = hashlib.sha256(b"".join(f.name.encode() + f.read_bytes() for f in files)).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"ferpipe_pipeline_{digest}.zip"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with zipfile.ZipFile(tmp, "w") as z:
            for f in files:
                z.write(f, f"pipeline/{f.name}")
        os.replace(tmp, path)
    return path


def prepare_cluster(client, address: str, wait_s: float = 60.0) -> int:
    """Workers present, this package importable on the scheduler and workers, same code everywhere.

    The scheduler unpickles the task graph, so it needs ``pipeline`` too: it is uploaded
    (``Client.upload_file``) rather than assumed on ``PYTHONPATH``. ``ferpipe`` and the
    libraries must come from the same locked environment: a worker whose ferpipe code or
    numpy / scikit-learn / torch versions differ from this process would give different
    numbers, so it is refused.
    """
    try:
        client.wait_for_workers(1, timeout=wait_s)
    except (TimeoutError, OSError) as exc:
        raise FanoutError(f"the Dask scheduler at {address} has no workers after {wait_s:g} s "
                          f"({type(exc).__name__}): start some with `dask worker {address}`") from None  # fmt: skip
    client.upload_file(str(package_zip()), load=True)
    mine = code_fingerprint()
    try:
        theirs = client.run(code_fingerprint)
    except Exception as exc:  # noqa: BLE001  (any worker-side import error)
        raise FanoutError(f"Dask workers at {address} cannot run ferpipe ({type(exc).__name__}: {exc}); "
                          "start them from the project's environment (.venv with ferpipe installed)") from exc  # fmt: skip
    bad = {w: fp for w, fp in theirs.items() if fp != mine}
    if bad:
        lines = "; ".join(f"{w}: {fp}" for w, fp in sorted(bad.items()))
        raise FanoutError(f"Dask worker(s) at {address} run different code or libraries than this process "
                          f"({mine}): {lines}. Update their checkout / environment to the same commit "
                          "and restart them.")  # fmt: skip
    return len(theirs)


# ---------------------------------------------------------------- tasks and flow
def _fold_task_fn(ctx, task, scratch: bool, compute_fold: Callable):
    """One fold on whatever worker runs it (``scratch``: write the fold file to a temp dir).
    ``compute_fold`` comes from the caller (a module-level function, pickled by reference),
    so this package never imports a stage."""
    lock = _FINETUNE_LOCK if ctx.p.mode == "finetune" else contextlib.nullcontext()
    tmp = Path(tempfile.mkdtemp(prefix="ferpipe-fold-")) if scratch else None
    try:
        with lock:
            return compute_fold(dataclasses.replace(ctx, results_dir=tmp) if tmp else ctx, task)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _make_fold_task():
    from prefect import task
    from prefect.cache_policies import NONE

    return task(_fold_task_fn, name="fold", cache_policy=NONE, persist_result=False, retries=0)


def _fold_flow_fn(token: str, method: str, n_folds: int, runner_label: str) -> list:
    from prefect import get_run_logger
    from prefect.context import get_run_context
    from prefect.futures import as_completed

    from ferpipe.foldio import save_fold

    log = get_run_logger()
    ctx, tasks, compute = _JOBS[token]
    run_ctx = get_run_context()
    task_runner = run_ctx.task_runner
    remote = type(task_runner).__name__ == "DaskTaskRunner"
    fold_task = _make_fold_task()
    ctx_ref = ctx
    submit_ctx = contextlib.ExitStack()
    if remote:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        t0 = time.time()
        spec = parse_spec(runner_label)
        n_workers = prepare_cluster(task_runner.client, spec.address or "a local cluster")
        ctx_ref = task_runner.client.scatter(ctx, hash=False)  # once, not per task
        log.info("%d Dask worker(s) ready, fold context sent once, in %.1f s (%s)",
                 n_workers, time.time() - t0, runner_label)  # fmt: skip
        api = _api_url_for_workers(run_ctx, spec)
        if api:  # serialized with every task: workers report here instead of starting a server
            submit_ctx.enter_context(temporary_settings(updates={PREFECT_API_URL: api}))
        else:
            log.info("workers on other machines cannot reach this temporary Prefect server; "
                     "set PREFECT_API_URL to a shared `prefect server start --host 0.0.0.0`")  # fmt: skip
        if _resources():
            import dask

            submit_ctx.enter_context(dask.annotate(resources=_resources()))
    futures = {}
    with submit_ctx:
        for t in tasks:
            name = f"{method}/{t.protocol}/run{t.run:02d}/fold{t.fold:02d}"
            fut = fold_task.with_options(task_run_name=name).submit(ctx_ref, t, remote, compute)
            futures[fut] = t
    results: dict[tuple, object] = {}
    for i, fut in enumerate(as_completed(list(futures)), start=1):
        res = fut.result()
        if remote:
            save_fold(ctx.results_dir, res)  # the worker wrote to scratch; this is the real file
        results[(res.protocol, res.run, res.fold)] = res
        if i == len(futures) or i % max(1, len(futures) // 10) == 0:
            log.info("%d/%d folds done (last: %s run %d fold %d, accuracy %.3f)",
                     i, len(futures), res.protocol, res.run, res.fold, res.accuracy)  # fmt: skip
    return [results[(t.protocol, t.run, t.fold)] for t in tasks]


def _make_flow():
    from prefect import flow

    return flow(_fold_flow_fn, name="ferpipe-folds", persist_result=False, validate_parameters=False)


def make_runner(spec: str, compute: Callable) -> Callable:
    """``runner(ctx, tasks) -> list[FoldResult]`` for a spec (see the module docstring);
    ``compute(ctx, task)`` computes and saves one fold (e.g. ``ferpipe.train.compute_fold``).

    An unreachable ``dask://`` address fails here, within a few seconds, with a
    :class:`FanoutError` naming it (the train stage reports it and exits 2).
    """
    parsed = parse_spec(spec)
    if parsed.kind == "dask":
        check_reachable(parsed.address)
    _resources()  # a malformed FERPIPE_DASK_RESOURCES fails now, not after the features

    def runner(ctx, tasks: list) -> list:
        if not tasks:
            return []
        token = uuid.uuid4().hex
        _JOBS[token] = (ctx, list(tasks), compute)
        try:
            flow = _make_flow().with_options(task_runner=task_runner_for(parsed, ctx),
                                             flow_run_name=f"{ctx.method}-{len(tasks)}-folds")  # fmt: skip
            return flow(token=token, method=ctx.method, n_folds=len(tasks), runner_label=parsed.label)
        finally:
            _JOBS.pop(token, None)

    runner.spec = parsed  # type: ignore[attr-defined]
    return runner
