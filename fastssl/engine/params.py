"""A method's parameter groups → AdamW groups: no weight decay on norms, biases and tokens.

Every ``ParamGroup`` becomes up to two optimizer groups (decayed matrices/kernels; 1-D parameters
and tokens at 0), each remembering the method group it came from so the LR schedule can apply
that group's ``lr_scale`` / ``fixed_lr``. Empty groups are dropped (AdamW rejects none, but
DeepSpeed's ZeRO flattening does).
"""
from __future__ import annotations

from fastssl.methods.base import ParamGroup

_NO_DECAY_NAMES = ("cls_token", "pos_embed", "mask_token", "reg_token", "dist_token")


def _decays(name: str, ndim: int) -> bool:
    return ndim > 1 and name.split(".")[-1] not in _NO_DECAY_NAMES


def optimizer_groups(groups: list[ParamGroup], weight_decay: float) -> tuple[list[dict], list[ParamGroup]]:
    """(torch param-group dicts, the ParamGroup each dict came from, in the same order)."""
    out, origin = [], []
    seen: set[int] = set()
    for g in groups:
        decay, no_decay = [], []
        for name, p in g.params:
            if not p.requires_grad:
                continue
            if id(p) in seen:
                raise ValueError(f"parameter {name} is in more than one parameter group")
            seen.add(id(p))
            (decay if _decays(name, p.ndim) else no_decay).append(p)
        for params, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if params:
                out.append({"params": params, "weight_decay": wd, "name": f"{g.name}/{'decay' if wd else 'no_decay'}"})
                origin.append(g)
    if not out:
        raise ValueError("the method has no trainable parameters")
    return out, origin
