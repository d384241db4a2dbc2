"""The one place where fastssl patches its environment.

torchvision's only build paired with torch 2.13 on PyPI is a CUDA build. On a CPU-only torch its
``_meta_registrations`` / ``_autograd_registrations`` modules fail at import (they register meta and
autograd kernels for the compiled torchvision ops, which a CUDA build cannot load on CPU torch).
timm imports torchvision at import time, so without this shim ``import timm`` fails on CPU machines.
fastssl never calls a torchvision op; registering the two modules as empty lets the rest import.
"""
from __future__ import annotations

import sys
import types

_SHIMMED = ("torchvision._meta_registrations", "torchvision._autograd_registrations")


def install_torchvision_shim() -> None:
    """Register the two empty modules if torch has no CUDA and torchvision is not yet imported."""
    if "torchvision" in sys.modules:
        return
    import torch

    if torch.version.cuda is not None:
        return
    for name in _SHIMMED:
        sys.modules.setdefault(name, types.ModuleType(name))
