#!/usr/bin/env bash
# What a session with a lent GPU runs. The device machine has CUDA torch, triton, timm and torchvision but
# no DeepSpeed, DALI or xformers: every part below runs without them (tests/test_gpu_machine_imports.py
# checks that nothing on these paths imports them). Each part fits one device call (< 10 minutes):
#   bash scripts/gpu_session.sh tests        # CUDA correctness: ops, kernels, packed ViT (tests/ops, tests/models)
#   bash scripts/gpu_session.sh contrastive  # bench/contrastive.py --quick
#   bash scripts/gpu_session.sh tokens       # bench/tokens.py --quick
#   bash scripts/gpu_session.sh attention    # bench/attention.py --quick
#   bash scripts/gpu_session.sh throughput   # bench/throughput.py --quick (SimCLR/DCL step images/s, MFU)
# Results go to bench/results/ and, when $OUT is set (the device tool), are copied there too.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
# fastssl.kernels is the top-level kernels/ folder, mapped by setup.py: an editable install is needed
# (--no-deps: it must not try to pull DeepSpeed, DALI or xformers onto the machine).
python -c 'import fastssl.kernels' 2>/dev/null || python -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python - <<'PY'
import importlib.util as u
import torch, triton
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}, "
      f"device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'NONE: the CUDA paths below will not run'}")
missing = {
    "deepspeed": "training (fastssl/train.py, tests/engine): not run here",
    "nvidia.dali": "data pipelines (tests/data, the train loop): not run here",
    "xformers": "attention uses torch varlen / SDPA instead; the xformers backend case is skipped",
}
for name, what in missing.items():
    try:
        found = u.find_spec(name) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        print(f"without {name}: {what}")
PY
case "${1:-tests}" in
  # test_kernel_aot.py is the CPU machines' stand-in for a GPU compile (~5 CPU-minutes); here every
  # kernel test compiles and launches on the device itself, so it is left to the CPU runs.
  tests) python -m pytest tests/ops tests/models -q -x -p no:cacheprovider --ignore=tests/ops/test_kernel_aot.py ;;
  contrastive|tokens|attention|throughput) python "bench/$1.py" --quick ;;
  *) echo "unknown part: $1 (tests | contrastive | tokens | attention | throughput)" >&2; exit 2 ;;
esac
if [ -n "${OUT:-}" ]; then cp bench/results/*.json bench/results/*.png "$OUT"/ 2>/dev/null || true; fi
