"""Reference (eager PyTorch) implementations of fastssl's ops, written for clarity.

They back the ops on CPU tensors (``backend="auto"``) and on any device with
``backend="reference"``; the Triton kernels in ``fastssl.kernels`` must match them.
"""
from __future__ import annotations

import torch


def contrastive_rows(
    rows: torch.Tensor,
    cols: torch.Tensor,
    pos_idx: torch.Tensor,
    excl_idx: torch.Tensor,
    temperature: float,
    pos_weight: torch.Tensor | None = None,
    exclude_pos: bool = False,
) -> torch.Tensor:
    """Per-row contrastive loss, the core every contrastive op reduces to.

    rows [M, D] and cols [C, D] are unit vectors; s[a, c] = <rows[a], cols[c]> / temperature.
        loss[a] = -w[a] * s[a, pos[a]] + logsumexp_{c in allowed(a)} s[a, c]
    allowed(a) = every column except excl_idx[a] (skipped where it is -1) and, when
    ``exclude_pos`` (DCL's decoupling), except pos_idx[a] as well. w = pos_weight or 1.

    Args:
        pos_idx, excl_idx: int64 [M]. pos_weight: [M] or None (treated as a constant).
    Returns:
        fp32 [M]. The matmul runs in the inputs' dtype, the softmax in fp32.
    """
    logits = (rows @ cols.t()).float() / temperature  # [M, C]
    arange = torch.arange(rows.shape[0], device=rows.device)
    positive = logits[arange, pos_idx]
    masked = logits
    drop = torch.zeros_like(logits, dtype=torch.bool)
    has_excl = excl_idx >= 0
    drop[arange[has_excl], excl_idx[has_excl]] = True
    if exclude_pos:
        drop[arange, pos_idx] = True
    masked = logits.masked_fill(drop, float("-inf"))
    lse = torch.logsumexp(masked, dim=1)
    if pos_weight is not None:
        positive = pos_weight.detach().float() * positive
    return lse - positive
