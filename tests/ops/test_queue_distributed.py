"""MoCo v2 / SwAV pieces on 2 gloo ranks equal 1 process on the global batch.

One spawn of 2 ranks per module (starting processes is the slow part) runs:
- ``info_nce(q, k, queue=...)`` with gather_distributed=True, both backends, through a shared linear
  projector: (a) the mean of the ranks' losses is the single-process loss, (b) each rank's
  gradient w.r.t. its q and k rows is world_size × the single-process rows, (c) the rank-averaged
  projector gradient (DDP's all-reduce mean) is the single-process one;
- ``sinkhorn(..., gather_distributed=True)``: each rank's codes are its rows of the single-process
  codes of the global batch (equal local batches, and unequal ones: 2 + 5);
- ``KeyQueue.enqueue``: keys of both ranks land in rank order, oldest slots first, the pointer
  advances by the global batch mod K, both ranks hold the same queue; K not a multiple of the
  GLOBAL batch (9 with 2 × 3 keys, a multiple of the local 3) is refused on every rank.
"""
from __future__ import annotations

import pytest
import torch
from _contrastive_loop_ref import check_fp32
from _helpers import backend_device as _device, run_on_ranks

from fastssl.models.queue import KeyQueue
from fastssl.ops import info_nce, sinkhorn

WORLD = 2
N, D_IN, D, CHUNKS, K, TAU = 6, 12, 16, 2, 20, 0.2  # 3 samples per rank: odd local sizes
BACKENDS = ["reference", "triton"]
SINKHORN_SPLITS = {"equal": (3, 3), "unequal": (2, 5)}  # local batch sizes per rank
Q_SIZE, Q_STEPS = 12, 5  # ring of 12 slots, 5 steps of 2 × 3 keys: wraps around twice


def _info_nce_case(backend: str, data: dict, lo: int, hi: int, gather: bool) -> dict:
    dev = _device(backend)
    proj = torch.nn.Linear(D_IN, D).to(dev)
    with torch.no_grad():
        proj.weight.copy_(data["weight"])
        proj.bias.copy_(data["bias"])
    q = proj(data["xq"][:, lo:hi].to(dev))  # [CHUNKS, n, D]
    k = proj(data["xk"][lo:hi].to(dev))
    q.retain_grad()
    k.retain_grad()
    loss = info_nce(q, k, TAU, queue=data["queue"].to(dev), gather_distributed=gather, backend=backend)
    loss.backward()
    return {"loss": loss.detach().cpu(), "gq": q.grad.cpu(), "gk": k.grad.cpu(),
            "gw": proj.weight.grad.cpu(), "gbias": proj.bias.grad.cpu()}


def _tag(step: int, rank: int, i: int) -> float:
    return 100.0 * step + 10.0 * rank + i


def _queue_run(rank: int) -> dict:
    queue = KeyQueue(Q_SIZE, 4, seed=3)
    n = N // WORLD
    states = []
    for step in range(Q_STEPS):
        keys = torch.tensor([[_tag(step, rank, i)] * 4 for i in range(n)])
        queue.enqueue(keys)
        states.append((queue.keys.clone(), int(queue.ptr), int(queue.filled), queue.full()))
    bad = KeyQueue(9, 4)
    try:
        bad.enqueue(torch.zeros(n, 4))
        error = None
    except ValueError as err:
        error = str(err)
    return {"states": states, "error": error}


def _rank_results(rank: int, data: dict) -> dict:
    n = N // WORLD
    res = {("info_nce", b): _info_nce_case(b, data, rank * n, (rank + 1) * n, gather=True) for b in BACKENDS}
    for name, sizes in SINKHORN_SPLITS.items():
        lo = sum(sizes[:rank])
        res[("sinkhorn", name)] = sinkhorn(data["scores"][lo:lo + sizes[rank]], 0.05, 3, gather_distributed=True)
    res["queue"] = _queue_run(rank)
    return res


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    g = torch.Generator().manual_seed(torch.seed() % 2**31)  # fresh per run, shared by both ranks
    data = {
        "xq": torch.randn(CHUNKS, N, D_IN, generator=g), "xk": torch.randn(N, D_IN, generator=g),
        "queue": torch.randn(K, D, generator=g) * 2, "scores": torch.rand(7, 13, generator=g) * 2 - 1,
        "weight": torch.randn(D, D_IN, generator=g) / D_IN**0.5, "bias": torch.randn(D, generator=g) * 0.1,
    }
    return data, run_on_ranks(_rank_results, data, tmp_path_factory.mktemp("queue_dist"), WORLD)


@pytest.mark.parametrize("backend", BACKENDS)
def test_queue_info_nce_two_ranks_match_single_process(runs, backend):
    data, ranks = runs
    single = _info_nce_case(backend, data, 0, N, gather=False)
    per_rank = [r[("info_nce", backend)] for r in ranks]
    n = N // WORLD
    check_fp32(f"{backend} loss", sum(r["loss"] for r in per_rank) / WORLD, single["loss"].double())
    for rank, r in enumerate(per_rank):
        lo, hi = rank * n, (rank + 1) * n
        check_fp32(f"{backend} dq rank{rank}", r["gq"], WORLD * single["gq"][:, lo:hi].double())
        check_fp32(f"{backend} dk rank{rank}", r["gk"], WORLD * single["gk"][lo:hi].double())
    for key in ("gw", "gbias"):
        check_fp32(f"{backend} {key}", sum(r[key] for r in per_rank) / WORLD, single[key].double())


@pytest.mark.parametrize("split", list(SINKHORN_SPLITS))
def test_sinkhorn_two_ranks_match_single_process(runs, split):
    data, ranks = runs
    single = sinkhorn(data["scores"][:sum(SINKHORN_SPLITS[split])], 0.05, 3)  # the global batch
    got = torch.cat([r[("sinkhorn", split)] for r in ranks])
    check_fp32(f"sinkhorn {split}", got, single.double(), rtol=2e-5)


def test_key_queue_order_across_ranks(runs):
    _, ranks = runs
    n, b = N // WORLD, N
    start = KeyQueue(Q_SIZE, 4, seed=3).keys
    expected = start.clone()
    for step in range(Q_STEPS):
        for rank in range(WORLD):  # rank order within a step, the oldest slots first
            for i in range(n):
                expected[(step * b + rank * n + i) % Q_SIZE] = _tag(step, rank, i)
        for r, res in enumerate(ranks):
            keys, ptr, filled, full = res["queue"]["states"][step]
            assert torch.equal(keys, expected), f"rank {r} step {step}:\n{keys[:, 0]}\n!=\n{expected[:, 0]}"
            assert ptr == (step + 1) * b % Q_SIZE
            assert filled == min((step + 1) * b, Q_SIZE) and full == ((step + 1) * b >= Q_SIZE)
    for res in ranks:
        assert res["queue"]["error"] is not None and "multiple of the global batch" in res["queue"]["error"]
