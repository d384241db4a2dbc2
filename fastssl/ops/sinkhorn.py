"""SwAV's Sinkhorn-Knopp codes: equipartitioned soft assignments of samples to prototypes.

The algorithm is the one of SwAV's official ``distributed_sinkhorn`` (the paper's §3.1 and
Appendix A leave the normalisation order to the code, so we follow the code):

    Q = exp(scores / ε)ᵀ                  [K, B], prototypes × samples
    Q /= Σ Q                              over the GLOBAL batch
    repeat ``iterations`` times:
        Q[k, :] /= K · Σ_b Q[k, b]        each prototype row sums to 1/K (row sums all-reduced)
        Q[:, b] /= B · Σ_k Q[k, b]        each sample column sums to 1/B, B = the global batch
    Q *= B                                each sample's codes sum to 1
    return Qᵀ                             [B_local, K]

Stability: we subtract the GLOBAL maximum score before the exponential. exp((s - m)/ε) =
exp(s/ε)·exp(-m/ε) scales every entry by the same constant, which the first division by the
global sum removes exactly, so every later step sees the same matrix as the official code (up to
rounding); with ``iterations = 0`` the result is that normalised matrix times B, also unchanged.
Without it, exp(s/ε) overflows fp32 for any score above 88·ε (4.4 at ε = 0.05): harmless for
SwAV's unit-norm scores in [-1, 1], fatal for anything else. What it cannot fix: a prototype whose
every score lies more than ~87·ε below the global maximum underflows to a zero row (0/0); the
official code has the same limit from the other side (overflow), unit-norm scores are far from it.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from fastssl.ops.distributed import world_info


@torch.no_grad()
def sinkhorn(
    scores: torch.Tensor,
    epsilon: float = 0.05,
    iterations: int = 3,
    *,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """SwAV codes Q [B, K] (fp32, no gradient) from prototype scores [B, K]; each row sums to 1.

    scores: [B, K], any float dtype; computed in fp32 whatever the input dtype, result fp32 (a
    bf16 result would round the codes, which SwAV uses as cross-entropy targets).
    epsilon: the entropy regularisation ε (SwAV: 0.05); iterations: Sinkhorn-Knopp steps (SwAV: 3).
    gather_distributed: the batch is the union of every rank's ``scores`` (B = the sum of the ranks'
    batch sizes; SwAV's code assumes equal ones):
    the global sum and the prototype row sums are all-reduced and B is the global batch, so each
    rank returns its own rows of the single-process codes of the global batch (SwAV's
    ``distributed_sinkhorn``). The returned tensor never requires grad.
    """
    if scores.ndim != 2 or scores.shape[0] < 1 or scores.shape[1] < 1:
        raise ValueError(f"scores must be [B, K] with B, K >= 1, got {tuple(scores.shape)}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if int(iterations) != iterations or iterations < 0:
        raise ValueError(f"iterations must be an integer >= 0, got {iterations}")
    distributed = gather_distributed and world_info()[1] > 1

    def reduce(x: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        """In place over every rank with ``gather_distributed``, the identity otherwise."""
        if distributed:
            dist.all_reduce(x, op=op)
        return x

    s = scores.detach().float()
    total_b = reduce(torch.tensor(float(s.shape[0]), device=s.device))  # the global batch B
    top = reduce(s.max().clone(), dist.ReduceOp.MAX)  # the global max: a constant that cancels below
    q = torch.exp((s - top) / epsilon).t()  # [K, B_local]
    k = q.shape[0]
    q /= reduce(q.sum())
    for _ in range(int(iterations)):
        q /= reduce(q.sum(dim=1, keepdim=True))  # prototype rows over the global batch ...
        q /= k  # ... sum to 1/K
        q /= q.sum(dim=0, keepdim=True)  # a sample's column is local to its rank: no reduction ...
        q /= total_b  # ... and sums to 1/B
    q *= total_b
    return q.t().contiguous()
