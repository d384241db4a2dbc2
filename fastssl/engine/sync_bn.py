"""SyncBatchNorm for multi-GPU runs: BatchNorm statistics over the global batch, as SimCLR's "global BN".

With several ranks each rank sees only its share of the batch, so plain BatchNorm would normalise
with per-rank statistics (a smaller, noisier batch, and in contrastive learning a shortcut: the
model can tell a rank's samples apart by their BN statistics). ``torch.nn.SyncBatchNorm`` all-reduces
the statistics; it runs only on CUDA (NCCL), so CPU runs with several gloo ranks keep local BN.
"""
from __future__ import annotations

import torch
from torch import nn


def needs_sync_batchnorm(device: torch.device, world_size: int) -> bool:
    """True exactly when BatchNorm must be synchronised: a CUDA device and more than one rank."""
    return torch.device(device).type == "cuda" and world_size > 1


def convert_sync_batchnorm(module: nn.Module, device: torch.device, world_size: int) -> nn.Module:
    """``module`` with every ``nn.BatchNorm*d`` replaced by ``nn.SyncBatchNorm`` when
    ``needs_sync_batchnorm(device, world_size)``; otherwise ``module`` itself, unchanged.

    Call it on the model before the optimizer and the DeepSpeed engine are built (the converted layers
    are new modules: parameters are carried over, but an optimizer built earlier would hold the old
    ones) and before moving the model to its device or wrapping it. Weights, biases and running
    statistics are copied into the new layers; the process group is the default (all ranks).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not needs_sync_batchnorm(device, world_size):
        return module
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)
