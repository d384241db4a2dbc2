"""Weights a method keeps at unit-L2 rows after every optimizer step, in the optimizer's own fp32 copy.

SwAV normalises its prototypes in place before each step (its official code does so at the start of
every iteration), so the gradient step is taken from a point on the sphere. An in-place write reaches
the optimizer only where it steps the model's own weights: ZeRO 0 in fp32 or under autocast (torch's
AdamW). Every other mode keeps an fp32 master apart and copies it over the model's weights after each
step: ZeRO 1 / 2 (the flat fp32 partitions, in fp32 too) and DeepSpeed's bf16 at ZeRO 0 (its unfused
wrapper's ``fp32_groups``). There the write was lost at the next step and the master drifted off the
sphere without a word: another algorithm (SwAV's fp32 losses at ZeRO 2 left ZeRO 0's from step 2).

So a method lists such weights (``unit_rows()``, see ``methods/base.py``) and the loop calls
``normalize_rows_`` after every optimizer step: the fp32 master is normalised and written back through
DeepSpeed's own accessors (``safe_get/set_full_fp32_param``; the get is a collective over the
data-parallel ranks at ZeRO 1 / 2, which every rank runs alike), and the model's copy is set from it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _unfused_master(optimizer, p: torch.Tensor) -> torch.Tensor | None:
    """DeepSpeed's unfused fp16/bf16 wrapper (ZeRO 0 with its bf16): the fp32 copy paired with ``p``."""
    for low, high in zip(getattr(optimizer, "fp16_groups", ()), getattr(optimizer, "fp32_groups", ())):
        for a, b in zip(low, high):
            if a is p:
                return b
    return None


@torch.no_grad()
def normalize_rows_(optimizer, params: list[torch.Tensor]) -> None:
    """Each row of each weight in ``params`` to unit L2 norm, in the fp32 copy ``optimizer`` steps
    (DeepSpeed's engine optimizer, or torch's when it steps the weights themselves) and in the weight."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

    for p in params:
        master = safe_get_full_fp32_param(p)  # ZeRO 1 / 2 (and DeepSpeed's fused bf16 optimizer)
        if master is not None:
            unit = F.normalize(master.float(), dim=1)
            safe_set_full_fp32_param(p, unit)
            p.copy_(unit.to(p.dtype))
            continue
        master = _unfused_master(optimizer, p)
        if master is not None:
            master.copy_(F.normalize(master, dim=1))
            p.copy_(master.to(p.dtype))
            continue
        p.copy_(F.normalize(p.float(), dim=1).to(p.dtype))  # the optimizer steps the weight itself
