"""Process-group start-up that works under the ``deepspeed`` launcher and as plain ``python``."""
from __future__ import annotations

import os
import socket

import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int, int]:
    """Initialise torch.distributed through DeepSpeed; returns (rank, local_rank, world_size).

    Without a launcher (no RANK in the environment) this is a one-process group on a free loopback
    port, so ``python fastssl/train.py`` needs neither the launcher nor mpi4py. Backend: NCCL on
    CUDA, gloo on CPU.
    """
    import deepspeed

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    else:
        # Several CPU ranks on one machine would each start one thread per core and oversubscribe it.
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
        threads = max(1, (os.cpu_count() or 1) // per_node)
        # OMP_NUM_THREADS caps it: on cores shared with other jobs, oneDNN convolutions run ~10× faster
        # on 1 thread than on 2 spinning ones (measured, ResNet-18 fwd+bwd, notes/resnet_methods.md).
        cap = os.environ.get("OMP_NUM_THREADS", "")
        torch.set_num_threads(min(threads, int(cap)) if cap.isdigit() and int(cap) > 0 else threads)
    if not torch.cuda.is_available():
        # DeepSpeed would JIT-compile its shared-memory CPU collectives here (about 100 s on 2 cores,
        # repeated whenever its build flags change). CPU runs are tests and quickstarts whose
        # collectives are tiny, so gloo alone serves; DeepSpeed documents this dict as editable.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", auto_mpi_discovery=False)
    return torch.distributed.get_rank(), local_rank, torch.distributed.get_world_size()


def device_for(local_rank: int) -> torch.device:
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
