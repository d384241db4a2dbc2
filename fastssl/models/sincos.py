"""Fixed sine-cosine embeddings: MAE's 2-D positional table and the 1-D sinusoid of a scalar.

``sincos_2d`` follows MAE's ``get_2d_sincos_pos_embed`` (util/pos_embed.py): half of the width
encodes the row, half the column, each as [sin(pos·ω), cos(pos·ω)] with ω_i = 10000^(−i/(D/4)).
``sinusoid`` is the transformer / DDPM embedding of a scalar t: [sin(t·ω_i), cos(t·ω_i)],
ω_i = 10000^(−i/(D/2)).
"""
from __future__ import annotations

import math

import torch


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """pos ``[M]`` float -> ``[M, dim]`` (dim even): [sin(pos·ω), cos(pos·ω)]."""
    omega = torch.exp(-math.log(10000.0) * torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = pos.double()[:, None] * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(dim: int, grid: tuple[int, int], *, cls: bool = True) -> torch.Tensor:
    """``[cls + h·w, dim]`` float32 table for a row-major ``grid = (h, w)``; the CLS row is zeros (MAE)."""
    if dim % 4:
        raise ValueError(f"the 2-D sin-cos table needs a width divisible by 4, got {dim}")
    h, w = grid
    rows = torch.arange(h, dtype=torch.float64).repeat_interleave(w)  # row index of patch i·w + j
    cols = torch.arange(w, dtype=torch.float64).repeat(h)
    # MAE's meshgrid puts w first: emb_h uses grid[0] = the column coordinate
    table = torch.cat([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], dim=1)
    if cls:
        table = torch.cat([torch.zeros(1, dim, dtype=table.dtype), table])
    return table.float()


def sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``t [N]`` -> ``[N, dim]`` in t's floating dtype (fp32 at least); odd ``dim`` gets a zero column."""
    half = dim // 2
    dtype = torch.promote_types(t.dtype, torch.float32)
    omega = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=dtype) / max(half, 1))
    arg = t.to(dtype)[:, None] * omega[None]
    emb = torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)
    return torch.nn.functional.pad(emb, (0, dim - 2 * half))
