"""Test-wide set-up. Triton kernels run in the interpreter when no GPU is present; the variable
must be set before any kernel module is imported, which is why it lives here."""
import os

# One intra-op thread for the suite and every process it starts (they inherit the variable): the
# tensors here are tiny, and when the cores are shared (2-rank runs, a background compile, other
# jobs) two OpenMP threads spin against each other. Measured on 2 loaded cores: a 30-step CLI run
# 52 s with 2 threads, 9 s with 1; tests/engine/test_train_run.py + tests/ops/test_tokens.py 326 s
# -> 211 s. Set before torch is imported; an explicit OMP_NUM_THREADS wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # in case torch was imported first

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fastssl  # noqa: E402,F401  (installs the torchvision shim before timm is imported)
