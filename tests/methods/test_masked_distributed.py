"""Masked MoCo on 2 gloo ranks equals 1 rank on the global batch: the gathered keys (loss and query
gradients, n chunk queries per image) and the chunk permutations each rank draws."""
from __future__ import annotations

import torch
from _helpers import run_on_ranks, view_rows as _rows

from fastssl.methods.masked import global_permutations
from fastssl.methods.mmoco import MMoCo, MMoCoConfig

WORLD, B, N_CHUNKS, D, PATCHES = 2, 5, 3, 12, 25


def _loss(q: torch.Tensor, k: torch.Tensor, gather: bool):
    m = MMoCo.__new__(MMoCo)  # only .loss and .cfg
    torch.nn.Module.__init__(m)
    m.cfg = MMoCoConfig(temperature=0.2, gather_distributed=gather, backend="reference")
    q = q.clone().requires_grad_(True)
    loss = m.loss(q, k)
    loss.backward()
    return loss.detach(), q.grad


def _rank_results(rank: int, data: dict) -> dict:
    lo, hi = rank * B, (rank + 1) * B
    loss, grad = _loss(_rows(data["q"], lo, hi), _rows(data["k"], lo, hi), gather=True)
    perm = global_permutations(torch.Generator().manual_seed(int(data["seed"])), 2, B, PATCHES, torch.device("cpu"))
    return {"loss": loss, "grad": grad, "perm": perm}


def test_two_ranks_equal_one_rank_for_gathered_keys_and_chunks(tmp_path):
    seed = int(torch.randint(0, 2**31, ()))
    data = {"q": torch.randn(N_CHUNKS, 2 * WORLD * B, D, dtype=torch.float64),
            "k": torch.randn(2 * WORLD * B, D, dtype=torch.float64), "seed": seed}
    ranks = run_on_ranks(_rank_results, data, tmp_path, WORLD)
    loss, grad = _loss(data["q"], data["k"], gather=False)
    perm = global_permutations(torch.Generator().manual_seed(seed), 2, WORLD * B, PATCHES, torch.device("cpu"))
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / WORLD, loss, rtol=1e-5, atol=1e-6)  # the op computes in fp32
    for r, res in enumerate(ranks):
        lo, hi = r * B, (r + 1) * B
        # each rank's mean is over its local rows: DDP's gradient average restores the global mean
        torch.testing.assert_close(res["grad"], WORLD * _rows(grad, lo, hi), rtol=1e-4, atol=1e-6)
        assert torch.equal(res["perm"], _rows(perm, lo, hi))
    assert not torch.equal(ranks[0]["perm"], ranks[1]["perm"])
