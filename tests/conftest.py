"""Test-wide set-up. Triton kernels run in the interpreter when no GPU is present; the variable
must be set before any kernel module is imported, which is why it lives here."""
import os

import pytest

# One intra-op thread for the suite and every process it starts (they inherit the variable): the
# tensors here are tiny, and when the cores are shared (2-rank runs, a background compile, other
# jobs) two OpenMP threads spin against each other. Measured on 2 loaded cores: a 30-step CLI run
# 52 s with 2 threads, 9 s with 1; tests/engine/test_train_run.py + tests/ops/test_tokens.py 326 s
# -> 211 s. Set before torch is imported; an explicit OMP_NUM_THREADS wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

if os.environ["OMP_NUM_THREADS"].isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # in case torch was imported first

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fastssl  # noqa: E402,F401  (installs the torchvision shim before timm is imported)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    """Selected test modules that define ``start_in_background()`` (tests/ops/test_kernel_aot.py) get
    to start their long background work now, before the first test runs."""
    if session.config.option.collectonly:
        return
    for module in {id(item.module): item.module for item in session.items if hasattr(item, "module")}.values():
        if hasattr(module, "start_in_background"):
            module.start_in_background()
