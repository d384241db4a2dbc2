"""sinkhorn (SwAV codes) against a float64 loop transcription of SwAV's ``distributed_sinkhorn``.

The reference follows the official algorithm literally — no max subtraction, one Python iteration
per prototype row and per sample column — so it also checks that the op's global-max shift
cancels. The op computes in fp32 whatever the input dtype, so bf16 and fp16 scores are held to
the fp32 tolerance against the float64 reference on the same (rounded) values. Fresh random
scores each run (seed printed on failure); B ∈ {1, 7, 129, 64}, K ∈ {1, 13, 1000, 3000}.
"""
from __future__ import annotations

import pytest
import torch
from _contrastive_loop_ref import check_fp32
from _helpers import fresh_seed as _seed

from fastssl.ops import sinkhorn


def sinkhorn_loop(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """SwAV's distributed_sinkhorn on one process, in float64, loop by loop. scores [B, K] -> [B, K]."""
    q = torch.exp(scores.double() / epsilon).t().clone()  # [K, B]
    n_protos, batch = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        for k in range(n_protos):  # each prototype's total weight becomes 1/K
            q[k] = q[k] / q[k].sum() / n_protos
        for b in range(batch):  # each sample's total weight becomes 1/B
            q[:, b] = q[:, b] / q[:, b].sum() / batch
    return (q * batch).t()


def _scores(b: int, k: int) -> torch.Tensor:
    """Cosine-like prototype scores: unit features · unit prototypes, in [-1, 1] like SwAV's."""
    z = torch.nn.functional.normalize(torch.randn(b, 32, dtype=torch.float64), dim=1)
    c = torch.nn.functional.normalize(torch.randn(k, 32, dtype=torch.float64), dim=1)
    return z @ c.t()


CASES = [(1, 13, 0.05, 3), (7, 1, 0.05, 3), (7, 13, 0.05, 3), (129, 1000, 0.05, 3), (64, 3000, 0.05, 3),
         (129, 13, 0.1, 1), (7, 1000, 0.03, 0), (33, 50, 0.05, 10)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("b,k,eps,iters", CASES, ids=[f"B{c[0]}-K{c[1]}-e{c[2]}-it{c[3]}" for c in CASES])
def test_sinkhorn_matches_official_algorithm(dtype, b, k, eps, iters):
    seed = _seed()
    scores = _scores(b, k).to(dtype)
    got = sinkhorn(scores, eps, iters)
    ref = sinkhorn_loop(scores.double(), eps, iters)
    assert got.dtype == torch.float32 and got.shape == (b, k) and not got.requires_grad
    # exp(s/ε) turns the fp32 rounding of s/ε (|s/ε| <= 1/ε) into a relative error ~ulp/ε per entry.
    check_fp32(f"sinkhorn {dtype} seed={seed}", got, ref, rtol=1e-6 / eps)
    if iters > 0:  # the last step normalises each sample's codes to sum to 1
        torch.testing.assert_close(got.sum(dim=1), torch.ones(b), rtol=0, atol=1e-5)


def test_codes_equipartition_prototypes():
    """Enough iterations make every prototype carry B/K of the batch (the transport constraint)."""
    scores = _scores(60, 12).float()
    q = sinkhorn(scores, 0.05, 50)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(60), rtol=0, atol=1e-5)
    torch.testing.assert_close(q.sum(dim=0), torch.full((12,), 60 / 12), rtol=1e-3, atol=0)


def test_large_scores_stay_finite():
    """Scores up to 6 at ε = 0.05 (exp(120) overflows fp32): the global-max shift keeps the fp32
    computation finite and equal to the float64 official algorithm, where the unshifted fp32 one is not."""
    seed = _seed()
    scores = (6 * (2 * torch.rand(40, 30, dtype=torch.float64) - 1)).float()
    assert not torch.isfinite(torch.exp(scores / 0.05)).all()  # the naive fp32 exponential overflows
    got = sinkhorn(scores, 0.05, 3)
    assert torch.isfinite(got).all()
    check_fp32(f"large scores seed={seed}", got, sinkhorn_loop(scores.double(), 0.05, 3), rtol=1e-6 / 0.05)


def test_no_gradient_and_input_untouched():
    scores = _scores(9, 5).float().requires_grad_()
    before = scores.detach().clone()
    q = sinkhorn(scores)
    assert not q.requires_grad and q.grad_fn is None
    assert torch.equal(scores.detach(), before)
    assert q.is_contiguous()


def test_argument_errors():
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        sinkhorn(torch.randn(4))
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn(torch.randn(4, 3), epsilon=0.0)
    with pytest.raises(ValueError, match="iterations"):
        sinkhorn(torch.randn(4, 3), iterations=-1)
