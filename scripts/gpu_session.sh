#!/usr/bin/env bash
# One GPU session in one command, on a bare GPU machine: CUDA torch, triton, timm, pytest, pytest-xdist,
# numpy, matplotlib, tensorboard; no DeepSpeed, DALI, xformers or pydantic, no package index, no install.
#
#   bash scripts/gpu_session.sh all             # tests, the kernel benches' --quick sweeps, the trainer rows (<= 530 s)
#   bash scripts/gpu_session.sh train           # only the trainer rows (bench/train.py --quick)
#   bash scripts/gpu_session.sh tests train     # any parts, in the order given
#   bash scripts/gpu_session.sh plan [parts]    # print the plan and its caps; run nothing
#   bash scripts/gpu_session.sh dry-run [parts] # CPU: the plan, the trainer rows' plan, then each part's smoke path
#
# Time: the whole session ends within SESSION_CAP=530 s (the device allows 9 minutes per command, the
# machine's start-up not counted). Every part runs under its own `timeout` (results written before it are
# kept; the benches write their JSON after every case or row), and no part's cap reaches past the
# session's end less COLLECT_S=15 s. Caps (seconds, overridable):
#   set-up       SETUP_CAP=60         install the carried wheels (~12 s on the H200 machine)
#   tests        CAP_TESTS=100        pytest -n 16: the amp, channels-last and no-sync levers' engine tests, synthetic data + the CLI on CUDA,
#                                     tests/models, tests/ops (without the AOT compile check)
#   contrastive  CAP_CONTRASTIVE=50   bench/contrastive.py --quick (33 s complete on the H200; + the triton[jit] rows)
#   tokens       CAP_TOKENS=55        bench/tokens.py --quick (39 s complete; + the triton_jit rows at B = 256)
#   attention    CAP_ATTENTION=60     bench/attention.py --quick (packed and padded rows of all cases in 50 s)
#   throughput   CAP_THROUGHPUT=90    bench/throughput.py --quick (model-only step; not in `all`)
#   masked       CAP_MASKED=150       bench/throughput.py --mae: MAE / CAN / DAC steps, ViT-B/16 bf16, the eager
#                                     reference vs fastssl vs compile (issue 22's step rows; not in `all`: a
#                                     second call right after `all`, `SESSION_CAP=330 bash scripts/gpu_session.sh masked throughput`)
#   train        CAP_TRAIN=rest       bench/train.py --quick: the rest of the session (~230 s when the parts before
#                                     it run to their caps), TRAIN_ROW_CAP=75 per row, TRAIN_ARGS adds options
#                                     (e.g. "--profile 3", "--no-bare"); rows in bench/train_plan.py's quick_rows order
# `all` = tests contrastive tokens attention train.
#
# Set-up: the carried wheels in $FASTSSL_WHEELS (default .whl/: pydantic, pydantic-core cp312,
# annotated-types, typing-inspection, hjson, deepspeed) install into /tmp/site with --no-index --no-deps
# --no-build-isolation (DS_BUILD_OPS=0: no CUDA extension is built); the code runs from this source tree
# through PYTHONPATH (fastssl.kernels resolves from it, see fastssl/__init__.py).
# Output: bench/results/ as usual, the part logs in bench/results/session-<UTC time>/ (FASTSSL_SESSION_LOGS:
# another folder for them); with $OUT set (the device tool), at most 8 files go there, refreshed
# after every part: the session log, the trainer's JSON + PNG, and one tar of every JSON, PNG and part
# log of this session.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
export PYTHONUNBUFFERED=1
SITE=${FASTSSL_SITE:-/tmp/site}
WHEELS=${FASTSSL_WHEELS:-$REPO/.whl}
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
command -v "$PY" >/dev/null || PY=python3
SESSION_CAP=${SESSION_CAP:-530}
SETUP_CAP=${SETUP_CAP:-60}
COLLECT_S=${COLLECT_S:-15}
KILL_AFTER=10
START=$(date +%s)

MODE=run
PARTS=()
for a in "$@"; do
  case "$a" in
    dry-run) MODE=dry ;;
    plan) MODE=plan ;;
    all) PARTS+=(tests contrastive tokens attention train) ;;
    tests|contrastive|tokens|attention|throughput|masked|train) PARTS+=("$a") ;;
    *) echo "unknown part: $a (all | plan | dry-run | tests | contrastive | tokens | attention | throughput | masked | train)" >&2; exit 2 ;;
  esac
done
[ ${#PARTS[@]} -eq 0 ] && PARTS=(tests contrastive tokens attention train)

# ---- the parts ------------------------------------------------------------------------------------
own_cap() { case "$1" in  # a part's own cap; train's is the rest of the session unless CAP_TRAIN says
  tests) echo "${CAP_TESTS:-100}" ;; contrastive) echo "${CAP_CONTRASTIVE:-50}" ;; tokens) echo "${CAP_TOKENS:-55}" ;;
  attention) echo "${CAP_ATTENTION:-60}" ;; throughput) echo "${CAP_THROUGHPUT:-90}" ;; masked) echo "${CAP_MASKED:-150}" ;;
  train) echo "${CAP_TRAIN:-$SESSION_CAP}" ;;
esac; }

left() { echo $(( START + SESSION_CAP - COLLECT_S - $(date +%s) )); }  # seconds a part may still take

cap_now() {  # a part's cap from now: its own, cut at the session's end (less the kill grace); 0: no time
  local c l
  c=$(own_cap "$1"); l=$(( $(left) - KILL_AFTER ))
  [ "$l" -lt 5 ] && l=0
  [ "$c" -gt "$l" ] && c=$l
  echo "$c"
}

XDIST=""
"$PY" -c 'import xdist' 2>/dev/null && XDIST="-n ${TEST_WORKERS:-16}"
# pytest.ini asks for pytest-timeout (--timeout); without the plugin that option is an error, so drop it.
PYTEST_OPTS=""
"$PY" -c 'import pytest_timeout' 2>/dev/null || PYTEST_OPTS="-o addopts=-ra"
# In priority order (xdist hands out tests in collection order): the amp lever on the GPU (DeepSpeed's
# torch_autocast over fused AdamW), the trainer on CUDA (tests/data/test_synthetic.py), the models
# (tests/models/test_resnet.py held a CUDA-only failure), the ops. tests/ops/test_kernel_aot.py is the CPU
# machines' stand-in for a GPU compile: every kernel compiles and launches on the device itself here.
TEST_PATHS="tests/engine/test_amp.py tests/engine/test_layout.py tests/engine/test_step_levers.py tests/methods/test_step_host_syncs.py tests/data/test_synthetic.py tests/models tests/ops"

command_of() {  # the command of a part; $1 part, $2 its cap, $3 "smoke" for the dry-run's CPU path
  local cap=$2 smoke=${3:-}
  case "$1" in
    tests)
      if [ -n "$smoke" ]; then echo "$PY -m pytest $PYTEST_OPTS -q -p no:cacheprovider --collect-only $TEST_PATHS --ignore=tests/ops/test_kernel_aot.py"
      else echo "$PY -m pytest $PYTEST_OPTS -q -p no:cacheprovider $XDIST --maxfail=30 $TEST_PATHS --ignore=tests/ops/test_kernel_aot.py -rfE"; fi ;;
    contrastive|tokens|attention|throughput)
      if [ -n "$smoke" ]; then echo "$PY bench/$1.py --smoke"; else echo "$PY bench/$1.py --quick"; fi ;;
    masked)
      if [ -n "$smoke" ]; then echo "$PY bench/throughput.py --mae --smoke"; else echo "$PY bench/throughput.py --mae"; fi ;;
    train)
      local budget=$(( cap - 8 ))  # the sweep stops itself first: its table and PNG get written
      # (the smoke rows in bf16 on the CPU: both engine.amp paths through the trainer)
      if [ -n "$smoke" ]; then echo "$PY bench/train.py --smoke --methods simclr,mae --variants eager --precision bf16 --amp autocast,deepspeed --budget $budget ${TRAIN_ARGS:-}"
      else echo "$PY bench/train.py --quick --budget $budget --row-timeout ${TRAIN_ROW_CAP:-75} ${TRAIN_ARGS:-}"; fi ;;
  esac
}

show_plan() {  # the caps on the GPU machine, worst case: every part runs to its cap
  local fixed=0 p c train_min
  echo "plan on the GPU machine (session cap ${SESSION_CAP} s; caps in seconds):"
  printf '    %-12s cap %4s  %s\n' set-up "$SETUP_CAP" "pip install of the carried wheels + the environment"
  for p in "${PARTS[@]}"; do
    [ "$p" = train ] && continue
    c=$(own_cap "$p"); fixed=$(( fixed + c ))
    printf '    %-12s cap %4s  %s\n' "$p" "$c" "$(command_of "$p" "$c")"
  done
  if [[ " ${PARTS[*]} " == *" train "* ]]; then
    c=$(( SESSION_CAP - COLLECT_S - SETUP_CAP - fixed ))  # when every part before it runs to its cap
    [ -n "${CAP_TRAIN:-}" ] && [ "$CAP_TRAIN" -lt "$c" ] && c=$CAP_TRAIN
    train_min=$(( c - KILL_AFTER * (${#PARTS[@]} - 1) ))  # ... and each of them also to its kill grace
    printf '    %-12s cap %4s  %s\n' train "$c" "$(command_of train "$c")"
    [ -z "${CAP_TRAIN:-}" ] && echo "    (train takes the rest of the session: ${train_min} s at worst (every part before it killed at its cap" \
      "+ ${KILL_AFTER} s), ~$(( c + SETUP_CAP - 20 )) s with the ~20 s set-up measured on the H200 machine, more when parts end early)"
    fixed=$(( fixed + c ))
  fi
  local total=$(( SETUP_CAP + fixed + COLLECT_S ))
  if [ "$total" -le "$SESSION_CAP" ]; then
    echo "    total: set-up ${SETUP_CAP} + parts $fixed + collect ${COLLECT_S} = $total s <= ${SESSION_CAP} s (9 min = 540 s)"
  else  # the caps are cut at the session's end at run time: the last part gets what is left
    echo "    total: set-up ${SETUP_CAP} + parts $fixed + collect ${COLLECT_S} = $total s > ${SESSION_CAP} s: the last part is cut to what is left"
  fi
}

if [ "$MODE" = plan ]; then
  show_plan
  exit 0
fi

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
LOGS=${FASTSSL_SESSION_LOGS:-$REPO/bench/results}/session-$STAMP
mkdir -p "$LOGS"
SESSION_LOG=$LOGS/session.log
exec > >(tee -a "$SESSION_LOG") 2>&1
say() { echo "[gpu_session +$(( $(date +%s) - START ))s] $*"; }

# ---- set-up: carried wheels, environment ----------------------------------------------------------
install_wheels() {
  if [ "$MODE" != dry ] && "$PY" -c 'import deepspeed, pydantic, hjson' 2>/dev/null; then
    say "deepspeed and pydantic import already: nothing to install"
    return
  fi
  if [ ! -d "$WHEELS" ]; then
    say "no wheels folder $WHEELS: the trainer part needs deepspeed and pydantic (carry .whl/)"
    return
  fi
  mkdir -p "$SITE"
  say "installing $(ls "$WHEELS" | wc -l) carried files from $WHEELS into $SITE (no index, no deps)"
  if ! "$PY" -m pip --version >/dev/null 2>&1; then  # no pip: a wheel is a zip to unpack
    for f in "$WHEELS"/*.whl; do "$PY" -m zipfile -e "$f" "$SITE" && say "unpacked $(basename "$f")"; done
    return
  fi
  local t0=$(date +%s)
  # All at once (one pip start); if one file does not fit this Python (pydantic-core is cp312), one by one.
  if ! DS_BUILD_OPS=0 timeout "$SETUP_CAP" "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" "$WHEELS"/* 2>"$LOGS/pip.err"; then
    for f in "$WHEELS"/*; do
      local l=$(( SETUP_CAP - $(date +%s) + t0 ))
      [ "$l" -le 0 ] && { say "set-up cap of ${SETUP_CAP} s reached"; break; }
      DS_BUILD_OPS=0 timeout "$l" "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" "$f" 2>>"$LOGS/pip.err" \
        || say "could not install $(basename "$f") (see pip.err)"
    done
  fi
  say "installed in $(( $(date +%s) - t0 )) s"
}

environment() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
  timeout 60 "$PY" - <<'PY'
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

run_part() {  # $1 part, $2 "smoke" or empty
  local part=$1 cap cmd rc t0
  if [ -n "${2:-}" ]; then cap=${DRY_CAP:-600}  # the smoke paths run on a (shared) CPU: GPU caps do not apply
  else cap=$(cap_now "$part"); fi
  if [ "$cap" -le 0 ]; then
    say "part $part SKIPPED: the session's ${SESSION_CAP} s are spent"
    return
  fi
  cmd=$(command_of "$part" "$cap" "${2:-}")
  say "part $part (cap ${cap} s): $cmd"
  t0=$(date +%s)
  # timeout signals the part's whole process group (a bench's child processes too); --kill-after: a
  # part that ignores SIGTERM is killed 10 s later.
  timeout --kill-after=$KILL_AFTER "$cap" bash -c "$cmd" >"$LOGS/$part.log" 2>&1
  rc=$?
  tail -n 40 "$LOGS/$part.log"
  case $rc in
    0) say "part $part done in $(( $(date +%s) - t0 )) s" ;;
    124|137) say "part $part STOPPED at its cap of ${cap} s (partial results kept)" ;;
    *) say "part $part FAILED (exit $rc) after $(( $(date +%s) - t0 )) s" ;;
  esac
}

collect() {  # this session's results into $LOGS, and at most 8 files into $OUT (after every part)
  find bench/results -maxdepth 1 -type f \( -name '*.json' -o -name '*.png' \) -newer "$LOGS/.start" -exec cp {} "$LOGS"/ \; 2>/dev/null
  if [ -n "${OUT:-}" ]; then
    tar -czf "$OUT/gpu-session-$STAMP.tar.gz" -C "$(dirname "$LOGS")" "$(basename "$LOGS")"
    cp "$SESSION_LOG" "$OUT/session.log"
    for f in "$LOGS"/train-*.json "$LOGS"/train-*.png; do [ -f "$f" ] && cp "$f" "$OUT/"; done
  fi
}

touch "$LOGS/.start"
say "parts: ${PARTS[*]} (mode: $MODE); logs and results: $LOGS"
show_plan
if [ "$MODE" = dry ]; then
  say "the trainer rows, in order (bench/train.py --quick --plan; a cap cuts the tail):"
  timeout 120 "$PY" bench/train.py --quick --plan 2>/dev/null
fi
install_wheels
environment
say "set-up done"
for p in "${PARTS[@]}"; do
  if [ "$MODE" = dry ]; then run_part "$p" smoke; else run_part "$p"; fi
  collect
done
[ -n "${OUT:-}" ] && say "$(ls "$OUT" | wc -l) files in \$OUT"
say "session done in $(( $(date +%s) - START )) s; logs in $LOGS"
