"""The momentum (EMA) target networks of BYOL / MoCo-style methods.

A method holds ``self.target = EmaTarget(encoder, projector)`` and calls
``self.target.update_(encoder, projector, momentum=cosine_momentum(base, ctx.progress))`` from its ``after_step(ctx)``
hook, which the engine calls after every optimizer step. ``ema_update_`` is the same update for two
plain modules of one dtype.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def cosine_momentum(base: float, progress: float) -> float:
    """BYOL's target-momentum schedule: base → 1 along a half cosine as progress goes 0 → 1."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1.0) / 2.0


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


class EmaTarget(nn.Module):
    """A momentum (EMA) copy of an online network whose weights stay fp32 whatever the training precision.

    ``self.net`` is the copy used in the forward pass; it follows the module's dtype (DeepSpeed
    casts it to bf16 with everything else). An EMA with m = 0.996…0.9999 adds (1 − m)·(online −
    target) per step, which is below half a bf16 ulp of the weight most of the time: updating bf16
    weights in place would round most updates away and freeze the target. So the EMA runs on an
    fp32 master copy, held outside the module's parameters and buffers (no ``.to(dtype)`` or
    optimizer ever sees it), and ``net`` is refreshed from it after every update.

    While ``net`` is fp32 the master *is* its parameters (no extra memory). The master is what the
    module's ``state_dict`` holds under the parameter names (fp32), and what ``load_state_dict``
    restores, so checkpoints resume the exact fp32 target. The target takes no gradient.
    """

    def __init__(self, *online: nn.Module):
        super().__init__()
        import copy

        # Several modules (e.g. encoder, projector) become one Sequential: forward chains them.
        self.net = nn.Sequential(*(copy.deepcopy(m) for m in online)).requires_grad_(False)
        self._master: list[torch.Tensor] = [p.data if p.dtype == torch.float32 else p.detach().float() for p in self.net.parameters()]
        self._register_state_dict_hook(_master_into_state_dict)
        self.register_load_state_dict_pre_hook(self._load_master)

    def forward(self, *args, **kwargs):
        return self.net(*args, **kwargs)

    @property
    def master(self) -> list[torch.Tensor]:
        """fp32 target weights, in ``self.net.parameters()`` order."""
        return self._master

    @torch.no_grad()
    def update_(self, *online: nn.Module, momentum: float) -> None:
        """target ← m·target + (1 − m)·online in fp32, for the same modules (in the same order) the
        target was built from; BatchNorm statistics copied (as BYOL / MoCo v3 do)."""
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        online = nn.Sequential(*online)  # a view for iteration only; the modules are not copied
        o_params = list(online.parameters())
        if len(o_params) != len(self._master):
            raise ValueError("target and online networks differ in structure")
        torch._foreach_lerp_(self._master, [o.detach().float() for o in o_params], 1.0 - momentum)
        for p, m in zip(self.net.parameters(), self._master):
            if not _aliases(p, m):
                p.data.copy_(m)  # rounds to the compute dtype once, from the exact fp32 value
        for t, o in zip(self.net.buffers(), online.buffers()):
            t.copy_(o)

    def _apply(self, fn, recurse=True):
        # .to(device/dtype), .cuda(), .bfloat16(): the master follows devices, never dtypes.
        super()._apply(fn, recurse)
        for i, (p, m) in enumerate(zip(self.net.parameters(), self._master)):
            if p.dtype == torch.float32:
                if not _aliases(p, m):
                    p.data.copy_(m)  # exact values back (e.g. after bf16 → fp32), any device
                self._master[i] = p.data
            else:
                self._master[i] = m.to(p.device)
        return self

    def _load_master(self, module, state_dict, prefix, *args) -> None:
        for (name, _), m in zip(self.net.named_parameters(), self._master):
            value = state_dict.get(f"{prefix}net.{name}")
            if value is not None:
                m.copy_(value.to(m.device, torch.float32))


def _aliases(p: torch.Tensor, m: torch.Tensor) -> bool:
    return p.dtype == m.dtype and p.device == m.device and p.data_ptr() == m.data_ptr()


def _master_into_state_dict(module: EmaTarget, state_dict, prefix, local_metadata):
    """Write the fp32 master under the parameter names (the net's own copy may be bf16)."""
    for (name, _), m in zip(module.net.named_parameters(), module.master):
        state_dict[f"{prefix}net.{name}"] = m.detach()
