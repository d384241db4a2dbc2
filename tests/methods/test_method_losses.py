"""Each method's loss against an independent float64 reference written from the paper's equations
(forward and gradients), on fresh random inputs of odd sizes."""
from __future__ import annotations

import math

import pytest
import torch

from fastssl.methods.byol import BYOL
from fastssl.methods.mocov3 import MoCoV3, MoCoV3Config
from fastssl.methods.simsiam import SimSiam


def _unit_rows(x: torch.Tensor) -> list[list[float]]:
    out = []
    for row in x.tolist():
        n = math.sqrt(sum(v * v for v in row))
        out.append([v / n for v in row])
    return out


def _dot(a, b) -> float:
    return sum(x * y for x, y in zip(a, b))


def byol_ref(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Σ over the two directions of mean_i ‖p̂_i − ẑ_j(i)‖² (BYOL eq. 2, symmetrised), as an explicit
    squared distance of normalised vectors, differentiable in p (float64)."""
    b = p.shape[0] // 2
    pn = p.double() / p.double().norm(dim=1, keepdim=True)
    zn = z.double() / z.double().norm(dim=1, keepdim=True)
    swap = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)])  # view 1 ↔ view 2
    d = ((pn - zn[swap]) ** 2).sum(1)
    return d[:b].mean() + d[b:].mean()


def simsiam_ref(p: torch.Tensor, z: torch.Tensor) -> float:
    """½·D(p1, z2) + ½·D(p2, z1), D = −mean cosine, with plain loops."""
    b = p.shape[0] // 2
    pu, zu = _unit_rows(p.double()), _unit_rows(z.double())
    d12 = -sum(_dot(pu[i], zu[b + i]) for i in range(b)) / b
    d21 = -sum(_dot(pu[b + i], zu[i]) for i in range(b)) / b
    return 0.5 * d12 + 0.5 * d21


def mocov3_ref(q: torch.Tensor, k: torch.Tensor, tau: float) -> float:
    """2τ·[CE(q1·k2ᵀ/τ) + CE(q2·k1ᵀ/τ)] with the diagonal as the positive, by loops (log-sum-exp by hand)."""
    b = q.shape[0] // 2
    qu, ku = _unit_rows(q.double()), _unit_rows(k.double())

    def ce(qs, ks):
        total = 0.0
        for i, qi in enumerate(qs):
            logits = [_dot(qi, kj) / tau for kj in ks]
            m = max(logits)
            lse = m + math.log(sum(math.exp(v - m) for v in logits))
            total += lse - logits[i]
        return total / len(qs)

    return 2 * tau * (ce(qu[:b], ku[b:]) + ce(qu[b:], ku[:b]))


@pytest.mark.parametrize("b,d", [(1, 3), (7, 16), (33, 129)])
def test_byol_loss_and_grad(b, d):
    p = torch.randn(2 * b, d, dtype=torch.float64, requires_grad=True)
    z = torch.randn(2 * b, d, dtype=torch.float64)
    got = BYOL.loss(p, z)
    got.backward()
    p_ref = p.detach().clone().requires_grad_(True)
    want = byol_ref(p_ref, z)
    want.backward()
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("b,d", [(1, 5), (6, 8), (17, 64)])
def test_simsiam_loss_grad_and_stop_gradient(b, d):
    p = torch.randn(2 * b, d, dtype=torch.float64, requires_grad=True)
    z = torch.randn(2 * b, d, dtype=torch.float64, requires_grad=True)
    got = SimSiam.loss(p, z)
    assert got.item() == pytest.approx(simsiam_ref(p.detach(), z.detach()), rel=1e-6, abs=1e-9)
    got.backward()
    assert z.grad is None  # the stop-gradient: nothing flows into the projections
    # d/dp of −cos(p, z) = −(ẑ − cos·p̂)/‖p‖, scaled by ½·1/B per row
    pn, zn = p.detach() / p.detach().norm(dim=1, keepdim=True), z.detach() / z.detach().norm(dim=1, keepdim=True)
    partner = torch.cat([zn[b:], zn[:b]])
    cos = (pn * partner).sum(1, keepdim=True)
    want = -(partner - cos * pn) / p.detach().norm(dim=1, keepdim=True) * (0.5 / b)
    torch.testing.assert_close(p.grad, want, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("b,d,tau", [(2, 4, 0.2), (9, 32, 0.2), (40, 17, 0.5)])
def test_mocov3_loss_and_grad(b, d, tau):
    method = MoCoV3.__new__(MoCoV3)  # only .loss and .cfg are used: no encoder needed
    torch.nn.Module.__init__(method)
    method.cfg = MoCoV3Config(temperature=tau, gather_distributed=False, backend="reference")
    q = torch.randn(2 * b, d, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2 * b, d, dtype=torch.float64, requires_grad=True)
    got = method.loss(q, k)
    assert got.item() == pytest.approx(mocov3_ref(q.detach(), k.detach(), tau), rel=1e-6)
    got.backward()
    assert k.grad is None  # keys come from the momentum encoder
    # gradient by central differences of the loop reference, on a few coordinates
    eps = 1e-6
    for i, j in [(0, 0), (2 * b - 1, d - 1), (b, d // 2)]:
        qp, qm = q.detach().clone(), q.detach().clone()
        qp[i, j] += eps
        qm[i, j] -= eps
        fd = (mocov3_ref(qp, k.detach(), tau) - mocov3_ref(qm, k.detach(), tau)) / (2 * eps)
        assert q.grad[i, j].item() == pytest.approx(fd, rel=1e-4, abs=1e-7)
