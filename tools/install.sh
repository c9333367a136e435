#!/usr/bin/env bash
# Install everything into a virtual environment (default: .venv at the repository root).
#   bash tools/install.sh [VENV_DIR]
# Uses uv (installed into the venv from PyPI) for fast parallel installs; its download cache makes
# later installs on the same machine quick. fastreid==1.4.0 goes in with --no-deps because its
# metadata pins torch==1.13.1 / torchvision==0.14.1, which have no Python 3.11 builds.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "uv>=0.4"
UV="$VENV/bin/uv"
"$UV" pip install --python "$VENV/bin/python" -r "$ROOT/requirements.txt"
"$UV" pip install --python "$VENV/bin/python" --no-deps "fastreid==1.4.0"
"$UV" pip install --python "$VENV/bin/python" --no-deps -e "$ROOT"
echo "installed into $VENV in $(( $(date +%s) - start )) s"
