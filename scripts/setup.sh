#!/usr/bin/env bash
# Sets up everything fastssl needs, idempotently: the Fashion-MNIST Debian package, a virtual
# environment in .venv, torch pinned so nothing pulls a second (CUDA) build, then fastssl itself.
# A second run with an unchanged setup.py only checks and returns.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${FASTSSL_VENV:-.venv}
PY=${PYTHON:-python3}

# 1. Embedded data set (a Debian package; the trainer turns it into image folders itself).
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "[setup] installing Debian package dataset-fashion-mnist"
  $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null
fi

# 2. Which torch: one that already imports with CUDA (a GPU machine's) is kept and the venv sees it;
#    otherwise the CPU wheel 2.13.0 (pip finds it locally on these machines) goes into the venv.
SYS_TORCH=$($PY -c 'import torch; print(torch.__version__ if torch.cuda.is_available() else "")' 2>/dev/null || true)
if [ ! -x "$VENV/bin/python" ]; then
  if [ -n "$SYS_TORCH" ]; then $PY -m venv --system-site-packages "$VENV"; else $PY -m venv "$VENV"; fi
fi
VPY="$VENV/bin/python"
STAMP="$VENV/.fastssl-setup-stamp"
WANT=$(cat setup.py scripts/setup.sh | sha1sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
# pip as configured on some machines warns once per missing local index entry; keep the log readable.
pip_install() { "$VPY" -m pip install -q "$@" 2> >(grep -v '^WARNING: Location' >&2); }
if ! "$VPY" -c 'import torch' 2>/dev/null; then
  echo "[setup] installing torch 2.13.0 (CPU build)"
  pip_install "torch==2.13.0"
fi

# 3. Constraints: pin torch, and torch's paired torchvision/triton, to what is (or will be) there.
CONS="$VENV/constraints.txt"
"$VPY" - "$CONS" <<'PYEOF'
import importlib.metadata as md, sys
pairs = {"2.13": {"torchvision": "0.28.0", "triton": "3.7.1"}}
torch_v = md.version("torch")
lines = [f"torch=={torch_v}"]
for pkg, default in pairs.get(".".join(torch_v.split(".")[:2]), {}).items():
    try:
        lines.append(f"{pkg}=={md.version(pkg)}")
    except md.PackageNotFoundError:
        lines.append(f"{pkg}=={default}")
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PYEOF
echo "[setup] installing fastssl and its dependencies (constraints: $(tr '\n' ' ' < "$CONS"))"
pip_install -c "$CONS" -e ".[test]"
# 4. The lent GPU machine's Triton (it runs CUDA torch 2.11 with Triton 3.6.0), in a folder beside the
#    venv's own: tests/ops/test_kernel_aot.py compiles every kernel for sm_90 with it too, since a kernel
#    the venv's Triton compiles can still fail there. Not imported by anything else.
GPU_TRITON=3.6.0
if [ ! -d "$VENV/gpu-triton/triton-$GPU_TRITON.dist-info" ]; then
  echo "[setup] installing Triton $GPU_TRITON (the GPU machine's) into $VENV/gpu-triton for the sm_90 compile test"
  rm -rf "$VENV/gpu-triton"
  pip_install --no-deps --target "$VENV/gpu-triton" "triton==$GPU_TRITON"
fi
echo "$WANT" > "$STAMP"
echo "[setup] done: $VENV"
