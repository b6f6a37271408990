"""Fold fan-out (pipeline.fanout): Prefect threads and a Dask cluster give the sequential results."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

for key, value in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                   "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90"}.items():  # fmt: skip
    os.environ.setdefault(key, value)

from ferpipe import cv, data, foldio, split, train  # noqa: E402
from ferpipe.config import CLASSES, SplitParams  # noqa: E402
from pipeline import fanout  # noqa: E402


def tiny_context(results_dir: Path):
    """Frozen mode on synthetic features: 63 images, 7 classes, 9 subjects, 2 runs x 3 folds."""
    n = 63
    manifest = pd.DataFrame({"path": [f"img{i:03d}.png" for i in range(n)],
                             "label": [CLASSES[i % 7] for i in range(n)],
                             "subject": [f"S{i % 9}" for i in range(n)]})  # fmt: skip
    plan, _ = split.make_plan(manifest, SplitParams(protocols=["stratified"], n_runs=2, n_groups=3, seed=1))
    index_of = cv.check_plan_matches(plan, manifest)
    y = data.labels_of(manifest)
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(2, n, 128))
    feats[:, :, :7] += 1.5 * np.eye(7)[y]  # learnable, not perfectly
    p = train.TrainParams(threads=1, head_c_grid=[0.1, 1.0], log_mlflow=False)
    ctx = train.FoldContext(p, p.method, "cafe", results_dir / p.method, manifest["path"].tolist(), y,
                            feats=feats.astype(np.float32))  # fmt: skip
    tasks = [train.FoldTask(pr, r, f, roles) for pr, r, f, roles in cv.fold_indices(plan, index_of)]
    return ctx, tasks


def same(a: list, b: list) -> None:
    assert [(r.protocol, r.run, r.fold) for r in a] == [(r.protocol, r.run, r.fold) for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert ra.y_pred == rb.y_pred
        assert ra.probabilities == rb.probabilities


@pytest.fixture(scope="module")
def prefect_api():
    """A throwaway Prefect server + database for this module, stopped while pytest still has stdout."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=None):
        yield


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    ctx, tasks = tiny_context(tmp_path_factory.mktemp("seq"))
    return tasks, train.run_sequential(ctx, tasks)


# ---------------------------------------------------------------- fast
def test_spec_parsing():
    assert fanout.parse_spec("prefect") == fanout.RunnerSpec("prefect")
    assert fanout.parse_spec("prefect:3").workers == 3
    assert fanout.parse_spec("dask").kind == "dask-local"
    assert fanout.parse_spec("dask://10.0.0.5:8786").address == "tcp://10.0.0.5:8786"
    assert fanout.parse_spec("tcp://node-1:8786").address == "tcp://node-1:8786"
    assert fanout.parse_spec("dask://[::1]:8786").address == "tcp://[::1]:8786"
    for spec in ("prefect", "prefect:2", "dask", "dask:4", "dask://10.0.0.5:8786"):
        assert fanout.parse_spec(fanout.parse_spec(spec).label) == fanout.parse_spec(spec)
    for bad in ("ray", "dask://nohost", "http://x:1", "prefect:0", "prefect:x"):
        with pytest.raises(fanout.FanoutError, match="fold runner"):
            fanout.parse_spec(bad)


def test_unreachable_address_fails_fast_and_names_it():
    t0 = time.time()
    with pytest.raises(fanout.FanoutError, match=r"tcp://127\.0\.0\.1:1\b.*dask scheduler"):
        fanout.make_runner("dask://127.0.0.1:1", train.compute_fold)
    assert time.time() - t0 < 10


def test_train_stage_reports_unreachable_cluster(tmp_path, capsys):
    t0 = time.time()
    rc = train.main(["--runner", "dask://127.0.0.1:1", "--out", str(tmp_path / "o"),
                     "--manifest", str(tmp_path / "none.csv")])  # fmt: skip
    assert rc == 2 and time.time() - t0 < 15
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:1" in capsys.readouterr().err


def test_finetune_folds_never_overlap_in_one_process(tmp_path, monkeypatch):
    """Finetune folds share process-wide torch state (global RNG, the reused ResNet-50)."""
    ctx, tasks = tiny_context(tmp_path)
    seen = []

    def fake_compute(c, t):
        seen.append((c.p.mode, fanout._FINETUNE_LOCK.locked(), c.results_dir))
        return "ok"

    ft = dataclasses.replace(ctx, p=dataclasses.replace(ctx.p, mode="finetune"))
    assert fanout._fold_task_fn(ft, tasks[0], True, fake_compute) == "ok"
    assert fanout._fold_task_fn(ctx, tasks[0], False, fake_compute) == "ok"
    (m1, locked1, dir1), (m2, locked2, dir2) = seen
    assert (m1, locked1) == ("finetune", True) and (m2, locked2) == ("frozen", False)
    assert dir1 != ctx.results_dir and not dir1.exists()  # scratch, removed afterwards
    assert dir2 == ctx.results_dir


class FakeClient:
    def __init__(self, fingerprints=None, workers=True):
        self.fingerprints, self.workers, self.uploaded = fingerprints or {}, workers, []

    def wait_for_workers(self, n, timeout=None):
        if not self.workers:
            raise TimeoutError("no workers")

    def upload_file(self, path, load=True):
        self.uploaded.append(path)

    def run(self, fn):
        return {w: (fp if fp is not None else fn()) for w, fp in self.fingerprints.items()}


def test_cluster_with_other_code_or_no_workers_is_refused():
    ok = FakeClient({"tcp://w1:1": None})
    assert fanout.prepare_cluster(ok, "tcp://s:8786") == 1
    assert ok.uploaded and Path(ok.uploaded[0]).suffix == ".zip"  # pipeline shipped to the cluster
    stale = {**fanout.code_fingerprint(), "ferpipe": "0123456789abcdef"}
    with pytest.raises(fanout.FanoutError, match=r"tcp://w2:1: .*0123456789abcdef.*same commit"):
        fanout.prepare_cluster(FakeClient({"tcp://w1:1": None, "tcp://w2:1": stale}), "tcp://s:8786")
    with pytest.raises(fanout.FanoutError, match=r"tcp://s:8786 has no workers"):
        fanout.prepare_cluster(FakeClient(workers=False), "tcp://s:8786", wait_s=0.1)


def test_package_zip_holds_this_package():
    import zipfile

    with zipfile.ZipFile(fanout.package_zip()) as z:
        assert {"pipeline/__init__.py", "pipeline/fanout.py"} <= set(z.namelist())


def test_sequential_spec_is_the_plain_runner():
    assert train.fold_runner("sequential") is train.run_sequential
    assert train.fold_runner(None) is train.run_sequential


# ---------------------------------------------------------------- slow: real Prefect / Dask runs
@pytest.mark.slow
def test_prefect_threads_match_sequential(prefect_api, sequential, tmp_path):
    tasks, expected = sequential
    ctx, _ = tiny_context(tmp_path)
    got = fanout.make_runner("prefect:2", train.compute_fold)(ctx, tasks)
    same(expected, got)
    assert len(list((tmp_path / ctx.method / "stratified").glob("run*_fold*.json"))) == len(tasks)


@pytest.mark.slow
def test_dask_cluster_matches_sequential(prefect_api, sequential, tmp_path):
    from distributed import LocalCluster

    tasks, expected = sequential
    ctx, _ = tiny_context(tmp_path)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        addr = cluster.scheduler_address.replace("tcp://", "dask://")
        got = fanout.make_runner(addr, train.compute_fold)(ctx, tasks)
    same(expected, got)
    # the workers computed in scratch folders; this process wrote the real fold files
    files = sorted((tmp_path / ctx.method / "stratified").glob("run*_fold*.json"))
    assert len(files) == len(tasks)
    for f, r in zip(files, sorted(expected, key=lambda r: (r.run, r.fold)), strict=True):
        saved = foldio.load_fold(f)
        assert saved.y_pred == r.y_pred and saved.probabilities == r.probabilities
