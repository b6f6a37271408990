"""Fault injection: killed stages resume to identical results, bad inputs fail cleanly."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, make_image

from ferpipe import ingest, split
from ferpipe.config import IngestParams, SplitParams
from ferpipe.weights import random_init_state_dict, save_safetensors


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    i = 0
    for subj in ["KA", "KL", "KM"]:
        for code in ["AN", "DI", "FE", "HA", "NE", "SA", "SU"]:
            for shot in (1, 2):
                i += 1
                make_image(root / "raw" / f"{subj}.{code}{shot}.{i}.tiff", seed=i)
    m = ingest.ingest(root / "raw", root / "ing", IngestParams(image_size=32))
    plan, _ = split.make_plan(m, SplitParams(n_runs=2, n_groups=3, seed=3))
    plan.to_csv(root / "plan.csv", index=False)
    save_safetensors(random_init_state_dict(), root / "w.safetensors")
    (root / "params.yaml").write_text(yaml.safe_dump({"train": {
        "mode": "finetune", "image_size": 32, "epochs": 2, "patience": 2, "threads": 1,
        "batch_size": 16, "log_mlflow": False}}))  # fmt: skip
    return root


def train_cmd(ws, out):
    return [sys.executable, "-m", "ferpipe.train", "--manifest", str(ws / "ing" / "manifest.csv"),
            "--plan", str(ws / "plan.csv"), "--weights", str(ws / "w.safetensors"),
            "--out", str(out), "--params", str(ws / "params.yaml")]  # fmt: skip


def env():
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}


def preds(out):
    files = sorted(Path(out).glob("resnet50_finetune/*/run*_fold*.json"))
    return {f.relative_to(out).as_posix(): json.loads(f.read_text())["probabilities"] for f in files}


@pytest.mark.slow
def test_killed_train_resumes_to_identical_metrics(ws, tmp_path):
    subprocess.run(train_cmd(ws, tmp_path / "full"), check=True, env=env(), capture_output=True)
    proc = subprocess.Popen(train_cmd(ws, tmp_path / "killed"), env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while len(preds(tmp_path / "killed")) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "train finished before it could be killed"
    proc.send_signal(signal.SIGKILL)  # mid-fold: no chance to clean up
    proc.wait()
    n_before = len(preds(tmp_path / "killed"))
    assert 3 <= n_before < 12
    r = subprocess.run(train_cmd(ws, tmp_path / "killed"), env=env(), capture_output=True, text=True, check=True)
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["n_resumed"] == n_before and summary["n_computed"] == 12 - n_before
    assert preds(tmp_path / "killed") == preds(tmp_path / "full")


def test_corrupt_image_and_bad_param_leave_outputs_untouched(ws, tmp_path):
    out = tmp_path / "ing"
    assert ingest.main(["--dataset", str(ws / "raw"), "--out", str(out), "--params", str(tmp_path / "none.yaml")]) == 2
    params = tmp_path / "p.yaml"
    params.write_text("ingest:\n  image_size: 32\n")
    assert ingest.main(["--dataset", str(ws / "raw"), "--out", str(out), "--params", str(params)]) == 0
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad_raw = tmp_path / "raw"
    bad_raw.mkdir()
    for f in (ws / "raw").iterdir():
        (bad_raw / f.name).write_bytes(f.read_bytes())
    (bad_raw / "KA.HA1.3.tiff").write_bytes(b"\x00garbage")
    r = subprocess.run([sys.executable, "-m", "ferpipe.ingest", "--dataset", str(bad_raw), "--out", str(out),
                        "--params", str(params)], env=env(), capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and "KA.HA1.3.tiff: cannot decode image" in r.stderr
    params.write_text("ingest:\n  image_size: 32\n  face_crop: yes-please\n")
    r = subprocess.run([sys.executable, "-m", "ferpipe.ingest", "--dataset", str(ws / "raw"), "--out", str(out),
                        "--params", str(params)], env=env(), capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and "ingest.face_crop" in r.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot


def test_unknown_label_is_an_error_when_asked(tmp_path):
    make_image(tmp_path / "d" / "happy" / "a.png", 1)
    make_image(tmp_path / "d" / "bored" / "b.png", 2)
    params = tmp_path / "p.yaml"
    params.write_text("ingest:\n  image_size: 32\n  drop_unknown_labels: false\n")
    r = subprocess.run([sys.executable, "-m", "ferpipe.ingest", "--dataset", str(tmp_path / "d"),
                        "--out", str(tmp_path / "o"), "--params", str(params)],
                       env=env(), capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and "bored" in r.stderr and "b.png" in r.stderr
    assert not (tmp_path / "o").exists()


def test_progress_bars_quiet_without_tty(ws, tmp_path):
    r = subprocess.run([sys.executable, "-m", "ferpipe.ingest", "--dataset", str(ws / "raw"),
                        "--out", str(tmp_path / "o"), "--params", str(tmp_path / "none.yaml")],
                       env=env(), capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2  # missing params file is an error, named
    assert "none.yaml: params file not found" in r.stderr
    (tmp_path / "p.yaml").write_text("ingest:\n  image_size: 32\n")
    r = subprocess.run([sys.executable, "-m", "ferpipe.ingest", "--dataset", str(ws / "raw"),
                        "--out", str(tmp_path / "o"), "--params", str(tmp_path / "p.yaml")],
                       env=env(), capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0 and "\r" not in r.stderr and len((r.stdout + r.stderr).splitlines()) < 5
