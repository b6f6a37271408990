#!/usr/bin/env bash
# CPU evidence for the paper's method: fine-tunes ResNet-50 with profiles/cpu_finetune.yaml
# (112 px, 1 run x 10 folds, both protocols) and tests it against the frozen head and the
# baselines on the very same folds (McNemar's exact test, ferpipe.evidence). Writes
# metrics/cpu_finetune.json (with provenance) and refreshes the README results block.
# Resumable: folds already finished in artifacts/cpu_finetune with the same config are kept.
#   bash scripts/cpu_evidence.sh        (or: make cpu-evidence)
set -euo pipefail
cd "$(dirname "$0")/.."
out=artifacts/cpu_finetune
# the folds to compare with come from `make run` (artifacts/train, artifacts/baselines)
start=$(date +%s)
python -m ferpipe.train --params params.yaml profiles/cpu_finetune.yaml --out "$out"
echo "== cpu_evidence: fine-tuning $(( $(date +%s) - start )) s wall"
python -m ferpipe.evidence --finetune "$out/resnet50_finetune" --record "$out" \
  --compare-with artifacts/train/resnet50_spatial artifacts/train/resnet50_gap artifacts/baselines/nn_pixels \
    artifacts/baselines/hwt artifacts/baselines/cso artifacts/baselines/bbo \
  --out metrics/cpu_finetune.json
python -m ferpipe.readme
