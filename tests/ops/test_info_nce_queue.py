"""info_nce with a MoCo v2 queue, both backends, against the float64 loop reference
``info_nce_queue_loop`` (explicit per-row logits [l_pos, l_neg], written from MoCo v2's code).

Loss and the gradients w.r.t. q and k; the queue gets none. fp32 against float64 directly, bf16
with DESIGN's rule |got - ref| <= 2·|eager_same_dtype - ref| + atol (``check_lowp``). Fresh random
inputs per run (the seed is printed on failure); N ∈ {1, 7, 129, 64}, K ∈ {1, 13, 257, 1000}. The
interpreter splits the queue into 2 chunks from K = 129 on, so K ≥ 257 covers the split merge with
the positive seeded into split 0.
"""
from __future__ import annotations

import pytest
import torch
from _contrastive_loop_ref import check_fp32, check_lowp, eager_info_nce_queue, info_nce_queue_loop
from _helpers import backend_device as _device, fresh_seed as _seed, rand_rows as _rand

from fastssl.ops import info_nce

BACKENDS = ["reference", "triton"]
# (dtype, chunks, N, K, D, τ): every N, K and both D paths (D = 300 takes the kernel's D-block loop).
CASES = [
    (torch.float32, 1, 1, 1, 8, 0.2),
    (torch.float32, 3, 7, 13, 128, 0.1),
    (torch.float32, 1, 129, 1000, 64, 0.2),
    (torch.float32, 2, 7, 257, 300, 0.07),
    (torch.bfloat16, 1, 1, 13, 16, 0.2),
    (torch.bfloat16, 3, 7, 1000, 128, 0.2),
    (torch.bfloat16, 1, 129, 257, 64, 0.1),
    (torch.float32, 1, 64, 256, 256, 0.05),
]
IDS = [f"{str(c[0])[6:]}-c{c[1]}-N{c[2]}-K{c[3]}-D{c[4]}-t{c[5]}" for c in CASES]


def _value_and_grads(fn, q, k, queue):
    """fn(q, k, queue) and its gradients w.r.t. q and k on fresh leaves; the queue is a leaf too
    (requires grad) so that a gradient leaking into it would show."""
    ql, kl = q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
    qu = queue.detach().clone().requires_grad_()
    out = fn(ql, kl, qu)
    out.backward()
    assert qu.grad is None, "the queue must get no gradient"
    return out.detach(), (ql.grad, kl.grad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,chunks,n,kq,d,tau", CASES, ids=IDS)
def test_queue_info_nce_matches_loop_reference(backend, dtype, chunks, n, kq, d, tau):
    seed, dev = _seed(), _device(backend)
    q = _rand(chunks, n, d) if chunks > 1 else _rand(n, d)
    k, queue = _rand(n, d), _rand(kq, d)
    ql, kl, qul = q.to(dtype), k.to(dtype), queue.to(dtype)  # the op's inputs; the reference sees their values
    got = _value_and_grads(lambda a, b, c: info_nce(a, b, tau, queue=c, backend=backend), ql.to(dev), kl.to(dev), qul.to(dev))
    ref = _value_and_grads(lambda a, b, c: info_nce_queue_loop(a, b, c, tau), ql.double(), kl.double(), qul.double())
    rows = chunks * n
    # Terms that cancel in a small result: 1/τ for the loss, 1/(τ·rows·min norm) for a gradient.
    scales = [1 / (tau * rows * x.double().norm(dim=-1).min().item()) for x in (ql, kl)]
    name = f"queue info_nce/{backend} seed={seed}"
    if dtype == torch.float32:
        check_fp32(f"{name} loss", got[0].cpu(), ref[0], scale=1 / tau)
        for which, g, rg, sc in zip("qk", got[1], ref[1], scales):
            check_fp32(f"{name} d{which}", g.cpu(), rg, scale=sc)
    else:
        eager = _value_and_grads(lambda a, b, c: eager_info_nce_queue(a, b, c, tau), ql, kl, qul)
        check_lowp(f"{name} loss", got[0].cpu(), eager[0], ref[0], scale=1 / tau)
        for which, g, eg, rg, sc in zip("qk", got[1], eager[1], ref[1], scales):
            check_lowp(f"{name} d{which}", g.cpu(), eg, rg, scale=sc)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unit_queue_is_not_renormalised(backend, dtype):
    """``unit_queue=True`` (MoCo v2's queue of unit keys): the same loss and gradients as the reference
    that normalises the queue, in fp32 and in bf16 (where the stored keys are unit only to rounding);
    and the op does use the keys as given: a queue scaled by 2 changes the loss."""
    import torch.nn.functional as F

    seed, dev = _seed(), _device(backend)
    q, k = _rand(33, 64), _rand(33, 64)
    queue = F.normalize(_rand(300, 64), dim=1)
    ql, kl, qul = q.to(dtype), k.to(dtype), queue.to(dtype)
    run = lambda a, b, c: info_nce(a, b, 0.1, queue=c, unit_queue=True, backend=backend)  # noqa: E731
    got = _value_and_grads(run, ql.to(dev), kl.to(dev), qul.to(dev))
    ref = _value_and_grads(lambda a, b, c: info_nce_queue_loop(a, b, c, 0.1), ql.double(), kl.double(), qul.double())
    name = f"unit queue/{backend} seed={seed}"
    scales = [1 / (0.1 * 33 * x.double().norm(dim=-1).min().item()) for x in (ql, kl)]
    if dtype == torch.float32:
        check_fp32(f"{name} loss", got[0].cpu(), ref[0], scale=10.0)
        for which, g, rg, sc in zip("qk", got[1], ref[1], scales):
            check_fp32(f"{name} d{which}", g.cpu(), rg, scale=sc)
    else:
        eager = _value_and_grads(lambda a, b, c: eager_info_nce_queue(a, b, c, 0.1), ql, kl, qul)
        check_lowp(f"{name} loss", got[0].cpu(), eager[0], ref[0], scale=10.0)
        for which, g, eg, rg, sc in zip("qk", got[1], eager[1], ref[1], scales):
            check_lowp(f"{name} d{which}", g.cpu(), eg, rg, scale=sc)
    doubled = info_nce(ql.to(dev), kl.to(dev), 0.1, queue=2 * qul.to(dev), unit_queue=True, backend=backend)
    assert not torch.allclose(doubled.cpu(), got[0].cpu(), atol=1e-3), "unit_queue must take the keys as they are"


@pytest.mark.parametrize("backend", BACKENDS)
def test_queue_frozen_keys_and_mixed_dtypes(backend):
    """Momentum keys without grad; an fp32 queue buffer with bf16 queries (the op casts the queue)."""
    seed, dev = _seed(), _device(backend)
    q, k, queue = _rand(9, 32), _rand(9, 32), _rand(40, 32)
    qb = q.to(torch.bfloat16).to(dev).requires_grad_()
    loss = info_nce(qb, k.float().to(dev), 0.2, queue=queue.float().to(dev), backend=backend)
    loss.backward()
    ref_q = q.to(torch.bfloat16).double().requires_grad_()
    ref = info_nce_queue_loop(ref_q, k.float().double(), queue.float().double(), 0.2)
    ref.backward()
    eager_q = q.to(torch.bfloat16).requires_grad_()
    eager = eager_info_nce_queue(eager_q, k.float().to(torch.bfloat16), queue.float(), 0.2)
    eager.backward()
    check_lowp(f"frozen k/{backend} seed={seed} loss", loss.detach().cpu(), eager.detach(), ref.detach(), scale=5.0)
    check_lowp(f"frozen k/{backend} seed={seed} dq", qb.grad.cpu(), eager_q.grad, ref_q.grad, scale=5.0 / 9)


def test_queue_of_the_other_keys_is_the_in_batch_loss():
    """The two contracts agree where they should: a query row whose queue holds exactly the batch's
    other keys has MoCo v3's in-batch loss for that row (written out here from the full matrix)."""
    q, k = _rand(4, 16).float(), _rand(4, 16).float()
    unit = lambda x: x / x.norm(dim=1, keepdim=True)  # noqa: E731
    full = (unit(q.double()) @ unit(k.double()).t()) / 0.3
    for row in range(4):
        others = torch.cat([k[:row], k[row + 1:]])
        got = info_nce(q[row:row + 1], k[row:row + 1], 0.3, queue=others)
        expected = torch.logsumexp(full[row], 0) - full[row, row]
        check_fp32(f"row {row}", got.double(), expected, scale=1 / 0.3)


def test_queue_argument_errors():
    q, k = torch.randn(4, 8), torch.randn(4, 8)
    with pytest.raises(ValueError, match="queue must be"):
        info_nce(q, k, queue=torch.randn(5, 7))
    with pytest.raises(ValueError, match="queue must be"):
        info_nce(q, k, queue=torch.randn(0, 8))
    with pytest.raises(ValueError, match="N >= 2"):  # without a queue one sample has no negatives
        info_nce(q[:1], k[:1])
    assert torch.isfinite(info_nce(q[:1], k[:1], queue=torch.randn(3, 8)))  # with one it has K
    from fastssl.ops.contrastive import triton_queue_rows

    with pytest.raises(TypeError, match="dtype"):
        triton_queue_rows(q, k, torch.arange(4), torch.randn(3, 8, dtype=torch.bfloat16), 0.1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("keys_grad", [False, True])
def test_in_batch_keys_of_another_dtype(backend, keys_grad):
    """bf16 query chunks against fp32 keys, in-batch (no queue): what M-MoCo hands the op under CUDA
    autocast (its target projector ends in a LayerNorm, run in fp32). The kernels take one dtype; the
    op casts the keys to the queries' (before 2026-12-05 the Triton path raised a TypeError)."""
    from _contrastive_loop_ref import eager_info_nce, info_nce_loop

    seed, dev = _seed(), _device(backend)
    q, k = _rand(3, 7, 32), _rand(7, 32)
    qb = q.to(torch.bfloat16).to(dev).requires_grad_()
    kf = k.float().to(dev).requires_grad_(keys_grad)
    loss = info_nce(qb, kf, 0.2, backend=backend)
    loss.backward()
    assert loss.dtype == torch.float32 and qb.grad.dtype == torch.bfloat16
    ref_q = q.to(torch.bfloat16).double().requires_grad_()
    ref_k = k.float().to(torch.bfloat16).double().requires_grad_()  # the keys as the kernels see them
    ref = info_nce_loop(ref_q, ref_k, 0.2)
    ref.backward()
    eager_q, eager_k = q.to(torch.bfloat16).requires_grad_(), k.float().to(torch.bfloat16).requires_grad_()
    eager = eager_info_nce(eager_q, eager_k, 0.2)
    eager.backward()
    check_lowp(f"mixed k/{backend} seed={seed} loss", loss.detach().cpu(), eager.detach(), ref.detach(), scale=5.0)
    check_lowp(f"mixed k/{backend} seed={seed} dq", qb.grad.cpu(), eager_q.grad, ref_q.grad, scale=5.0 / 21)
    if keys_grad:
        assert kf.grad.dtype == torch.float32
        check_lowp(f"mixed k/{backend} seed={seed} dk", kf.grad.cpu(), eager_k.grad, ref_k.grad, scale=5.0 / 7)
