"""MAE's reconstruction loss on the masked patches (``masked_patch_loss``).

    loss = Σ_{b,l} mask[b,l] · mean_P (pred[b,l] − t[b,l])² / Σ_{b,l} mask[b,l]
    t    = target normalised per patch, (x − mean) / sqrt(var + 1e-6) with the unbiased var of its
           P = p·p·C values (MAE's ``norm_pix_loss``; ``torch.var``'s default), or target itself.

The eager reference (``fastssl.ops.reference.masked_patch_loss``) is MAE's ``forward_loss``: the
per-patch loss of every patch, then a masked mean. The "auto" path computes the same value but
selects the masked rows first (``index_select`` of the B·L·r masked patches), so the subtraction,
the square and the normalisation run on r = mask_ratio of the rows (75 % for MAE, 50 % for CAN) and
the backward writes zeros elsewhere. It is not a Triton kernel: at P = 768 (ViT-B) this is one pass
over ``[B·L·r, P]`` that torch already runs at memory speed; the selection needs the number of
masked rows, a host value, which costs one sync on CUDA only when ``mask`` is not given with a
constant count (``num_masked``: MAE's and CAN's counts are fixed, the methods pass them).
"""
from __future__ import annotations

import torch

from fastssl.ops import reference
from fastssl.ops.dispatch import Backend


def _check(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> None:
    if pred.ndim != 3 or pred.shape != target.shape:
        raise ValueError(f"pred and target must both be [B, L, P], got {tuple(pred.shape)} and {tuple(target.shape)}")
    if tuple(mask.shape) != tuple(pred.shape[:2]):
        raise ValueError(f"mask must be [B, L] = {tuple(pred.shape[:2])}, got {tuple(mask.shape)}")
    if pred.device != target.device or pred.device != mask.device:
        raise ValueError(f"pred, target and mask must share a device, got {pred.device}, {target.device}, {mask.device}")


def masked_patch_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *, norm_pix: bool = True,
                      num_masked: int | None = None, backend: Backend = "auto") -> torch.Tensor:
    """Mean over masked patches (mask 1) of the per-patch mean squared error; see the module docstring.

    pred, target ``[B, L, P]`` in ``patchify``'s order; mask ``[B, L]`` of 0/1 (any dtype).
    ``num_masked``: Σ mask if the caller knows it (saves a device sync on CUDA), else counted.
    Returns an fp32 (or wider) scalar; differentiable w.r.t. pred and target.
    ``backend``: "reference" runs MAE's formula; "auto" the masked-rows path; "triton" is not
    offered (no kernel, see the module docstring) and raises.
    """
    _check(pred, target, mask)
    if norm_pix and pred.shape[-1] < 2:
        raise ValueError("norm_pix needs at least 2 values per patch (unbiased variance)")
    if backend == "reference":
        return reference.masked_patch_loss(pred, target, mask, norm_pix)
    if backend != "auto":
        raise ValueError(f"masked_patch_loss: backend must be 'auto' or 'reference' (no Triton kernel), got {backend!r}")
    rows = mask.reshape(-1) > 0
    n = int(rows.sum()) if num_masked is None else num_masked
    if n == 0:
        raise ValueError("masked_patch_loss: the mask selects no patch")
    # nonzero_static with a known size: no host sync on CUDA
    idx = torch.nonzero_static(rows, size=n).view(-1)
    dtype = torch.promote_types(pred.dtype, torch.float32)
    p = pred.reshape(-1, pred.shape[-1]).index_select(0, idx).to(dtype)
    t = target.reshape(-1, target.shape[-1]).index_select(0, idx).to(dtype)
    if norm_pix:
        t = reference.normalize_patches(t)
    return ((p - t) ** 2).mean()
