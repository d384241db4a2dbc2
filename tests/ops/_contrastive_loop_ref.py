"""Float64 loop references for the contrastive ops, written straight from the papers' equations.

Independent of the code under test: nothing here imports fastssl. Every function takes float64
tensors (upcast copies of the inputs the op saw) and is differentiable through plain autograd, so
the tests get reference gradients too. One Python iteration per anchor; the sum over candidates
inside an anchor is a small vector expression, kept close to the written formula.

Also here: the plain eager PyTorch a user would write (full similarity matrix + cross-entropy, in
the inputs' dtype), the "eager-same-dtype" baseline of DESIGN's low-precision tolerance rule.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _unit(v: torch.Tensor) -> torch.Tensor:
    """v / ||v||_2 for a 1-D vector."""
    return v / torch.sqrt((v * v).sum())


def _views(z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Z [2N, D] = the unit rows z_1^(1)..z_N^(1), z_1^(2)..z_N^(2), and G = Z·Zᵀ, all <z_i^k, z_j^l>."""
    z = torch.stack([_unit(v) for v in torch.cat([z1, z2])])
    return z, z @ z.t()


def _at(k: int, i: int, n: int) -> int:
    """Row of z_i^(k) (k ∈ {1, 2}) in Z."""
    return (k - 1) * n + i


def _two_view_sets(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For every anchor z_i^(k) (row a = _at(k, i, n)): the row of the positive pair's other member
    and a mask of its negatives {z_j^(l) : l ∈ {1, 2}, j ≠ i}, built one anchor at a time."""
    partner = torch.zeros(2 * n, dtype=torch.long)
    negatives = torch.zeros(2 * n, 2 * n, dtype=torch.bool)
    for k in (1, 2):
        for i in range(n):
            a = _at(k, i, n)
            partner[a] = _at(3 - k, i, n)
            negatives[a, [_at(l, j, n) for l in (1, 2) for j in range(n) if j != i]] = True
    return partner, negatives


def nt_xent_loop(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """DCL paper eq. 1 (SimCLR), averaged over the 2N views instead of summed.

    L_i^(k) = -log exp(<z_i^1, z_i^2>/τ) / [exp(<z_i^1, z_i^2>/τ) + Σ_{l∈{1,2}, j≠i} exp(<z_i^k, z_j^l>/τ)]
    """
    _, g = _views(z1, z2)
    partner, negatives = _two_view_sets(z1.shape[0])
    rows = torch.arange(g.shape[0])
    pos = torch.exp(g[rows, partner] / tau)  # <z_i^k, z_i^(3-k)> = <z_i^1, z_i^2>
    neg = (torch.exp(g / tau) * negatives).sum(dim=1)
    return (-torch.log(pos / (pos + neg))).mean()


def dcl_loop(z1: torch.Tensor, z2: torch.Tensor, tau: float, sigma: float | None = None) -> torch.Tensor:
    """DCL paper eq. 5 (sigma None) or eq. 6 (DCLW), averaged over the 2N views.

    L_DC,i^(k)  = -<z_i^1, z_i^2>/τ + log Σ_{l∈{1,2}, j≠i} exp(<z_i^k, z_j^l>/τ)
    L_DCW,i^(k) = -w_i <z_i^1, z_i^2>/τ + (same log-sum),
    w_i = 2 - exp(<z_i^1, z_i^2>/σ) / E_i[exp(<z_i^1, z_i^2>/σ)], a constant (no gradient through w).
    """
    n = z1.shape[0]
    _, g = _views(z1, z2)
    partner, negatives = _two_view_sets(n)
    rows = torch.arange(2 * n)
    pos = g[rows, partner]
    w = torch.ones(2 * n, dtype=g.dtype)
    if sigma is not None:
        with torch.no_grad():
            e = torch.exp(pos[:n] / sigma)  # i = 1..N
            w = (2.0 - e / e.mean()).repeat(2)  # the same w_i for k = 1 and k = 2
    neg = (torch.exp(g / tau) * negatives).sum(dim=1)
    return (-w * pos / tau + torch.log(neg)).mean()


def info_nce_loop(q: torch.Tensor, k: torch.Tensor, tau: float) -> torch.Tensor:
    """MoCo v3 InfoNCE (masked_moco_byol eq. 1) averaged over query chunks (eq. 3).

    q: [N, D] or [n, N, D], k: [N, D]. For chunk c and image i: cross-entropy of the logits
    q_c,i·k_j/τ (j = 0..N-1, unit vectors) with label i; the mean over all n·N query rows.
    """
    if q.ndim == 2:
        q = q.unsqueeze(0)
    keys = torch.stack([_unit(v) for v in k])
    per_chunk = []
    for chunk in q:
        queries = torch.stack([_unit(v) for v in chunk])
        logits = queries @ keys.t() / tau  # [N, N], row i's label is i
        per_chunk.append(-torch.log(torch.exp(logits.diagonal()) / torch.exp(logits).sum(dim=1)))
    return torch.cat(per_chunk).mean()


def info_nce_queue_loop(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, tau: float) -> torch.Tensor:
    """MoCo v2 InfoNCE with a queue (MoCo v2's official code: logits [l_pos, l_neg], label 0).

    q: [N, D] or [n, N, D], k: [N, D], queue: [K, D]. For each query row (chunk c, image i), with
    unit vectors: -log exp(q·k_i/τ) / (exp(q·k_i/τ) + Σ_j exp(q·queue_j/τ)); the other keys of
    the batch are not negatives. Mean over all query rows. The queue is a constant (no gradient).
    """
    if q.ndim == 2:
        q = q.unsqueeze(0)
    negatives = torch.stack([_unit(v) for v in queue.detach()])
    out = []
    for chunk in q:
        for i in range(chunk.shape[0]):
            query = _unit(chunk[i])
            l_pos = torch.dot(query, _unit(k[i])) / tau
            l_neg = negatives @ query / tau  # [K]
            out.append(-(l_pos - torch.log(torch.exp(l_pos) + torch.exp(l_neg).sum())))
    return torch.stack(out).mean()


def rows_loop(rows, cols, pos_idx, excl_idx, tau, pos_weight=None, exclude_pos=False) -> torch.Tensor:
    """The core contract, one row at a time: loss[a] = -w[a]·s[a,pos[a]] + log Σ_{c allowed} exp(s[a,c]),
    s = rows·colsᵀ/τ, allowed = every c except excl[a] (if >= 0) and, with exclude_pos, pos[a]."""
    out = []
    for a in range(rows.shape[0]):
        p, e = int(pos_idx[a]), int(excl_idx[a])
        allowed = torch.tensor([c for c in range(cols.shape[0]) if c != e and not (exclude_pos and c == p)])
        s = cols[allowed] @ rows[a] / tau
        w = 1.0 if pos_weight is None else float(pos_weight[a])
        out.append(-w * torch.dot(rows[a], cols[p]) / tau + torch.log(torch.exp(s).sum()))
    return torch.stack(out)


def spherical_mean_loop(keys: torch.Tensor) -> torch.Tensor:
    """masked_moco_byol eq. 4 with unit chunk keys: k̂_i = Σ_j u_ji / ||Σ_j u_ji||, u_ji = k_ji/||k_ji||."""
    out = []
    for i in range(keys.shape[1]):
        total = sum(_unit(keys[j, i]) for j in range(keys.shape[0]))
        out.append(_unit(total))
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------
# Plain eager code a user would write, in the inputs' own dtype (tolerance baseline)
# ---------------------------------------------------------------------------------------------
def eager_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = (z @ z.t() / tau).masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    labels = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, labels)


def eager_dcl(z1: torch.Tensor, z2: torch.Tensor, tau: float, sigma: float | None = None) -> torch.Tensor:
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.t() / tau
    pos = (z[:n] * z[n:]).sum(1)
    drop = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    drop |= torch.eye(2 * n, dtype=torch.bool, device=z.device).roll(n, dims=1)
    neg = torch.logsumexp(sim.masked_fill(drop, float("-inf")), dim=1)
    w = torch.ones_like(pos)
    if sigma is not None:
        w = (2 - n * torch.softmax(pos.detach() / sigma, dim=0))
    return (neg - torch.cat([w * pos, w * pos]) / tau).mean()


def eager_info_nce(q: torch.Tensor, k: torch.Tensor, tau: float) -> torch.Tensor:
    if q.ndim == 2:
        q = q.unsqueeze(0)
    qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    logits = torch.einsum("cnd,md->cnm", qn, kn) / tau
    labels = torch.arange(k.shape[0], device=k.device).repeat(q.shape[0])
    return F.cross_entropy(logits.reshape(-1, k.shape[0]), labels)


def eager_info_nce_queue(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, tau: float) -> torch.Tensor:
    """MoCo v2's official loss written plainly: l_pos by einsum, l_neg = q·queueᵀ, cross-entropy to label 0."""
    if q.ndim == 2:
        q = q.unsqueeze(0)
    qn = F.normalize(q, dim=-1).reshape(-1, q.shape[-1])
    kn = F.normalize(k, dim=-1).repeat(q.shape[0], 1)
    negatives = F.normalize(queue.detach(), dim=-1).to(q.dtype)
    l_pos = torch.einsum("nc,nc->n", qn, kn).unsqueeze(-1)
    l_neg = qn @ negatives.t()
    logits = torch.cat([l_pos, l_neg], dim=1) / tau
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=q.device))


# ---------------------------------------------------------------------------------------------
# Comparisons
# ---------------------------------------------------------------------------------------------
def check_fp32(name: str, got: torch.Tensor, ref: torch.Tensor, rtol: float = 2e-5, scale: float = 0.0) -> None:
    """fp32 against float64: |got - ref| <= rtol·max|ref| + 1e-6·scale, over the whole tensor.

    The first term is relative to the largest reference entry (grads hold many tiny entries). The
    second is a floor for results that are small only through cancellation: a loss lse - s_pos
    near 0 when the positive dominates (its terms are ~1/τ) and the matching tiny gradients.
    ``scale`` is the size of those cancelling terms; 1e-6 is ~8 fp32 ulps.
    """
    bound = rtol * ref.abs().max().item() + 1e-6 * scale
    err = (got.double() - ref).abs().max().item()
    assert err <= bound, f"{name}: max |got - ref| = {err:.3g} > {bound:.3g} (max|ref| {ref.abs().max().item():.3g})"


def check_lowp(name: str, got: torch.Tensor, eager: torch.Tensor, ref: torch.Tensor, scale: float = 0.0) -> None:
    """DESIGN's rule |got - ref| <= 2 |eager_same_dtype - ref| + atol, on the max over the tensor.

    Per element (and for a scalar loss), the rounding errors of two differently ordered bf16
    computations are independent draws whose ratio is heavy-tailed, so the factor 2 alone fails at
    random; atol = one bf16 ulp (2^-8) of the larger of max|ref| and ``scale``, the size of the
    terms that cancel in the result (see ``check_fp32``), is the floor that keeps it stable: the
    bf16 inputs and outputs of any pipeline (eager included) carry errors of that order.
    """
    ref = ref.double()
    atol = 2.0**-8 * max(ref.abs().max().item(), scale)
    err_got = (got.double() - ref).abs().max().item()
    err_eager = (eager.double() - ref).abs().max().item()
    assert err_got <= 2 * err_eager + atol, (
        f"{name}: max |got - ref| = {err_got:.3g} > 2 * max |eager - ref| ({err_eager:.3g}) + atol ({atol:.3g})"
    )
