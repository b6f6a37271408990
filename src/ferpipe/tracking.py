"""MLflow run history: one parent run per pipeline invocation, one child per fold.

Logging is batched (one ``log_batch`` per child run, written after the folds finish)
so it costs little next to training. Store: ``sqlite:///mlflow.db`` in the repo root
unless ``MLFLOW_TRACKING_URI`` says otherwise. A parent created by the orchestrator is
passed down in ``FERPIPE_MLFLOW_PARENT_RUN_ID``; without it the train stage creates
one and records its id in its outputs for the later stages.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

EXPERIMENT = os.environ.get("FERPIPE_MLFLOW_EXPERIMENT", "ferpipe")
PARENT_ENV = "FERPIPE_MLFLOW_PARENT_RUN_ID"
PARENT_TAG = "mlflow.parentRunId"
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def client():
    import logging

    import mlflow
    from mlflow.tracking import MlflowClient

    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(tracking_uri())
    return MlflowClient(tracking_uri())


def experiment_id(c, name: str = EXPERIMENT) -> str:
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # stores made before the tag existed
            c.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id
    # keep artifacts next to the store, not in whatever folder a stage runs from
    root = Path(os.environ.get("FERPIPE_MLFLOW_ARTIFACTS", Path.cwd() / "mlartifacts")).resolve()
    # MLflow 3's UI opens an experiment on its GenAI overview unless it is marked as model
    # training; this project's runs are trainings (fold children under a pipeline parent)
    return c.create_experiment(name, artifact_location=root.as_uri(), tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def data_hash(dvc_file: Path | str = "data.dvc") -> str:
    """The md5 DVC records for the dataset (what `dvc pull` restores)."""
    import yaml

    try:
        outs = yaml.safe_load(Path(dvc_file).read_text())["outs"]
        return str(outs[0].get("md5"))
    except (OSError, KeyError, IndexError, TypeError):
        return "unknown"


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, key + "."))
        else:
            flat[key] = json.dumps(v) if isinstance(v, list) else str(v)
    return flat


def start_parent(params: dict[str, Any], name: str | None = None) -> str:
    """Create the parent run (params, git commit, data hash) and return its id."""
    from mlflow.entities import Param, RunTag

    c = client()
    run = c.create_run(
        experiment_id(c),
        run_name=name or time.strftime("pipeline-%Y%m%d-%H%M%S"),
        tags={"ferpipe.kind": "pipeline", "git_commit": git_commit(), "data_hash": data_hash()},
    )
    flat = _flatten(params)
    batch = [Param(k, v[:6000]) for k, v in sorted(flat.items())]
    for i in range(0, len(batch), 100):  # MLflow caps params per batch at 100
        c.log_batch(run.info.run_id, params=batch[i : i + 100], tags=[RunTag("ferpipe.kind", "pipeline")])
    return run.info.run_id


class ParentRunError(RuntimeError):
    """The recorded MLflow parent run is not in the current tracking store."""


def parent_run_id(recorded: Path | str | None = None) -> str | None:
    """The orchestrator's parent (env) or the one recorded in the stage's own inputs.

    A recorded id is used only when it was written for the same tracking store and the
    run exists there; otherwise None (the caller starts a new parent). An id from the
    environment that the store does not know is an error naming it.
    """
    if os.environ.get(PARENT_ENV):
        rid = os.environ[PARENT_ENV]
        if not run_exists(rid):
            raise ParentRunError(f"${PARENT_ENV}={rid}: no such run in the MLflow store {tracking_uri()}")
        return rid
    if recorded and Path(recorded).exists():
        rec = json.loads(Path(recorded).read_text())
        rid, uri = rec.get("parent_run_id"), rec.get("tracking_uri")
        if rid and (uri in (None, tracking_uri())) and run_exists(rid):
            return rid
    return None


def run_exists(run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client().get_run(run_id)
        return True
    except MlflowException:
        return False


def owned_by_orchestrator() -> bool:
    """A parent passed down by `python -m pipeline` is ended by the flow, not by a stage."""
    return bool(os.environ.get(PARENT_ENV))


class StageStatus:
    """What a stage tells the parent run at its end (see :func:`stage_status`)."""

    def __init__(self, parent_id: str | None):
        self.parent_id = parent_id
        self.failed = False

    def fail(self) -> None:
        self.failed = True


@contextlib.contextmanager
def stage_status(parent_id: str | None, stage: str):
    """End the pipeline's parent run honestly after a DVC stage worked in it.

    Under `dvc repro` every stage is its own process and nothing runs after the last
    one, so the parent is never left RUNNING: each stage that logs into it ends it again
    (``set_terminated`` moves its end time, so the duration spans the whole invocation).
    FINISHED when the stage succeeds; FAILED when it raises or calls ``status.fail()``;
    KILLED on Ctrl-C or SIGTERM; ``ferpipe.failed_stage`` names the stage. A parent owned
    by the orchestrator (`python -m pipeline`, via the environment) is ended by it instead.
    Set ``status.parent_id`` inside the block when the stage creates the parent itself.
    """
    import signal

    status = StageStatus(parent_id)

    def end(state: str) -> None:
        if not status.parent_id or owned_by_orchestrator():
            return
        c = client()
        c.set_tag(status.parent_id, "ferpipe.last_stage", stage)
        if state != "FINISHED":
            c.set_tag(status.parent_id, "ferpipe.failed_stage", stage)
        c.set_terminated(status.parent_id, state)

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield status
    except KeyboardInterrupt:
        end("KILLED")
        raise
    except BaseException:
        end("FAILED")
        raise
    else:
        end("FAILED" if status.failed else "FINISHED")
    finally:
        signal.signal(signal.SIGTERM, old)


def curve_points(curves: dict[str, Any]):
    """(key, step, value) for curves given as lists of numbers or lists of records.

    ``{"val_loss": [..]}`` -> val_loss at steps 0..n; ``{"grid": [{"hidden": 10,
    "val_accuracy": .5}, ..]}`` -> grid.val_accuracy at steps 0..n (one per record).
    """
    for key, values in curves.items():
        for step, v in enumerate(values if isinstance(values, list) else []):
            if isinstance(v, dict):
                for sub, x in v.items():
                    if isinstance(x, (int, float)) and not isinstance(x, bool):
                        yield f"{key}.{sub}", step, float(x)
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                yield key, step, float(v)


def log_fold_runs(parent_id: str, folds: Iterable, config: dict[str, Any]) -> int:
    """One child run per FoldResult: config, per-epoch curves, accuracy, confusion matrix."""
    from mlflow.entities import Metric, Param, RunStatus, RunTag

    c = client()
    exp = c.get_run(parent_id).info.experiment_id
    params = [Param(k, v[:6000]) for k, v in sorted(_flatten(config).items())][:90]
    n = 0
    now = int(time.time() * 1000)
    for r in folds:
        run = c.create_run(exp, run_name=f"{r.method}/{r.protocol}/run{r.run:02d}/fold{r.fold:02d}",
                           tags={PARENT_TAG: parent_id})  # fmt: skip
        metrics = [Metric("test_accuracy", r.accuracy, now, 0)]
        for key, step, value in curve_points(r.extra.get("curves") or {}):
            metrics.append(Metric(key, value, now, step))
        if r.seconds is not None:
            metrics.append(Metric("time_fold_s", float(r.seconds), now, 0))
        tags = [RunTag("method", r.method), RunTag("protocol", r.protocol), RunTag("run", str(r.run)),
                RunTag("fold", str(r.fold)), RunTag("config_hash", r.config_hash),
                RunTag("confusion_matrix", json.dumps(r.confusion_matrix.tolist()))]  # fmt: skip
        for key, value in (r.extra.get("selected") or {}).items():
            tags.append(RunTag(f"selected.{key}", str(value)))
        for i in range(0, max(len(metrics), 1), 1000):
            c.log_batch(run.info.run_id, metrics=metrics[i : i + 1000],
                        params=params if i == 0 else [], tags=tags if i == 0 else [])  # fmt: skip
        c.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED))
        n += 1
    return n


def log_parent_results(parent_id: str, metrics: dict[str, float], artifacts: Iterable[Path] = (),
                       artifact_path: str | None = None) -> None:  # fmt: skip
    from mlflow.entities import Metric

    c = client()
    now = int(time.time() * 1000)
    ms = [Metric(k, float(v), now, 0) for k, v in sorted(metrics.items())]
    for i in range(0, len(ms), 1000):
        c.log_batch(parent_id, metrics=ms[i : i + 1000])
    for a in artifacts:
        if Path(a).is_dir():
            c.log_artifacts(parent_id, str(a), artifact_path)
        elif Path(a).exists():
            c.log_artifact(parent_id, str(a), artifact_path)


def finish(run_id: str, failed: bool = False) -> None:
    from mlflow.entities import RunStatus

    client().set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED))
