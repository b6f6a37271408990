"""train stage on generated faces with a random-init ResNet-50 (fast CPU config)."""

import json
import os

import numpy as np
import pytest

from ferpipe import foldio, ingest, split, train
from ferpipe.config import IngestParams, SplitParams
from ferpipe.weights import random_init_state_dict, save_safetensors


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from conftest import make_image

    root = tmp_path_factory.mktemp("ws")
    codes = ["AN", "DI", "FE", "HA", "NE", "SA", "SU"]
    i = 0
    for subj in ["KA", "KL", "KM"]:
        for code in codes:
            for shot in (1, 2):
                i += 1
                make_image(root / "raw" / f"{subj}.{code}{shot}.{i}.tiff", seed=i, size=40)
    m = ingest.ingest(root / "raw", root / "ing", IngestParams(image_size=32))
    plan, _ = split.make_plan(m, SplitParams(n_runs=2, n_groups=3, seed=1))
    plan.to_csv(root / "plan.csv", index=False)
    save_safetensors(random_init_state_dict(), root / "w.safetensors")
    return root


def params(**kw):
    base = dict(image_size=32, threads=1, batch_size=16, head_c_grid=[0.1, 1.0], log_mlflow=False,
                taps=["layer2:2", "layer3:2"], spatial_image_size=32)
    base.update(kw)
    return train.TrainParams(**base)


def run(ws, out, **kw):
    return train.run_training(ws / "ing" / "manifest.csv", ws / "plan.csv", ws / "w.safetensors", out, params(**kw))


def fold_files(d, method="resnet50_spatial"):
    return sorted((d / method).glob("*/run*_fold*.json"))


def test_frozen_writes_every_fold_of_both_heads_and_is_deterministic(workspace, tmp_path):
    s = run(workspace, tmp_path / "a")
    assert s["methods"] == ["resnet50_gap", "resnet50_spatial"]
    assert s["n_folds"] == 2 * 2 * 2 * 3 and s["run"]["n_computed"] == 24
    files = fold_files(tmp_path / "a")
    assert len(files) == 12 and len(fold_files(tmp_path / "a", "resnet50_gap")) == 12
    assert s["inputs"]["resnet50_spatial"] == {"image_size": 32, "taps": ["layer2:2", "layer3:2"]}
    r = foldio.load_fold(files[0])
    assert r.confusion_matrix.sum() == len(r.images) and r.extra["selected"]["C"] in (0.1, 1.0)
    assert np.allclose(np.sum(r.probabilities, axis=1), 1, atol=1e-4)
    run(workspace, tmp_path / "b")
    for fa, fb in zip(files, fold_files(tmp_path / "b"), strict=True):
        a, b = json.loads(fa.read_text()), json.loads(fb.read_text())
        assert a["y_pred"] == b["y_pred"] and a["probabilities"] == b["probabilities"]


def test_resume_skips_finished_folds_and_matches_uninterrupted(workspace, tmp_path):
    full = run(workspace, tmp_path / "full")
    # an interrupted run: only run 1 finished, plus a half-written temp file left behind
    part = run(workspace, tmp_path / "part", max_runs=1)
    assert part["run"]["n_computed"] == 12
    leftover = tmp_path / "part" / "resnet50_spatial" / "stratified" / ".run02_fold01.json.x.tmp"
    leftover.write_text("{half")
    resumed = run(workspace, tmp_path / "part")
    assert resumed["run"]["n_resumed"] == 12 and resumed["run"]["n_computed"] == 12
    assert resumed["config_hash"] == full["config_hash"]
    for fa, fb in zip(fold_files(tmp_path / "full"), fold_files(tmp_path / "part"), strict=True):
        assert json.loads(fa.read_text())["y_pred"] == json.loads(fb.read_text())["y_pred"]


def test_changed_config_recomputes(workspace, tmp_path):
    run(workspace, tmp_path / "c", max_runs=1)
    s = run(workspace, tmp_path / "c", max_runs=1, head_c_grid=[0.5])
    assert s["run"]["n_computed"] == 12 and s["run"]["n_resumed"] == 0


def test_a_new_split_plan_recomputes_instead_of_resuming_old_folds(workspace, tmp_path):
    from ferpipe import data

    run(workspace, tmp_path / "p", max_runs=1)
    m = data.read_manifest(workspace / "ing" / "manifest.csv")
    other, _ = split.make_plan(m, SplitParams(n_runs=2, n_groups=3, seed=2))  # same folds, other images
    other.to_csv(tmp_path / "plan2.csv", index=False)
    s = train.run_training(workspace / "ing" / "manifest.csv", tmp_path / "plan2.csv", workspace / "w.safetensors",
                           tmp_path / "p", params(max_runs=1))  # fmt: skip
    assert s["run"]["n_computed"] == 12 and s["run"]["n_resumed"] == 0


def test_changed_taps_recompute_the_spatial_head_only(workspace, tmp_path):
    run(workspace, tmp_path / "t", max_runs=1)
    s = run(workspace, tmp_path / "t", max_runs=1, taps=["layer2:4"])
    assert s["run"]["n_computed"] == 6 and s["run"]["n_resumed"] == 6  # the paper's head is unchanged


def test_corrupt_fold_file_is_recomputed_not_trusted(workspace, tmp_path):
    run(workspace, tmp_path / "d", max_runs=1)
    f = fold_files(tmp_path / "d")[0]
    f.write_text('{"method": "resnet50_spatial"')
    s = run(workspace, tmp_path / "d", max_runs=1)
    assert s["run"]["n_computed"] == 1


def test_finetune_smoke_runs_and_writes_curves(workspace, tmp_path):
    s = run(workspace, tmp_path / "ft", mode="finetune", epochs=2, patience=1, max_runs=1, max_folds=1)
    assert s["run"]["n_computed"] == 2  # one fold per protocol
    r = foldio.load_fold(next((tmp_path / "ft" / "resnet50_finetune").glob("*/run01_fold01.json")))
    assert 1 <= len(r.extra["curves"]["train_loss"]) <= 2
    assert r.extra["selected"]["best_epoch"] >= 1


@pytest.mark.slow
def test_two_worker_processes_give_the_sequential_results(workspace, tmp_path):
    # train.workers: N runs folds in N spawned processes (a GPU runs several at once); every
    # fold is seeded from its own (protocol, run, fold), so the results equal one process's
    kw = dict(mode="finetune", epochs=1, max_runs=1, max_folds=2, batch_size=8)
    seq = run(workspace, tmp_path / "seq", workers=1, **kw)
    p = params(workers=2, **kw)
    par = train.run_training(workspace / "ing" / "manifest.csv", workspace / "plan.csv", workspace / "w.safetensors",
                             tmp_path / "par", p, runner=train.fold_runner(None, p))  # fmt: skip
    assert seq["run"]["n_computed"] == par["run"]["n_computed"] == 4
    a = [foldio.load_fold(f) for f in fold_files_of(tmp_path / "seq", "resnet50_finetune")]
    b = [foldio.load_fold(f) for f in fold_files_of(tmp_path / "par", "resnet50_finetune")]
    assert [(r.protocol, r.run, r.fold) for r in a] == [(r.protocol, r.run, r.fold) for r in b]
    assert all(x.probabilities == y.probabilities and x.extra["curves"] == y.extra["curves"] for x, y in zip(a, b, strict=True))


def fold_files_of(d, method):
    return sorted((d / method).glob("*/run*_fold*.json"))


def test_bad_params_named(tmp_path, capsys):
    (tmp_path / "p.yaml").write_text("train:\n  mode: frozzen\n")
    rc = train.main(["--params", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "train.mode: expected one of ('frozen', 'finetune'), got 'frozzen'" in capsys.readouterr().err


def test_mlflow_parent_and_children(workspace, tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("FERPIPE_MLFLOW_ARTIFACTS", str(tmp_path / "art"))
    monkeypatch.delenv("FERPIPE_MLFLOW_PARENT_RUN_ID", raising=False)
    s = run(workspace, tmp_path / "m", log_mlflow=True, max_runs=1)
    parent = s["run"]["mlflow_parent_run_id"]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(os.environ.get("FERPIPE_MLFLOW_EXPERIMENT", "ferpipe"))
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    assert len(children) == 12
    assert {(r.data.tags["protocol"], r.data.tags["run"]) for r in children} == {("stratified", "1"), ("subject", "1")}
    assert all("test_accuracy" in r.data.metrics and "confusion_matrix" in r.data.tags for r in children)
    p = client.get_run(parent)
    assert p.data.tags["ferpipe.kind"] == "pipeline" and "git_commit" in p.data.tags and "data_hash" in p.data.tags
    mlflow.set_tracking_uri(None)
