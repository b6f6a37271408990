"""The Prefect flow over DVC stages (pipeline.flow), on a tiny fake DVC project of shell stages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

for key, value in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "DVC_NO_ANALYTICS": "1",
                   "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
                   "MLFLOW_DISABLE_TELEMETRY": "true"}.items():  # fmt: skip
    os.environ.setdefault(key, value)

from pipeline import __main__ as cli  # noqa: E402
from pipeline import flow as pflow  # noqa: E402

# declared out of order on purpose: the flow must follow the dependencies, ties in file order
DVC_YAML = """\
stages:
  b:
    cmd: cat a.txt > b.txt && echo b >> b.txt
    deps: [a.txt]
    outs: [b.txt]
  a:
    cmd: echo a > a.txt
    outs: [a.txt]
  c:
    cmd: echo c > c.txt
    outs: [c.txt]
"""

FAILING = """\
  bad:
    cmd: 'echo attempt >> attempts.log && echo "boom: the stage broke" && exit 3'
    deps: [b.txt]
  after:
    cmd: echo never > after.txt
    deps: [b.txt]
    outs: [after.txt]
"""


def dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True)


def make_project(root: Path, extra: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    assert dvc(root, "init", "--no-scm", "-q").returncode == 0
    (root / "dvc.yaml").write_text(DVC_YAML + extra)
    (root / "params.yaml").write_text("data:\n  dataset: x\n")
    return root


@pytest.fixture
def project(tmp_path) -> Path:
    return make_project(tmp_path / "proj")


@pytest.fixture(scope="module")
def prefect_api():
    """A throwaway Prefect server + database; the CLI runs in subprocesses pointed at it."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=None):
        yield PREFECT_API_URL.value()


def run_cli(api: str, project: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PREFECT_API_URL": api, "PYTHONPATH": str(REPO), **env}
    return subprocess.run([sys.executable, "-m", "pipeline", "-C", str(project), *args], cwd=project,
                          env=full_env, capture_output=True, text=True, timeout=300)  # fmt: skip


def table_rows(out: str) -> dict[str, str]:
    rows = {}
    for line in out.split("\nstage ", 1)[-1].splitlines()[1:]:
        if line.strip() and not line.startswith("pipeline:"):
            name, rest = line.split(None, 1)
            rows[name] = rest.rsplit(None, 1)[0].strip()
    return rows


# ---------------------------------------------------------------- fast: no Prefect run
def test_stage_order_follows_the_dag_then_file_order(project):
    stages = pflow.dvc_stages(project)
    assert [s.name for s in stages] == ["a", "b", "c"]
    assert stages[1].deps == ["a"] and stages[1].cmd.startswith("cat a.txt")
    assert [s.name for s in pflow.select_stages(stages, ["c", "a"])] == ["a", "c"]
    with pytest.raises(pflow.UsageError, match=r"unknown stage\(s\): nope \(stages: a, b, c\)"):
        pflow.select_stages(stages, ["nope"])


def test_new_stages_are_picked_up(project):
    (project / "dvc.yaml").write_text(DVC_YAML + "  d:\n    cmd: echo d\n    deps: [c.txt]\n")
    assert [s.name for s in pflow.dvc_stages(project)] == ["a", "b", "c", "d"]


def test_real_project_order():
    names = [s.name for s in pflow.dvc_stages(REPO)]
    for up, down in (("ingest", "validate"), ("validate", "split"), ("split", "train"),
                     ("weights", "train"), ("train", "aggregate")):  # fmt: skip
        assert names.index(up) < names.index(down)


def test_list_and_usage_errors(project, capsys):
    assert cli.main(["-C", str(project), "--list"]) == 0
    assert [ln.split("\t")[0] for ln in capsys.readouterr().out.splitlines()] == ["a", "b", "c"]
    assert cli.main(["-C", str(project), "--stages", "zzz"]) == 2
    assert "unknown stage(s): zzz" in capsys.readouterr().err
    assert cli.main(["-C", str(project.parent), "--list"]) == 2
    assert "not a DVC project" in capsys.readouterr().err
    t0 = time.time()
    assert cli.main(["-C", str(project), "--dask-address", "127.0.0.1:1"]) == 2
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:1" in capsys.readouterr().err
    assert time.time() - t0 < 10


def test_lock_held_by_another_run_is_named(project, capsys):
    import zc.lockfile

    lock = zc.lockfile.LockFile(str(project / ".dvc" / "tmp" / "lock"))  # what a running `dvc repro` holds
    try:
        assert "PID" in pflow.lock_holder(project)
        assert cli.main(["-C", str(project)]) == 3
        err = capsys.readouterr().err
        assert "another pipeline run holds the DVC lock in this workspace; wait for it" in err
        # and DVC's own message, seen when the lock is taken between stages, is recognised
        out = dvc(project, "repro", "--single-item", "a")
        assert out.returncode != 0 and pflow.is_lock_error(out.stdout + out.stderr)
    finally:
        lock.close()
    assert pflow.lock_holder(project) is None


def test_rwlock_of_a_live_process_is_named(project):
    rw = project / ".dvc" / "tmp" / "rwlock"
    rw.write_text(json.dumps({"write": {str(project / "a.txt"): {"pid": os.getpid(), "cmd": "dvc repro"}}}))
    assert "dvc repro (PID" in pflow.lock_holder(project)
    rw.write_text(json.dumps({"write": {str(project / "a.txt"): {"pid": 2**22 + 12345, "cmd": "dvc repro"}}}))
    assert pflow.lock_holder(project) is None  # a dead process: DVC clears it itself


def test_retry_condition_never_retries_a_held_lock():
    class State:
        def __init__(self, exc):
            self.exc = exc

        def result(self, raise_on_failure=True):
            return self.exc

    assert pflow._retry_unless_lock(None, None, State(pflow.StageFailed("x", 1, "tail"))) is True
    assert pflow._retry_unless_lock(None, None, State(pflow.DvcLockHeld("held"))) is False


def test_stage_status_parsing():
    assert pflow.stage_status("train", ["Running stage 'train':", "> python ..."]) == "ran"
    assert pflow.stage_status("train", ["Stage 'train' didn't change, skipping"]) == "up to date"
    assert pflow.stage_status("sub/dvc.yaml:fit", ["Running stage 'sub/dvc.yaml:fit':"]) == "ran"


# ---------------------------------------------------------------- Prefect runs (a few seconds each)
@pytest.mark.slow
def test_flow_runs_stages_in_order_then_skips_them(prefect_api, project):
    first = run_cli(prefect_api, project, "--no-mlflow")
    assert first.returncode == 0, first.stderr[-3000:]
    rows = table_rows(first.stdout)
    assert list(rows) == ["a", "b", "c"] and set(rows.values()) == {"ran"}
    assert (project / "b.txt").read_text() == "a\nb\n"
    again = run_cli(prefect_api, project, "--no-mlflow")
    assert again.returncode == 0 and set(table_rows(again.stdout).values()) == {"up to date"}
    # one Prefect task per stage, and the per-stage logs are kept
    assert "Task run 'b'" in first.stderr and "[b] Running stage 'b'" in first.stderr
    logs = list((project / ".dvc" / "tmp" / "pipeline").glob("*/b.log"))
    assert len(logs) == 2 and any("Running stage 'b'" in f.read_text() for f in logs)
    # the results artifact: the stage table (+ results.md when the project has one)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ferpipe-results"])))
    assert arts and all(a.type == "markdown" for a in arts)
    assert any("| b | up to date |" in a.data for a in arts) and any("| b | ran |" in a.data for a in arts)


@pytest.mark.slow
def test_failed_stage_stops_the_flow_names_it_and_keeps_earlier_outputs(prefect_api, tmp_path):
    from mlflow.tracking import MlflowClient

    project = make_project(tmp_path / "fail", FAILING)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = run_cli(prefect_api, project, "--retries", "1", "--retry-delay", "0",
                  MLFLOW_TRACKING_URI=uri, FERPIPE_MLFLOW_ARTIFACTS=str(tmp_path / "mlart"))  # fmt: skip
    assert res.returncode == 1, res.stderr[-3000:]
    assert "pipeline: error: stage 'bad' failed: dvc repro exited with" in res.stderr
    assert "boom: the stage broke" in res.stderr
    assert (project / "attempts.log").read_text().count("attempt") == 2  # one retry
    assert not (project / "after.txt").exists()  # the flow stopped at the failure
    assert (project / "a.txt").exists() and (project / "b.txt").exists()  # earlier outputs kept
    lock = (project / "dvc.lock").read_text()
    assert "a.txt" in lock and "b.txt" in lock  # ... and committed by DVC
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parent = next(r for r in runs if r.data.tags.get("ferpipe.kind") == "pipeline")
    assert parent.info.status == "FAILED"
    assert parent.data.metrics["stage_seconds.a"] > 0
