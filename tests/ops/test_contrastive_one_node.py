"""The contrastive losses eagerly as one autograd node each: NT-Xent, DCL and DCLW in one process
(``fastssl.ops.contrastive_nodes._TwoViewDoor``: normalisation, loss and mean, three nodes on the ops' path)
and InfoNCE whose keys need no gradient (``_QueryDoor``: the queries' normalisation, the loss against
the keys or MoCo v2's queue, the mean; two nodes on the ops' path).

The door calls the same bodies and launchers as the ops' path in the same order, so its loss and
gradients must equal that path's bit for bit (``OPTIONS["one_node"] = False``), here under an
upstream gradient of 2.5, odd sizes, fp32 and bf16, both views or one of them requiring a gradient.
Its values against the float64 loop references are the nt_xent / dcl / info_nce cases of
test_contrastive.py and test_info_nce_queue.py, which now run through them (frozen keys). The cases the door leaves to the ops' path are checked to do so.
"""
from __future__ import annotations

import pytest
import torch
from _contrastive_loop_ref import check_fp32, dcl_loop, nt_xent_loop
from _helpers import backend_device, fresh_seed as _seed, rand_rows as _rand

import fastssl.ops.contrastive as C
from fastssl.ops import dcl, info_nce, nt_xent

DEV = backend_device("triton")
LOSSES = {
    "nt_xent": (nt_xent, nt_xent_loop),
    "dcl": (dcl, dcl_loop),
    "dclw": (lambda a, b, t, **kw: dcl(a, b, t, weight_sigma=0.5, **kw), lambda a, b, t: dcl_loop(a, b, t, 0.5)),
}


def _run(loss, z1, z2, which: str, one_node: bool, monkeypatch):
    monkeypatch.setitem(C.OPTIONS, "one_node", one_node)
    a = z1.detach().clone().requires_grad_(which in ("both", "z1"))
    b = z2.detach().clone().requires_grad_(which == "both")
    out = loss(a, b, 0.2, backend="triton")
    (2.5 * out).backward()
    return out, [out.detach()] + [x.grad for x in (a, b) if x.requires_grad]


@pytest.mark.parametrize("which", ["both", "z1"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_one_node_equals_the_ops_path_bit_for_bit(name, dtype, which, monkeypatch):
    seed = _seed()
    z1, z2 = (_rand(13, 40).to(dtype).to(DEV) for _ in range(2))
    loss = LOSSES[name][0]
    out, got = _run(loss, z1, z2, which, True, monkeypatch)
    assert type(out.grad_fn).__name__ == "_TwoViewDoorBackward", type(out.grad_fn).__name__
    # one node, straight to the leaves
    assert all(type(n).__name__ == "AccumulateGrad" for n, _ in out.grad_fn.next_functions if n is not None)
    _, want = _run(loss, z1, z2, which, False, monkeypatch)
    for i, (g, w) in enumerate(zip(got, want)):
        assert torch.equal(g, w), f"{name} {dtype} {which} seed={seed}: output {i} differs from the ops' path"
    if dtype == torch.float32:  # and the independent reference, in float64
        ref = LOSSES[name][1]
        a, b = z1.double().cpu().requires_grad_(), z2.double().cpu().requires_grad_()
        r = ref(a, b, 0.2)
        (2.5 * r).backward()
        for i, (g, rv) in enumerate(zip(got, [r.detach(), a.grad, b.grad])):
            check_fp32(f"{name} seed={seed} output {i} vs float64 loop", g.cpu(), rv, scale=1 / (0.2 * 0.5))


def test_the_ops_path_where_the_door_does_not_apply():
    """Strided views (the unit kernel wants unit stride along D) take the ops' path; so does the
    reference backend."""
    big = _rand(9, 32).float().to(DEV)
    strided = big[:, ::2].requires_grad_()
    other = _rand(9, 16).float().to(DEV).requires_grad_()
    assert type(nt_xent(strided, other, 0.2, backend="triton").grad_fn).__name__.startswith("MeanDoor")
    assert type(nt_xent(other.cpu(), other.cpu() * 2, 0.2, backend="reference").grad_fn).__name__ == "MeanBackward0"


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gather_on_one_rank_is_the_single_process_loss(name, backend, monkeypatch):
    """Every method asks to gather by default, and a one-GPU run has one rank: that must be the
    single-process loss (no concatenated copy of the rows, the symmetric backward, the one-node
    door), the same values bit for bit. Before, gather_distributed=True on one rank concatenated
    the views into separate columns and ran a backward per operand."""
    seed = _seed()
    dev = backend_device(backend)
    z1, z2 = (_rand(11, 24).float().to(dev) for _ in range(2))
    loss = LOSSES[name][0]
    results = []
    for gather in (True, False):
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        out = loss(a, b, 0.2, gather_distributed=gather, backend=backend)
        (2.5 * out).backward()
        results.append((type(out.grad_fn).__name__, [out.detach(), a.grad, b.grad]))
    (node, got), (node_single, want) = results
    assert node == node_single, (node, node_single)
    if backend == "triton":
        assert node == "_TwoViewDoorBackward"
    for i, (g, w) in enumerate(zip(got, want)):
        assert torch.equal(g, w), f"{name} {backend} seed={seed}: output {i}"


QUERY_CASES = {  # (q shape, queue length or None): M-MoCo's chunks, MoCo v3, MoCo v2's queue
    "chunks": ((3, 7, 40), None),
    "in_batch": ((9, 40), None),
    "queue": ((9, 40), 37),
}


def _run_query(q, k, queue, one_node: bool, monkeypatch):
    monkeypatch.setitem(C.OPTIONS, "one_node", one_node)
    leaf = q.detach().clone().requires_grad_()
    out = info_nce(leaf, k, 0.2, queue=queue, unit_queue=queue is not None, backend="triton")
    (2.5 * out).backward()
    return out, [out.detach(), leaf.grad]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", sorted(QUERY_CASES))
def test_query_node_equals_the_ops_path_bit_for_bit(case, dtype, monkeypatch):
    seed = _seed()
    shape, kq = QUERY_CASES[case]
    q = _rand(*shape).to(dtype).to(DEV)
    k = _rand(shape[-2], shape[-1]).to(dtype).to(DEV)  # momentum keys: no gradient
    queue = torch.nn.functional.normalize(_rand(kq, shape[-1]), dim=1).to(dtype).to(DEV) if kq else None
    out, got = _run_query(q, k, queue, True, monkeypatch)
    assert type(out.grad_fn).__name__ == "_QueryDoorBackward", type(out.grad_fn).__name__
    _, want = _run_query(q, k, queue, False, monkeypatch)
    for i, (g, w) in enumerate(zip(got, want)):
        assert torch.equal(g, w), f"{case} {dtype} seed={seed}: output {i} differs from the ops' path"


def test_query_node_leaves_keys_with_a_gradient_to_the_ops_path():
    q, k = (_rand(9, 16).float().to(DEV).requires_grad_() for _ in range(2))
    out = info_nce(q, k, 0.2, backend="triton")
    assert type(out.grad_fn).__name__.startswith("MeanDoor")
    out.backward()
    assert k.grad is not None
    with torch.no_grad():  # nothing to differentiate: no node at all
        assert info_nce(q, k.detach(), 0.2, backend="triton").grad_fn is None
