#!/usr/bin/env bash
# Set up and run the whole test suite (lint first). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh test
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export LORAKIT_TEST_POSTGRES_URL="$(bash scripts/postgres.sh || true)"  # sweep tests: no server, they skip saying why
ruff check .
python -m pytest -q -p no:cacheprovider "$@"
