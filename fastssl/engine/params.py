"""AdamW parameter groups: no weight decay on norms, biases and tokens (cls/pos/mask/register)."""
from __future__ import annotations

from torch import nn

_NO_DECAY_NAMES = ("cls_token", "pos_embed", "mask_token", "reg_token", "dist_token")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed matrices/kernels, and 1-D parameters (norm scales, biases) plus tokens at 0."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.split(".")[-1] in _NO_DECAY_NAMES:
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
