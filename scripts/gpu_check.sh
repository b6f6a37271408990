#!/usr/bin/env bash
# The paper's protocol (fine-tuned ResNet-50, 224 px, 10 runs x 10 folds x 2 protocols) on
# one GPU, in <= 8 minutes: phase 1 compares candidate fine-tuning recipes on the
# validation groups of stratified run 1 (<= 120 s), phase 2 runs the protocol with the
# best (no new fold after 240 s; only complete runs are reported). Prints images/s, GPU
# utilisation, wall time and OA; writes metrics/paper.json (or $OUT/paper.json) with
# provenance. Uses .gpu_bundle/ when present (scripts/gpu_bundle.sh: fp16 weights, images,
# plan, < 64 MiB), else the DVC outputs of `dvc repro split weights`.
#   bash scripts/gpu_check.sh [more gpu_check.py flags, e.g. --workers 8 --budget-s 300]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
args=(--workers 12 --budget-s 240 --recipe-budget-s 120
      --recipe "sgd:"                                   # params.yaml's recipe (SGD 1e-3, clip 1, BN adapt, probe head)
      --recipe "sgd_lr3e-3:lr=0.003"
      --recipe "sgd_ls0.1:label_smoothing=0.1"
      --recipe "bn_train_random_head:bn=train,head_init=random"
      --recipe "adamw:optimizer=adamw,lr=0.0001,body_lr_mult=0.1"
      --recipe "freeze2_lr3e-3:freeze_stages=2,lr=0.003")
if [ -d .gpu_bundle ]; then
  args+=(--manifest .gpu_bundle/ingest/manifest.csv --plan .gpu_bundle/split_plan.csv.gz
         --weights .gpu_bundle/resnet50_fp16.safetensors --provenance .gpu_bundle/provenance.json)
fi
if [ -n "${OUT:-}" ]; then
  args+=(--metrics "$OUT/paper.json" --out /tmp/gpu_check)
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
start=$(date +%s)
"$PY" scripts/gpu_check.py --params params.yaml profiles/paper.yaml "${args[@]}" "$@"
echo "gpu_check.sh: total $(( $(date +%s) - start )) s"
if [ -n "${OUT:-}" ]; then cp /tmp/gpu_check/folds.tar.gz /tmp/gpu_check/recipes.json "$OUT/" 2>/dev/null || true; fi
