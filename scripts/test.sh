#!/usr/bin/env bash
# README command 2: set everything up, then run the whole test suite (CPU; Triton in its interpreter).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest tests "$@"
