#!/usr/bin/env bash
# Packs what scripts/gpu_check.sh needs into .gpu_bundle/ (< 64 MiB): the ImageNet weights
# as fp16 safetensors (upcast to fp32 on load), the ingested images + manifest, the split
# plan, and the provenance (git commit, params hash, data.dvc md5). For GPU machines that
# get a size-limited copy of the working tree; on a full checkout gpu_check.sh reads the
# DVC outputs directly. Needs `dvc repro split weights` first.
set -euo pipefail
cd "$(dirname "$0")/.."
B=.gpu_bundle
rm -rf "$B" && mkdir -p "$B/ingest"
PY=${PYTHON:-.venv/bin/python}
"$PY" - <<'PY'
from safetensors.torch import load_file, save_file
sd = load_file("models/resnet50_imagenet.safetensors")
save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, ".gpu_bundle/resnet50_fp16.safetensors")
PY
cp artifacts/ingest/manifest.csv "$B/ingest/"
# gray images as 1-channel PNG (ingest writes gray replicated to 3 channels): 3x smaller,
# decoded to the same RGB tensor by data.load_images_uint8
"$PY" - <<'PY'
from pathlib import Path
from PIL import Image
import numpy as np
src, dst = Path("artifacts/ingest/images"), Path(".gpu_bundle/ingest/images")
dst.mkdir()
for f in sorted(src.iterdir()):
    a = np.asarray(Image.open(f).convert("RGB"))
    gray = (a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all()
    (Image.fromarray(a[..., 0]) if gray else Image.fromarray(a)).save(dst / f.name, optimize=True)
PY
gzip -c artifacts/split/split_plan.csv > "$B/split_plan.csv.gz"
cat > "$B/provenance.json" <<JSON
{"git_commit": "$(git rev-parse HEAD)", "git_dirty": $([ -z "$(git status --porcelain --untracked-files=no)" ] && echo false || echo true),
 "params_sha256": "$(sha256sum params.yaml | cut -c1-16)", "data_dvc_md5": "$(grep -m1 'md5:' data.dvc | awk '{print $NF}')"}
JSON
du -sh "$B"
