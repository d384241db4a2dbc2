"""The fused row normalisation (``fastssl.ops.contrastive_doors.fused_unit_rows``, behind
``OPTIONS["fused_unit"]``) against ``F.normalize`` in float64: values and gradients, fp32 and bf16,
odd D, a zero row (the clamped branch), a strided input; and the ops with it switched on against
the reference backend."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastssl.ops.contrastive as C
from fastssl.ops import dcl, info_nce, nt_xent

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,d", [(1, 1), (37, 7), (70, 256), (5, 300)])
def test_unit_rows_matches_normalize(dtype, n, d):
    torch.manual_seed(n * d)
    x = (torch.randn(n, d, dtype=torch.float64) * (0.5 + 2 * torch.rand(n, 1, dtype=torch.float64)))
    if n > 2:
        x[1] = 0.0  # F.normalize clamps the norm at 1e-12: y = 0, dx = dy / 1e-12
    g = torch.randn(n, d, dtype=torch.float64)
    xl = x.to(dtype).to(DEV).requires_grad_()
    y = C.fused_unit_rows(xl)
    (dx,) = torch.autograd.grad(y, xl, g.to(dtype).to(DEV))
    ref_x = xl.detach().cpu().double().requires_grad_()
    ref_y = F.normalize(ref_x, dim=-1)
    (ref_dx,) = torch.autograd.grad(ref_y, ref_x, g.to(dtype).double())
    assert y.dtype == dtype and dx.dtype == dtype
    tol = 2e-6 if dtype == torch.float32 else 8e-3  # one rounding of the output to the storage dtype
    torch.testing.assert_close(y.cpu().double(), ref_y, rtol=tol, atol=tol)
    # the terms that cancel in dx (dy and u·(u·dy), both of order |dy| / ‖x‖): the error's scale
    norm = ref_x.detach().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    scale = g.to(dtype).double().abs().amax(dim=-1, keepdim=True) / norm
    assert ((dx.cpu().double() - ref_dx).abs() / scale).max() <= tol


def test_unit_rows_strided_input():
    x = torch.randn(40, 66, device=DEV)[:, 1:65]  # unit stride along D, row stride 66
    torch.testing.assert_close(C.fused_unit_rows(x), F.normalize(x, dim=-1), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unit_rows_of_two_views_is_the_concatenation(dtype):
    """[x1; x2] in one launch each way: values and both gradients equal those of the concatenated
    tensor normalised as one (bit for bit: the same kernel arithmetic per row)."""
    torch.manual_seed(1)
    x1 = (torch.randn(19, 40) * 3).to(dtype).to(DEV).requires_grad_()
    x2 = torch.randn(45, 80).to(dtype).to(DEV)[:, ::2].requires_grad_()  # strided along D: the copy path
    g = torch.randn(64, 40).to(dtype).to(DEV)
    y = C.unit_rows(x1, x2) if C.OPTIONS["fused_unit"] else C.fused_unit_rows(x1, x2.contiguous())
    d1, d2 = torch.autograd.grad(y, (x1, x2), g)
    c = torch.cat([x1.detach(), x2.detach()]).requires_grad_()
    yc = C.fused_unit_rows(c)
    (dc,) = torch.autograd.grad(yc, c, g)
    assert torch.equal(y, yc) and torch.equal(d1, dc[:19]) and torch.equal(d2, dc[19:])


@pytest.mark.parametrize("op", ["nt_xent", "dcl", "info_nce", "queue"])
def test_ops_with_fused_unit_match_reference(monkeypatch, op):
    torch.manual_seed(3)
    z1, z2 = torch.randn(37, 24, dtype=torch.float64) * 3, torch.randn(37, 24, dtype=torch.float64)
    queue = torch.randn(50, 24, dtype=torch.float64)

    def run(backend, a, b):
        if op == "nt_xent":
            return nt_xent(a, b, 0.1, backend=backend)
        if op == "dcl":
            return dcl(a, b, 0.1, weight_sigma=0.5, backend=backend)
        if op == "info_nce":
            return info_nce(a, b, 0.2, backend=backend)
        return info_nce(a, b, 0.2, queue=queue.float().to(a.device), backend=backend)

    monkeypatch.setitem(C.OPTIONS, "fused_unit", True)
    a, b = z1.float().to(DEV).requires_grad_(), z2.float().to(DEV).requires_grad_()
    got = run("triton", a, b)
    ga = torch.autograd.grad(got, (a, b))
    ra, rb = z1.float().requires_grad_(), z2.float().requires_grad_()
    want = run("reference", ra, rb)
    gr = torch.autograd.grad(want, (ra, rb))
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)
    for x, y in zip(ga, gr):
        torch.testing.assert_close(x.cpu(), y, rtol=1e-4, atol=1e-6)
