#!/usr/bin/env bash
# Set up and run lorakit's main job on its embedded default: LoRA on all-MiniLM-L6-v2 (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh demo
. .venv/bin/activate
export HF_HUB_OFFLINE=1
exec lorakit "$@"
