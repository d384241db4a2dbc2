"""Test-wide set-up. Triton kernels run in the interpreter when no GPU is present; the variable
must be set before any kernel module is imported, which is why it lives here."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fastssl  # noqa: E402,F401  (installs the torchvision shim before timm is imported)
