#!/usr/bin/env bash
# Set up and run lorakit's main job on its default: all-MiniLM-L6-v2 on Rotten Tomatoes, probe / LoRA / full (README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh demo
. .venv/bin/activate
export HF_HUB_OFFLINE=1
exec lorakit "$@"
