"""Fixtures shared by the engine tests that build DeepSpeed engines in this process."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def one_rank():
    """A one-rank process group for the module (``fastssl.engine.session.setup`` creates it); the variables
    ``init_distributed`` sets are put back after, the group destroyed, DeepSpeed's cached groups forgotten."""
    from _helpers import forget_deepspeed_groups

    from fastssl.engine import amp

    saved = {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    forget_deepspeed_groups()  # another module's engines may have left DeepSpeed holding a destroyed group
    yield
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    amp.forget_autocast_of_earlier_engines()
