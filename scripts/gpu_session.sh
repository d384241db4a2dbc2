#!/usr/bin/env bash
# What a session with a lent GPU runs (the device machine has torch + CUDA, triton, timm; no
# DeepSpeed, DALI or xformers). Each part fits one device call (< 10 minutes):
#   bash scripts/gpu_session.sh tests        # CUDA correctness: ops, kernels, packed ViT
#   bash scripts/gpu_session.sh contrastive  # bench/contrastive.py --quick
#   bash scripts/gpu_session.sh tokens       # bench/tokens.py --quick
#   bash scripts/gpu_session.sh attention    # bench/attention.py --quick
#   bash scripts/gpu_session.sh throughput   # bench/throughput.py --quick (SimCLR/DCL step images/s, MFU)
# Results go to bench/results/ and, when $OUT is set (the device tool), are copied there too.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
# fastssl.kernels is the top-level kernels/ folder, mapped by setup.py: an editable install is needed.
python -c 'import fastssl.kernels' 2>/dev/null || python -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
case "${1:-tests}" in
  tests) python -m pytest tests/ops tests/models -q -x -p no:cacheprovider ;;
  contrastive|tokens|attention|throughput) python "bench/$1.py" --quick ;;
  *) echo "unknown part: $1" >&2; exit 2 ;;
esac
if [ -n "${OUT:-}" ]; then cp bench/results/*.json bench/results/*.png "$OUT"/ 2>/dev/null || true; fi
