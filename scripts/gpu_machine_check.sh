#!/usr/bin/env bash
# Before a GPU session, on a CPU: the lent GPU machine's software in a venv of its own, and this tree
# run under it as scripts/gpu_session.sh runs it there (source tree on PYTHONPATH, carried wheels).
#
#   bash scripts/gpu_machine_check.sh           # set up .venv-gpu-machine (~5 GB, a few minutes once), then check
#
# The machine (device tool, KINDS.md): Python 3.12, CUDA torch 2.11.0, Triton 3.6.0, timm, pytest,
# pytest-xdist; no DeepSpeed, pydantic, DALI or xformers (DeepSpeed and pydantic come from .whl/).
# What runs: `gpu_session.sh dry-run` (the carried wheels installed as there, every part's CPU path),
# then the session's test subset in Triton's interpreter, and the sm_90 compile of every kernel with
# this Triton. Not run there, so not here: the tests that need DALI.
# One difference is deliberate: NumPy < 2.4 (the machine has 2.5), because Triton 3.6's interpreter
# reads scalars with int() of a one-element array, which NumPy 2.4 refuses; on the GPU no interpreter runs.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GPU_MACHINE_VENV:-.venv-gpu-machine}
PY312=${PYTHON312:-$(command -v python3.12 || true)}
[ -n "$PY312" ] || { echo "needs Python 3.12 (set PYTHON312=/path/to/python3.12)" >&2; exit 2; }
if [ ! -x "$VENV/bin/python" ]; then
  "$PY312" -m venv "$VENV"
  echo "[gpu-machine] installing torch 2.11.0 (PyPI's CUDA build runs on CPU too), Triton 3.6.0 and the machine's other packages"
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/pip" install -q torch==2.11.0 triton==3.6.0 "numpy<2.4" timm pyyaml tqdm \
    tensorboard matplotlib pillow pytest pytest-xdist pytest-timeout pytest-benchmark \
    psutil py-cpuinfo msgpack ninja einops nvidia-ml-py packaging 2> >(grep -v '^WARNING: Location' >&2)
fi
"$VENV/bin/python" -c 'import torch, triton; print(f"[gpu-machine] torch {torch.__version__}, triton {triton.__version__}")'

SITE=$(mktemp -d)
trap 'rm -rf "$SITE"' EXIT
echo "[gpu-machine] 1/3 gpu_session.sh dry-run"
PYTHON=$VENV/bin/python FASTSSL_SITE=$SITE FASTSSL_SESSION_LOGS=$SITE/logs bash scripts/gpu_session.sh dry-run
rm -f bench/results/*-cpu-*-smoke.*  # the dry-run's smoke results: nothing to keep

export PYTHONPATH="$PWD:$SITE"
TESTS=$(sed -n 's/^TEST_PATHS="\(.*\)"$/\1/p' scripts/gpu_session.sh)
echo "[gpu-machine] 2/3 the session's tests ($TESTS), interpreted"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -n 2 --dist loadfile $TESTS --ignore=tests/ops/test_kernel_aot.py
echo "[gpu-machine] 3/3 every kernel compiled for sm_90 by this Triton"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/ops/test_kernel_aot.py
