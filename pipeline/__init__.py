"""Orchestration around the DVC pipeline (DESIGN.md: "Prefect (in pipeline/) runs the DVC stages").

- :mod:`pipeline.flow` (``python -m pipeline``): the DVC stages as Prefect tasks, in DAG
  order, with retries, timings, logs, one MLflow parent run and a results artifact.
- :mod:`pipeline.fanout`: the train stage's (protocol, run, fold) trainings as Prefect
  tasks, on local threads or on a Dask cluster (``FERPIPE_FOLD_RUNNER``).
- :mod:`pipeline.gate` (``python -m pipeline.gate``): the CI reproduction gate, fresh
  metrics against the committed ones within per-method tolerances.
- :mod:`pipeline.reproduce` (``python -m pipeline.reproduce``): the whole CI check, a
  forced reproduction (+ profiles) then the gate.

No stage needs this package to compute its result: ``dvc repro`` alone runs everything.
"""

from __future__ import annotations

import os

# Quiet, offline-friendly defaults, set before anything imports prefect or mlflow.
for _key, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # the temporary (ephemeral) Prefect server needs more than the 20 s default on small machines
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
}.items():
    os.environ.setdefault(_key, _value)
