#!/usr/bin/env bash
# Create (or refresh) the project's one virtual environment in .venv from requirements.lock.
# Idempotent: re-installs only when the lock file changed. Needs Python 3.11 (bpy 5.0.1 requires it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PARALLAX_PYTHON:-}
if [ -z "$PYTHON" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PYTHON=$cand; break
    fi
  done
fi
[ -n "$PYTHON" ] || { echo "env.sh: Python 3.11 is required (set PARALLAX_PYTHON)" >&2; exit 1; }
stamp=.venv/.lock-sha
want=$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.lock
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
echo "$want" > "$stamp"
echo "env.sh: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
