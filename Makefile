# Two entry points for a newcomer: `make run` (install + the pipeline on the default data)
# and `make test` (install + lint + tests). Everything else is a building block.
SHELL := /bin/bash
export PATH := $(CURDIR)/.venv/bin:$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export GX_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export MPLBACKEND := Agg

.PHONY: install run test lint unit cpu-evidence gpu-check readme pipeline gate reproduce serve mlflow-ui

install:  ## create/update .venv from requirements.lock (uv, local wheels when present)
	bash scripts/setup_env.sh

run: install  ## the main job: pull the data and run the whole DAG on JAFFE
	dvc pull --allow-missing  # the raw data; stage outputs only where the remote has them (else dvc repro computes them)
	@start=$$(date +%s); dvc repro && echo "== dvc repro: $$(( $$(date +%s) - start )) s wall"
	@cat artifacts/aggregate/resnet50_*/stratified/tables.md artifacts/aggregate/resnet50_*/subject/tables.md artifacts/compare/compare.md
	@echo "Report: artifacts/report/report.html   MLflow: make mlflow-ui"

lint: install
	bash scripts/lint.sh

unit: install  ## fast tests only (no real data, no model)
	python -m pytest -q -m "not slow"

test: install lint  ## lint + the whole test suite (unit + integration on ../shared)
	python -m pytest -q

cpu-evidence: install  ## the paper's method on this CPU: fine-tune at 112 px, 1 run x 10 folds x 2 protocols, McNemar vs frozen/baselines (~30 min)
	bash scripts/cpu_evidence.sh

gpu-check: install  ## the paper's fine-tuning protocol on a GPU, timed (scripts/gpu_check.sh; needs the split + weights outputs)
	dvc repro split weights
	bash scripts/gpu_check.sh

readme: install  ## regenerate the README results block from metrics/*.json
	python -m ferpipe.readme

pipeline: install  ## the DAG through Prefect: retries, stage timings, one MLflow parent, results artifact (DASK=host:8786 fans train's folds out)
	python -m pipeline $(if $(DASK),--dask-address $(DASK))

gate: install  ## CI gate: the metrics `make run` just computed against the committed ones (no recomputation)
	python -m pipeline.reproduce --workspace

reproduce: install  ## full reproduction: pull raw data, dvc repro -f, compare with the committed metrics
	python -m pipeline.reproduce --pull

PORT ?= 5001
serve: install  ## REST front door (ferpipe.rest) for the registered champion model on 127.0.0.1:$(PORT) (make serve PORT=8080)
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db} python -m ferpipe.rest --model models:/ferpipe-resnet50@champion --host 127.0.0.1 --port $(PORT)

mlflow-ui: install  ## MLflow UI on http://127.0.0.1:5000 (parent run per pipeline run, child per fold)
	@echo "open http://127.0.0.1:5000/#/experiments/$$(python -c 'from ferpipe import tracking as t; c = t.client(); print(t.experiment_id(c))')?workflowType=machine_learning"
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000
