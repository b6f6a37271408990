"""Shared fixtures: tiny generated face-like images, never real data."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def private_mlflow_store(tmp_path_factory):
    """No test writes the user's tracking store: every test (and every subprocess it starts,
    which inherits the environment) logs to a throw-away store unless it sets its own."""
    root = tmp_path_factory.mktemp("mlflow-session")
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "FERPIPE_MLFLOW_ARTIFACTS", "FERPIPE_MLFLOW_PARENT_RUN_ID")}
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["FERPIPE_MLFLOW_ARTIFACTS"] = str(root / "mlartifacts")
    os.environ.pop("FERPIPE_MLFLOW_PARENT_RUN_ID", None)
    yield root
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
SHARED_JAFFE = REPO.parent / "shared" / "data" / "jaffe"


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A throw-away MLflow store of the test's own (never the repo's mlflow.db), no parent."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("FERPIPE_MLFLOW_ARTIFACTS", str(tmp_path / "mlartifacts"))
    monkeypatch.delenv("FERPIPE_MLFLOW_PARENT_RUN_ID", raising=False)
    return tmp_path


def make_image(path: Path, seed: int, size: int = 40, mode: str = "L") -> Path:
    """A small distinct gray/colour image; seed makes its bytes unique."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size, size) if mode == "L" else (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)
    return path


def write_params(path: Path, **sections) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(sections))
    return path


@pytest.fixture
def tiny_params(tmp_path) -> Path:
    """A fast CPU config: small images, few runs/groups."""
    return write_params(
        tmp_path / "params.yaml",
        ingest={"image_size": 32},
        split={"protocols": ["stratified", "subject"], "n_runs": 2, "n_groups": 3, "seed": 7},
    )


@pytest.fixture
def jaffe_like(tmp_path) -> Path:
    """JAFFE-named folder: 4 subjects x 7 expressions x 2 shots = 56 images."""
    root = tmp_path / "jaffe"
    codes = ["AN", "DI", "FE", "HA", "NE", "SA", "SU"]
    i = 0
    for subj in ["KA", "KL", "KM", "KR"]:
        for code in codes:
            for shot in (1, 2):
                i += 1
                make_image(root / f"{subj}.{code}{shot}.{i}.tiff", seed=i)
    return root


def jaffe_available() -> bool:
    return SHARED_JAFFE.is_dir() and len(list(SHARED_JAFFE.glob("*.tiff"))) == 213


# ---------------------------------------------------------------- headless Chromium
@pytest.fixture(scope="session")
def chromium():
    """The chromium binary; installed with apt-get when missing (skips only without apt-get)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe:
        return exe
    if not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and apt-get is not available to install it "
                    "(install chromium or chromium-browser to run this test)")  # fmt: skip
    sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if sudo is None:
        pytest.skip("chromium is not installed and apt-get needs root (no sudo): apt-get install -y chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = [*sudo, "apt-get", "install", "-y", "-q", "chromium", "chromium-driver"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    if r.returncode != 0:  # stale package lists: update once, retry
        subprocess.run([*sudo, "apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    exe = shutil.which("chromium")
    assert exe, f"apt-get install chromium failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return exe


def run_chromium(exe, tmp_path, *args):
    profile = tmp_path / "chrome-profile"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={profile}", *args]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    return r
