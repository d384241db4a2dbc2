"""The momentum (EMA) update of a target network, for BYOL / MoCo-style methods.

A method calls ``ema_update_(self.target, self.online, cosine_momentum(base, progress))`` from its
``after_optimizer_step(progress)`` hook (``fastssl.methods.output.AfterStep``), which the engine
calls after every optimizer step.
"""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """In place: every target parameter ← m·target + (1 − m)·online; buffers (BatchNorm statistics)
    are copied, as BYOL's and MoCo v3's reference code do.

    Both modules must have the same structure. One fused multi-tensor lerp instead of a Python loop
    of small kernels. Under ZeRO stage 3 the parameters are partitioned; methods with a target
    network need stage 0-2 (each rank holds the full parameters there).
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    t_params, o_params = list(target.parameters()), list(online.parameters())
    if len(t_params) != len(o_params):
        raise ValueError("target and online networks differ in structure")
    torch._foreach_lerp_(t_params, [o.to(t.dtype) for t, o in zip(t_params, o_params)], 1.0 - momentum)
    for t, o in zip(target.buffers(), online.buffers()):
        t.copy_(o)
