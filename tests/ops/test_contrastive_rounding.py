"""The interpreter tests check the arithmetic the GPU does: dS is rounded to the storage dtype before
the second matmul of the backward (``ROUND_TILES``), as the tensor cores see it.

The interpreter upcasts every tile to fp32, so without the explicit rounding a bf16/fp16 test would
check a more precise computation than the GPU's. Here the kernel's dRows is compared bit for bit with
a float64 emulation of each rounding step (fp16: the interpreter's fp16 stores round to nearest like
the GPU; bf16 stores truncate in the Triton 3.7 interpreter, so the bf16 rounding itself is checked
on the helper directly).
"""
from __future__ import annotations

import os

import pytest
import torch
import triton
import triton.language as tl

import fastssl.kernels.contrastive as K
from fastssl.ops.contrastive import triton_contrastive_rows

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="checks the interpreter's test mode")


def _emulated_drows(rows, cols, pos, g, tau, round_ds: bool) -> torch.Tensor:
    """dRows of Σ_a g[a]·loss[a] in float64, dS optionally rounded to the inputs' dtype."""
    r, c = rows.double(), cols.double()
    p = torch.softmax(r @ c.T / tau, dim=1)
    ds = g.double()[:, None] * (p - torch.nn.functional.one_hot(pos, c.shape[0]).double())
    if round_ds:
        ds = ds.float().to(rows.dtype).double()  # the kernel rounds its fp32 dS (RNE)
    return (ds @ c / tau).float().to(rows.dtype)


@pytest.mark.parametrize("round_tiles", [True, False])
def test_fp16_backward_matches_the_rounding_it_models(monkeypatch, round_tiles):
    m, c, d, tau = 96, 112, 64, 0.1  # one split, one tile of D: a single rounding at the store
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    rows = torch.nn.functional.normalize(torch.randn(m, d), dim=1).half().requires_grad_()
    cols = torch.nn.functional.normalize(torch.randn(c, d), dim=1).half()
    pos = torch.randint(0, c, (m,))
    g = torch.rand(m) + 0.5
    monkeypatch.setattr(K, "ROUND_TILES", round_tiles)
    loss = triton_contrastive_rows(rows, cols, pos, torch.full((m,), -1), tau)
    (got,) = torch.autograd.grad((loss * g).sum(), rows)
    same = (got == _emulated_drows(rows, cols, pos, g, tau, round_ds=round_tiles)).float().mean().item()
    other = (got == _emulated_drows(rows, cols, pos, g, tau, round_ds=not round_tiles)).float().mean().item()
    # Bitwise equal except where fp32 vs float64 rounding of a sum lands on the other side of a tie
    # region (rare); the other model of the arithmetic disagrees on a large share of the elements.
    assert same > 0.98, (same, other)
    assert other < same - 0.1, (same, other)


@triton.jit
def _round_kernel(x_ptr, out_ptr, N: tl.constexpr, ELEM: tl.constexpr):
    x = tl.load(x_ptr + tl.arange(0, N))
    tl.store(out_ptr + tl.arange(0, N), K._as_operand(x, ELEM, True, True))


@pytest.mark.parametrize("elem,dtype", [(tl.bfloat16, torch.bfloat16), (tl.float16, torch.float16)])
def test_operand_rounding_is_round_to_nearest_even(elem, dtype):
    """The interpreter-side rounding equals torch's (IEEE round-to-nearest-even) cast, ties included."""
    n = 4096
    x = torch.randn(n) * torch.logspace(-3, 3, n)
    x[:8] = torch.tensor([1.00390625, 1.01171875, -1.00390625, 3.0, 0.0, -0.0, 1e-3, 65000.0])  # bf16 ties and edges
    out = torch.empty(n)
    _round_kernel[(1,)](x, out, N=n, ELEM=elem)
    assert torch.equal(out, x.to(dtype).float())
