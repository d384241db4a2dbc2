#!/usr/bin/env bash
# One GPU session in one command, on a bare GPU machine: CUDA torch, triton, timm, pytest, pytest-xdist,
# numpy, matplotlib, tensorboard; no DeepSpeed, DALI, xformers or pydantic, no package index, no install.
#
#   bash scripts/gpu_session.sh all             # tests, the kernel benches' --quick sweeps, the trainer rows (<= 9 min)
#   bash scripts/gpu_session.sh train           # only the trainer rows (bench/train.py --quick)
#   bash scripts/gpu_session.sh tests train     # any parts, in the order given
#   bash scripts/gpu_session.sh dry-run [parts] # CPU: print the plan, then run each part's smoke path
#
# Parts and their time caps (seconds; each part runs under its own `timeout`, so one that hangs or runs
# long costs only its cap; results written before the cap are kept):
#   tests        CAP_TESTS=80         pytest -n 8: tests/ops tests/models (without the AOT compile check) + the trainer on CUDA
#   contrastive  CAP_CONTRASTIVE=75   bench/contrastive.py --quick
#   tokens       CAP_TOKENS=50        bench/tokens.py --quick
#   attention    CAP_ATTENTION=60     bench/attention.py --quick
#   throughput   CAP_THROUGHPUT=90    bench/throughput.py --quick (model-only step; not in `all`)
#   train        CAP_TRAIN=90         bench/train.py --quick --no-bare: fastssl/train.py per method on data.synthetic,
#                                     the rows in one child process (~15 s start-up, then ~10-15 s per eager row)
#                                     (TRAIN_ROW_CAP=120 per row; TRAIN_ARGS adds bench/train.py options, e.g.
#                                     "--bare" for the trainer-overhead column, "--profile 3", "--methods simclr")
# `all` = tests contrastive tokens attention train: 355 s of caps + ~20 s set-up.
#
# Set-up: the carried wheels in $FASTSSL_WHEELS (default .whl/: pydantic, pydantic-core cp312,
# annotated-types, typing-inspection, hjson, DeepSpeed's source archive) install into /tmp/site with
# --no-index --no-deps --no-build-isolation (DS_BUILD_OPS=0: no CUDA extension is built); the code runs
# from this source tree through PYTHONPATH (fastssl.kernels resolves from it, see fastssl/__init__.py).
# Output: bench/results/ as usual; with $OUT set (the device tool), at most 8 files go there: the
# session log, the trainer's JSON + PNG, and one tar of every JSON, PNG and part log of this session.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
export PYTHONUNBUFFERED=1
SITE=${FASTSSL_SITE:-/tmp/site}
WHEELS=${FASTSSL_WHEELS:-$REPO/.whl}
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
command -v "$PY" >/dev/null || PY=python3

DRY=0
PARTS=()
for a in "$@"; do
  case "$a" in
    dry-run) DRY=1 ;;
    all) PARTS+=(tests contrastive tokens attention train) ;;
    tests|contrastive|tokens|attention|throughput|train) PARTS+=("$a") ;;
    *) echo "unknown part: $a (all | dry-run | tests | contrastive | tokens | attention | throughput | train)" >&2; exit 2 ;;
  esac
done
[ ${#PARTS[@]} -eq 0 ] && PARTS=(tests contrastive tokens attention train)

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
LOGS=$REPO/bench/results/session-$STAMP
mkdir -p "$LOGS"
SESSION_LOG=$LOGS/session.log
exec > >(tee -a "$SESSION_LOG") 2>&1
START=$(date +%s)
say() { echo "[gpu_session +$(( $(date +%s) - START ))s] $*"; }

# ---- set-up: carried wheels, environment ----------------------------------------------------------
install_wheels() {
  if [ "$DRY" != 1 ] && "$PY" -c 'import deepspeed, pydantic, hjson' 2>/dev/null; then
    say "deepspeed and pydantic import already: nothing to install"
    return
  fi
  if [ ! -d "$WHEELS" ]; then
    say "no wheels folder $WHEELS: the trainer part needs deepspeed and pydantic (carry .whl/)"
    return
  fi
  mkdir -p "$SITE"
  say "installing $(ls "$WHEELS" | wc -l) carried files from $WHEELS into $SITE (no index, no deps)"
  if ! "$PY" -m pip --version >/dev/null 2>&1; then  # no pip: a wheel is a zip to unpack; DeepSpeed's archive needs pip
    for f in "$WHEELS"/*.whl; do "$PY" -m zipfile -e "$f" "$SITE" && say "unpacked $(basename "$f")"; done
    say "no pip on this machine: DeepSpeed's source archive cannot be built, the train part will record that"
    return
  fi
  local t0=$(date +%s)
  # All at once (one pip start); if one file does not fit this Python (pydantic-core is cp312), one by one.
  if ! DS_BUILD_OPS=0 timeout 180 "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" "$WHEELS"/* 2>"$LOGS/pip.err"; then
    for f in "$WHEELS"/*; do
      DS_BUILD_OPS=0 timeout 180 "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" "$f" 2>>"$LOGS/pip.err" \
        || say "could not install $(basename "$f") (see pip.err)"
    done
  fi
  say "installed in $(( $(date +%s) - t0 )) s"
}

environment() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
  "$PY" - <<'PY'
import importlib.util as u
import torch, triton
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}, "
      f"device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'NONE: the CUDA paths will not run'}")
for name in ("deepspeed", "pydantic", "nvidia.dali", "xformers", "xdist"):
    try:
        spec = u.find_spec(name)
    except ModuleNotFoundError:
        spec = None
    print(f"  {name:12s} {'found at ' + str(spec.origin) if spec else 'absent'}")
PY
}

# ---- the parts ------------------------------------------------------------------------------------
cap_of() { case "$1" in
  tests) echo "${CAP_TESTS:-80}" ;; contrastive) echo "${CAP_CONTRASTIVE:-75}" ;; tokens) echo "${CAP_TOKENS:-50}" ;;
  attention) echo "${CAP_ATTENTION:-60}" ;; throughput) echo "${CAP_THROUGHPUT:-90}" ;; train) echo "${CAP_TRAIN:-90}" ;;
esac; }

XDIST=""
"$PY" -c 'import xdist' 2>/dev/null && XDIST="-n ${TEST_WORKERS:-8}"
# pytest.ini asks for pytest-timeout (--timeout); without the plugin that option is an error, so drop it.
PYTEST_OPTS=""
"$PY" -c 'import pytest_timeout' 2>/dev/null || PYTEST_OPTS="-o addopts=-ra"
# tests/ops/test_kernel_aot.py is the CPU machines' stand-in for a GPU compile: every kernel compiles
# and launches on the device itself here. tests/data/test_synthetic.py runs the trainer on CUDA.
TEST_PATHS="tests/ops tests/models tests/data/test_synthetic.py"

command_of() {  # the command of a part; $1 part, $2 "smoke" for the dry-run's CPU path
  local smoke=${2:-}
  case "$1" in
    tests)
      if [ -n "$smoke" ]; then echo "$PY -m pytest $PYTEST_OPTS -q -p no:cacheprovider --collect-only $TEST_PATHS --ignore=tests/ops/test_kernel_aot.py"
      else echo "$PY -m pytest $PYTEST_OPTS -q -p no:cacheprovider $XDIST --maxfail=30 $TEST_PATHS --ignore=tests/ops/test_kernel_aot.py -rfE"; fi ;;
    contrastive|tokens|attention|throughput)
      if [ -n "$smoke" ]; then echo "$PY bench/$1.py --smoke"; else echo "$PY bench/$1.py --quick"; fi ;;
    train)
      local budget=$(( $(cap_of train) - 8 ))  # the sweep stops itself first: its table and PNG get written
      if [ -n "$smoke" ]; then echo "$PY bench/train.py --smoke --methods simclr,mae --variants eager --budget $budget ${TRAIN_ARGS:-}"
      else echo "$PY bench/train.py --quick --no-bare --budget $budget ${TRAIN_ARGS:-}"; fi ;;
  esac
}

run_part() {  # $1 part, $2 "smoke" or empty
  local part=$1 cap cmd rc t0
  cap=$(cap_of "$part")
  [ -n "${2:-}" ] && cap=${DRY_CAP:-600}  # the smoke paths run on a (shared) CPU: GPU caps do not apply
  cmd=$(command_of "$part" "${2:-}")
  say "part $part (cap ${cap} s): $cmd"
  t0=$(date +%s)
  # timeout signals the part's whole process group (a bench's child processes too); --kill-after: a
  # part that ignores SIGTERM is killed 10 s later.
  timeout --kill-after=10 "$cap" bash -c "$cmd" >"$LOGS/$part.log" 2>&1
  rc=$?
  tail -n 40 "$LOGS/$part.log"
  case $rc in
    0) say "part $part done in $(( $(date +%s) - t0 )) s" ;;
    124|137) say "part $part STOPPED at its cap of ${cap} s (partial results kept)" ;;
    *) say "part $part FAILED (exit $rc) after $(( $(date +%s) - t0 )) s" ;;
  esac
}

collect() {  # this session's results into $LOGS, and at most 8 files into $OUT
  find bench/results -maxdepth 1 -type f \( -name '*.json' -o -name '*.png' \) -newer "$LOGS/.start" -exec cp {} "$LOGS"/ \; 2>/dev/null
  if [ -n "${OUT:-}" ]; then
    tar -czf "$OUT/gpu-session-$STAMP.tar.gz" -C "$(dirname "$LOGS")" "$(basename "$LOGS")"
    cp "$SESSION_LOG" "$OUT/session.log"
    for f in "$LOGS"/train-*.json "$LOGS"/train-*.png; do [ -f "$f" ] && cp "$f" "$OUT/"; done
    say "copied $(ls "$OUT" | wc -l) files to \$OUT"
  fi
}

touch "$LOGS/.start"
say "parts: ${PARTS[*]} (dry-run: $DRY); logs and results: $LOGS"
if [ "$DRY" = 1 ]; then
  say "plan on the GPU machine (caps in seconds):"
  total=30
  for p in "${PARTS[@]}"; do
    echo "    $(printf '%-12s' "$p") cap $(printf '%4s' "$(cap_of "$p")")  $(command_of "$p")"
    total=$(( total + $(cap_of "$p") ))
  done
  say "at most ~${total} s with ~30 s of set-up (the device allows 540 s per command)"
fi
install_wheels
environment
for p in "${PARTS[@]}"; do
  if [ "$DRY" = 1 ]; then run_part "$p" smoke; else run_part "$p"; fi
done
collect
say "session done in $(( $(date +%s) - START )) s; logs in $LOGS"
