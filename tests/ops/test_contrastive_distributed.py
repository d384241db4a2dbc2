"""gather_distributed=True on 2 gloo ranks equals the single-process run on the global batch.

Both ranks hold the same tiny linear projector and half of the global batch each. For every op
and backend we check the DDP convention of ``fastssl.ops.distributed``:
(a) the mean of the two ranks' losses equals the single-process loss on the global batch;
(b) each rank's gradient w.r.t. its own op inputs equals world_size × the single-process gradient
    w.r.t. those rows (its loss is a mean over half as many anchors);
(c) the rank-averaged projector gradient (what DDP's all-reduce computes) equals the
    single-process projector gradient.
The ranks run once per module (one spawn: starting processes is the slow part) and save their
results; the single-process runs happen here, in the test process.
"""
from __future__ import annotations

import pytest
import torch
from _contrastive_loop_ref import check_fp32
from _helpers import backend_device as _device, run_on_ranks

from fastssl.ops import dcl, info_nce, nt_xent

WORLD = 2
N, D_IN, D, CHUNKS, TAU = 6, 12, 16, 2, 0.1  # 3 samples per rank: odd local sizes
BACKENDS = ["reference", "triton"]
# info_nce_frozen_k: momentum-encoder keys without grad (the gather without autograd path).
CASES = ["nt_xent", "dcl", "dclw", "info_nce", "info_nce_frozen_k"]


def _run_case(case: str, backend: str, data: dict, lo: int, hi: int, gather: bool) -> dict:
    """Loss and gradients for global samples [lo, hi) through the shared projector."""
    dev = _device(backend)
    proj = torch.nn.Linear(D_IN, D).to(dev)
    with torch.no_grad():
        proj.weight.copy_(data["weight"])
        proj.bias.copy_(data["bias"])
    if case.startswith("info_nce"):
        a = proj(data["xq"][:, lo:hi].to(dev))  # q [CHUNKS, n, D]
        if case == "info_nce_frozen_k":
            with torch.no_grad():
                b = proj(data["xk"][lo:hi].to(dev))
        else:
            b = proj(data["xk"][lo:hi].to(dev))
    else:
        a, b = proj(data["x1"][lo:hi].to(dev)), proj(data["x2"][lo:hi].to(dev))
    for t in (a, b):
        if t.requires_grad:
            t.retain_grad()
    if case == "nt_xent":
        loss = nt_xent(a, b, TAU, gather_distributed=gather, backend=backend)
    elif case == "dcl":
        loss = dcl(a, b, TAU, gather_distributed=gather, backend=backend)
    elif case == "dclw":
        loss = dcl(a, b, TAU, weight_sigma=0.5, gather_distributed=gather, backend=backend)
    else:
        loss = info_nce(a, b, TAU, gather_distributed=gather, backend=backend)
    loss.backward()
    grab = lambda t: None if t is None else t.detach().cpu()  # noqa: E731
    return {"loss": grab(loss), "ga": grab(a.grad), "gb": grab(b.grad),
            "gw": grab(proj.weight.grad), "gbias": grab(proj.bias.grad)}


def _count_collectives(case: str, backend: str, data: dict, lo: int, hi: int) -> dict:
    """The collectives one forward + backward of ``case`` issues on this rank, by kind."""
    import torch.distributed as dist

    import fastssl.ops.distributed as D

    counts = {"size_gather": 0, "gather": 0, "reduce_scatter": 0}
    real = (dist.all_gather, D._all_gather_single, D._reduce_scatter_single)

    def counted(kind, fn):
        def wrapper(*args, **kwargs):
            counts[kind] += 1
            return fn(*args, **kwargs)
        return wrapper

    dist.all_gather = counted("size_gather", real[0])
    D._all_gather_single, D._reduce_scatter_single = counted("gather", real[1]), counted("reduce_scatter", real[2])
    try:
        _run_case(case, backend, data, lo, hi, gather=True)
    finally:
        dist.all_gather, D._all_gather_single, D._reduce_scatter_single = real
    return counts


def _one_node_vs_chain(case: str, data: dict, lo: int, hi: int) -> dict:
    """The gathered loss through its one-node door and through the ops' chain of nodes: the door taken,
    the values, the gradients and the torch ops each path dispatches per call (forward + backward)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import fastssl.ops.contrastive as C

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count = getattr(self, "count", 0) + 1
            return func(*args, **(kwargs or {}))

    out = {}
    for one_node in (True, False):
        C.OPTIONS["one_node"] = one_node
        try:
            a = data["x1"][lo:hi].clone().requires_grad_()
            b = data["x2"][lo:hi].clone().requires_grad_()
            with Ops() as ops:
                loss = (nt_xent if case == "nt_xent" else dcl)(a, b, TAU, gather_distributed=True, backend="triton",
                                                               **({"weight_sigma": 0.5} if case == "dclw" else {}))
                node = type(loss.grad_fn).__name__
                loss.backward()
        finally:
            C.OPTIONS["one_node"] = True
        out[one_node] = {"node": node, "ops": ops.count, "values": [loss.detach(), a.grad, b.grad]}
    return out


def _rank_results(rank: int, data: dict) -> dict:
    n = N // WORLD
    out = {(c, b): _run_case(c, b, data, rank * n, (rank + 1) * n, gather=True) for c in CASES for b in BACKENDS}
    out.update({("one_node", c): _one_node_vs_chain(c, data, rank * n, (rank + 1) * n) for c in ("nt_xent", "dcl", "dclw")})
    out.update({("collectives", c, b): _count_collectives(c, b, data, rank * n, (rank + 1) * n)
                for c in ("nt_xent", "dclw") for b in BACKENDS})
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    g = torch.Generator().manual_seed(torch.seed() % 2**31)  # fresh per run, shared by both ranks
    data = {
        "x1": torch.randn(N, D_IN, generator=g), "x2": torch.randn(N, D_IN, generator=g),
        "xq": torch.randn(CHUNKS, N, D_IN, generator=g), "xk": torch.randn(N, D_IN, generator=g),
        "weight": torch.randn(D, D_IN, generator=g) / D_IN**0.5, "bias": torch.randn(D, generator=g) * 0.1,
    }
    return data, run_on_ranks(_rank_results, data, tmp_path_factory.mktemp("contrastive_dist"), WORLD)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_two_ranks_match_single_process(runs, case, backend):
    data, ranks = runs
    single = _run_case(case, backend, data, 0, N, gather=False)
    per_rank = [r[(case, backend)] for r in ranks]
    name = f"{case}/{backend}"
    n = N // WORLD
    # (a) loss
    check_fp32(f"{name} loss", sum(r["loss"] for r in per_rank) / WORLD, single["loss"].double())
    # (b) gradients w.r.t. each rank's op inputs: world_size × the single-process rows
    for rank, r in enumerate(per_rank):
        lo, hi = rank * n, (rank + 1) * n
        if case.startswith("info_nce"):
            check_fp32(f"{name} dq rank{rank}", r["ga"], WORLD * single["ga"][:, lo:hi].double())
        else:
            check_fp32(f"{name} dz1 rank{rank}", r["ga"], WORLD * single["ga"][lo:hi].double())
        if case == "info_nce_frozen_k":
            assert r["gb"] is None and single["gb"] is None
        else:
            check_fp32(f"{name} d{'k' if 'info' in case else 'z2'} rank{rank}", r["gb"], WORLD * single["gb"][lo:hi].double())
    # (c) the rank-averaged projector gradient (DDP's all-reduce mean) is the single-process one
    for key in ("gw", "gbias"):
        check_fp32(f"{name} {key}", sum(r[key] for r in per_rank) / WORLD, single[key].double())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["nt_xent", "dclw"])
def test_two_view_losses_gather_once(runs, case, backend):
    """Both views in one gather: one size check, one all-gather forward, one reduce-scatter backward
    per call (two of each before, and an all-reduce of the whole gathered gradient)."""
    _, ranks = runs
    for rank, r in enumerate(ranks):
        got = r[("collectives", case, backend)]
        assert got == {"size_gather": 1, "gather": 1, "reduce_scatter": 1}, (rank, got)


@pytest.mark.parametrize("world,rank", [(3, 0), (3, 2), (4, 1)])
def test_rank_major_index_points_at_the_right_views(world, rank):
    """The gathered columns are every rank's rows [z1_r; z2_r] in rank order; for any rank, row a's
    self index must land on row a itself and its positive index on the other view of its sample."""
    from fastssl.ops.contrastive import _rank_major_index

    n, d = 5, 3
    ranks = [torch.randn(2 * n, d) for _ in range(world)]  # each rank's [z1; z2]
    cols = torch.cat(ranks)
    rows = ranks[rank]
    pos, self_idx = _rank_major_index(n, rank * 2 * n, torch.device("cpu"))
    assert torch.equal(cols[self_idx.long()], rows)
    assert torch.equal(cols[pos.long()], torch.cat([rows[n:], rows[:n]]))


@pytest.mark.parametrize("case", ["nt_xent", "dcl", "dclw"])
def test_gathered_two_view_loss_is_one_node_bit_for_bit(runs, case):
    """Over 2 ranks the two-view losses take one autograd node (normalisation, gather, loss, mean) with
    the values and gradients of the ops' chain of nodes bit for bit, and fewer torch ops per call."""
    _, ranks = runs
    for rank, r in enumerate(ranks):
        one, chain = r[("one_node", case)][True], r[("one_node", case)][False]
        assert one["node"] == "_TwoViewDoorBackward" and chain["node"].startswith("MeanDoor"), (one["node"], chain["node"])
        for i, (g, w) in enumerate(zip(one["values"], chain["values"])):
            assert torch.equal(g, w), f"{case} rank {rank}: output {i} differs from the chain of nodes"
        assert one["ops"] < chain["ops"], (one["ops"], chain["ops"])
