#!/usr/bin/env bash
# README command 2: set everything up, then run the whole test suite (CPU; Triton in its interpreter).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Two workers, one test file each at a time (--dist loadfile: a file's fixtures and its 2-rank runs stay
# together); every test process runs one thread (tests/conftest.py), so two workers fill two cores.
exec .venv/bin/python -m pytest -n 2 --dist loadfile tests "$@"
