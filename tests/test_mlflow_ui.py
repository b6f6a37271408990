"""The MLflow UI opens the project's experiment on the training-runs view (headless Chromium).

A real `mlflow ui` process serves a throw-away store holding two pipeline parent runs with
fold children, logged by ferpipe.tracking exactly as the stages log them. The rendered page
must show the runs table (not the GenAI overview), both parents, their nested children,
and the parents' OA metric columns. A screenshot is written to pytest's temp dir.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import run_chromium

from ferpipe import tracking
from ferpipe.foldio import FoldResult

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fold(method, run, fold_no, correct):
    y = [0, 1, 2, 3, 4, 5, 6]
    pred = [t if i < correct else (t + 1) % 7 for i, t in enumerate(y)]
    return FoldResult(method, "stratified", run, fold_no, "h", [f"img{i}.png" for i in y], y, pred)


@pytest.fixture
def ui(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("FERPIPE_MLFLOW_ARTIFACTS", str(tmp_path / "art"))
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    parents = []
    for i, oa in enumerate((83.9, 74.2)):
        parent = tracking.start_parent({"train": {"mode": "frozen" if i == 0 else "finetune"}}, name=f"pipeline-ui-{i}")
        with tracking.stage_status(parent, "aggregate"):
            tracking.log_fold_runs(parent, [fold("resnet50_frozen", 1, k, 5 + k % 2) for k in (1, 2)], {"mode": "x"})
            tracking.log_parent_results(parent, {"resnet50_frozen.stratified.oa_mean": oa})
        parents.append(parent)
    exp_id = tracking.client().get_run(parents[0]).info.experiment_id
    port = free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen([str(mlflow), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow ui did not answer /health within 60 s")
        yield f"http://127.0.0.1:{port}", exp_id, parents
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_experiment_page_shows_training_runs(ui, chromium, tmp_path):
    base, exp_id, parents = ui
    url = f"{base}/#/experiments/{exp_id}?workflowType=machine_learning"
    # a wide window: the runs grid only renders the columns that are on screen
    dom = run_chromium(chromium, tmp_path, "--virtual-time-budget=30000", "--window-size=5000,1000",
                       "--dump-dom", url).stdout  # fmt: skip
    shot = tmp_path / "mlflow_ui.png"
    run_chromium(chromium, tmp_path, "--virtual-time-budget=30000", "--window-size=1600,1000",
                 f"--screenshot={shot}", url)  # fmt: skip
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000
    assert "Token Usage" not in dom and "Runs" in dom  # the training-runs view, not the GenAI overview
    assert "pipeline-ui-0" in dom and "pipeline-ui-1" in dom
    assert re.search(r"<strong>6</strong>\s*matching runs", dom)  # 2 parents + their 4 fold children
    assert "fold01" not in dom  # ... nested (collapsed) under their parents, not top-level rows
    # the parents' OA side by side: MLflow's compare view of the two parent runs
    ids = json.dumps(parents).replace(" ", "")
    cmp_url = f"{base}/#/compare-runs?runs={quote(ids)}&experiments={quote(json.dumps([exp_id]))}"
    cmp = run_chromium(chromium, tmp_path, "--virtual-time-budget=30000", "--window-size=1600,1000",
                       "--dump-dom", cmp_url).stdout  # fmt: skip
    assert "resnet50_frozen.stratified.oa_mean" in cmp and "83.9" in cmp and "74.2" in cmp
