"""The methods' losses as their official PyTorch code writes them: full logits matrices and
``F.cross_entropy``, no fused kernel, no custom autograd. The logits matmuls run in the input dtype
(bf16 under autocast, as the official code under AMP); cross-entropy and softmax are autocast to fp32."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """SimCLR: the 2N×2N cosine logits, self-similarity masked out, cross-entropy to the other view."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (z @ z.t()) / t
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    labels = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, labels)


def dcl(z1: torch.Tensor, z2: torch.Tensor, t: float, sigma: float | None = None) -> torch.Tensor:
    """DCL (eq. 5) / DCLW (eq. 6): the positive left out of the log-sum-exp; mean over both views' anchors."""
    a, b = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    n = a.shape[0]
    off = ~torch.eye(n, dtype=torch.bool, device=a.device)
    w = 1.0
    if sigma is not None:  # w = 2 − N·softmax(⟨z¹ᵢ, z²ᵢ⟩/σ), no gradient
        w = (2.0 - n * torch.softmax((a * b).sum(1) / sigma, dim=0)).detach()

    def side(x, y):
        xx, xy = x @ x.t() / t, x @ y.t() / t
        neg = torch.cat([xx[off].view(n, n - 1), xy[off].view(n, n - 1)], dim=1)
        return (-xy.diagonal() * w + torch.logsumexp(neg, dim=1)).mean()

    return (side(a, b) + side(b, a)) / 2


def moco_v3(q: torch.Tensor, k: torch.Tensor, t: float) -> torch.Tensor:
    """MoCo v3's ``contrastive_loss``: N×N logits against the keys, labels on the diagonal, ×2τ."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    logits = q @ k.t() / t
    return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device)) * (2 * t)


def moco_v2(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, t: float) -> torch.Tensor:
    """MoCo (v1/v2) ``builder.py``: positive logit + queue logits, label 0. queue: ``[D, K]``."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
    l_neg = torch.einsum("nc,ck->nk", q, queue.clone().detach())
    logits = torch.cat([l_pos, l_neg], dim=1) / t
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=q.device))


def byol(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's ``2 − 2·cos``, mean over rows."""
    p, z = F.normalize(p.float(), dim=-1), F.normalize(z.float(), dim=-1)
    return (2 - 2 * (p * z).sum(dim=-1)).mean()


def simsiam(p1, p2, z1, z2) -> torch.Tensor:
    """SimSiam: −(cos(p1, sg z2) + cos(p2, sg z1)) / 2."""
    cos = torch.nn.CosineSimilarity(dim=1)
    return -(cos(p1.float(), z2.detach().float()).mean() + cos(p2.float(), z1.detach().float()).mean()) * 0.5


@torch.no_grad()
def sinkhorn(out: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """SwAV's ``distributed_sinkhorn`` on one process (no max subtraction: unit-norm scores)."""
    q = torch.exp(out.float() / eps).t()
    b, k = q.shape[1], q.shape[0]
    q /= torch.sum(q)
    for _ in range(iters):
        q /= torch.sum(q, dim=1, keepdim=True)
        q /= k
        q /= torch.sum(q, dim=0, keepdim=True)
        q /= b
    q *= b
    return q.t()


def swav(output: torch.Tensor, bs: int, n_crops: int, t: float, eps: float, iters: int) -> torch.Tensor:
    """SwAV's ``main_swav.py`` loss: codes of crops 0 and 1 predicted by every other crop.
    output ``[n_crops·bs, K]`` prototype scores, crop-major."""
    loss = 0
    for crop_id in (0, 1):
        q = sinkhorn(output[bs * crop_id: bs * (crop_id + 1)].detach(), eps, iters)
        sub = 0
        for v in [i for i in range(n_crops) if i != crop_id]:
            x = output[bs * v: bs * (v + 1)].float() / t
            sub -= torch.mean(torch.sum(q * F.log_softmax(x, dim=1), dim=1))
        loss += sub / (n_crops - 1)
    return loss / 2
