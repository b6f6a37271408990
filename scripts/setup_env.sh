#!/usr/bin/env bash
# Creates/updates the project venv (.venv) from the pinned lock file.
# uv is used because pip needs minutes for this stack; this machine's local wheel
# indexes are added only when they exist, so the same script works anywhere with PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if ! command -v uv >/dev/null 2>&1; then
  "$PY" -m pip install --quiet --disable-pip-version-check uv
fi
UV=$(command -v uv || echo "$PY -m uv")

extra=()
for idx in /opt/pypi/simple /opt/pypi-more/simple; do
  [ -d "$idx" ] && extra+=(--extra-index-url "file://$idx")
done
[ -d /opt/wheels ] && extra+=(--find-links /opt/wheels)

stamp=.venv/.lock.sha256
want=$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0  # already in sync with the lock file
fi
[ -x .venv/bin/python ] || $UV venv --quiet --python "$PY" .venv
# PYTHONDONTWRITEBYTECODE may be set: compile at install so imports stay fast.
$UV pip install --quiet --python .venv/bin/python --compile-bytecode \
  --index-strategy unsafe-best-match "${extra[@]}" -r requirements.lock
$UV pip install --quiet --python .venv/bin/python --no-deps --compile-bytecode -e .
echo "$want" > "$stamp"
