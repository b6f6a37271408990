"""Fold runners: how a list of fold tasks gets computed. ``runner(ctx, tasks, compute)``.

- ``run_sequential``: one fold after another in this process (the default).
- ``run_processes``: N worker processes on one machine (``train.workers``). Each worker
  gets the fold context once (images, labels, weights), moves the images to its device
  once (uint8, a few MB), and has its own CUDA context, so on a GPU N folds overlap: one
  small ResNet-50 training (batch 32) leaves a large GPU mostly idle. Every fold is seeded
  from its own (protocol, run, fold), so results do not depend on the worker count or on
  the order folds finish in (on a CPU each worker uses ``train.threads`` threads: same
  thread count, identical numbers).

``compute(ctx, task) -> FoldResult`` must be a module-level function (pickled by name).
Results come back in task order; each fold is saved by ``compute`` as it finishes, so a
killed run keeps what it finished.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from tqdm import tqdm

_WORKER: dict = {}


def run_sequential(ctx, tasks, compute, unit: str = "fold"):
    bar = tqdm(tasks, desc=f"folds ({ctx.method})", unit=unit, disable=None, mininterval=5)
    return [compute(ctx, t) for t in bar]


def _init_worker(ctx, compute, prepare):
    if prepare is not None:
        ctx = prepare(ctx)
    _WORKER.update(ctx=ctx, compute=compute)


def _run_one(task):
    return _WORKER["compute"](_WORKER["ctx"], task)


def run_processes(ctx, tasks, compute, workers: int, prepare=None, deadline: float | None = None):
    """Fan ``tasks`` out over ``workers`` spawned processes. ``prepare(ctx)`` runs once per worker.

    With ``deadline`` (a ``time.time()`` value) tasks not started by then are cancelled
    and come back as None (tasks start in list order).
    """
    if (workers <= 1 or len(tasks) <= 1) and deadline is None:
        return run_sequential(ctx if prepare is None else prepare(ctx), tasks, compute)
    results = [None] * len(tasks)
    with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=mp.get_context("spawn"),
                             initializer=_init_worker, initargs=(ctx, compute, prepare)) as pool:  # fmt: skip
        futures = {pool.submit(_run_one, t): i for i, t in enumerate(tasks)}
        bar = tqdm(total=len(tasks), desc=f"folds ({ctx.method}, {workers} workers)", unit="fold",
                   disable=None, mininterval=5)  # fmt: skip
        pending = set(futures)
        while pending:
            timeout = None if deadline is None else max(deadline - time.time(), 0.0)
            done, pending = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
            for fut in done:
                if not fut.cancelled():
                    results[futures[fut]] = fut.result()  # a worker's exception surfaces here
                bar.update()
            if deadline is not None and time.time() >= deadline:
                for fut in pending:
                    fut.cancel()  # running ones finish; queued ones never start
                deadline = None
        bar.close()
    return results
