"""`dvc repro` on the real JAFFE images leaves no MLflow run RUNNING.

The whole DAG runs in a throw-away copy of the repository (tracked files + the JAFFE
images from ../shared) with a reduced config (1 run, 64 px, random-init weights so no npm
download) and a throw-away MLflow store.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, SHARED_JAFFE, jaffe_available

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not jaffe_available(), reason="../shared/data/jaffe not present")]


def test_dvc_repro_ends_its_parent_run(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, repo / f)
    shutil.copytree(SHARED_JAFFE, repo / "data" / "jaffe")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["split"]["n_runs"] = 1
    params["weights"]["source"] = "none"
    params["train"]["image_size"] = 64
    params["baselines"]["max_runs"] = 1
    for method in ("cso", "bbo"):  # this test is about MLflow runs, not the optimisers' budgets
        params["baselines"][method]["iters"] = 200
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("FERPIPE_MLFLOW_ARTIFACTS", str(tmp_path / "art"))
    bindir = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", f"{bindir}:{__import__('os').environ['PATH']}")
    out = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=repo, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("ferpipe")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    assert runs and not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    parents = [r for r in runs if r.data.tags.get("ferpipe.kind") == "pipeline"]
    assert len(parents) == 1, [p.info.run_name for p in parents]
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.info.end_time > parent.info.start_time
    assert parent.data.tags["ferpipe.last_stage"] in ("report", "final_model")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    methods = {r.data.tags.get("method") for r in children}
    assert {"resnet50_spatial", "hwt", "cso", "bbo", "nn_pixels"} <= methods
    folds = [r for r in children if r.data.tags.get("method") == "resnet50_spatial" and "fold" in r.data.tags]
    assert len(folds) == 20  # 1 run x 10 folds x 2 protocols (final_model adds a child of its own)
    assert any(k.startswith("resnet50_spatial.stratified.oa") for k in parent.data.metrics)
