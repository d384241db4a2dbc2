"""A method's gathered negatives on 2 gloo ranks equal 1 rank on the global batch (MoCo v3, SimCLR).

Each rank holds half of the global batch of both views (view-major ``[2b, D]`` per rank); with
``gather_distributed`` the mean of the ranks' losses must equal the single-process loss on the
global batch, and each rank's gradient w.r.t. its rows world_size × the single-process gradient
of those rows (DDP then averages)."""
from __future__ import annotations

import torch
from _helpers import run_on_ranks, view_rows as _rows

from fastssl.methods.mocov3 import MoCoV3, MoCoV3Config
from fastssl.methods.simclr import SimCLR, SimCLRConfig

WORLD, B, D = 2, 5, 12  # 5 images per rank: odd local size


def _loss_module(name: str, gather: bool):
    """The method object with only its config (its .loss needs nothing else)."""
    cls, cfg = {"mocov3": (MoCoV3, MoCoV3Config(temperature=0.2, gather_distributed=gather, backend="reference")),
                "simclr": (SimCLR, SimCLRConfig(loss="nt_xent", gather_distributed=gather, backend="reference"))}[name]
    m = cls.__new__(cls)
    torch.nn.Module.__init__(m)
    m.cfg = cfg
    return m


def _step(name: str, q: torch.Tensor, k: torch.Tensor, gather: bool):
    q = q.clone().requires_grad_(True)
    m = _loss_module(name, gather)
    loss = m.loss(q, k) if name == "mocov3" else m.loss(*q.chunk(2))
    loss.backward()
    return loss.detach(), q.grad


def _rank_results(rank: int, data: dict) -> dict:
    out = {}
    for name in ("mocov3", "simclr"):
        q, k = _rows(data["q"], rank * B, (rank + 1) * B), _rows(data["k"], rank * B, (rank + 1) * B)
        out[name] = _step(name, q, k, gather=True)
    return out


def test_gathered_negatives_match_the_global_batch(tmp_path):
    data = {"q": torch.randn(2 * WORLD * B, D, dtype=torch.float64), "k": torch.randn(2 * WORLD * B, D, dtype=torch.float64)}
    ranks = run_on_ranks(_rank_results, data, tmp_path, WORLD)
    for name in ("mocov3", "simclr"):
        loss, grad = _step(name, data["q"], data["k"], gather=False)
        torch.testing.assert_close(sum(r[name][0] for r in ranks) / WORLD, loss, rtol=1e-5, atol=1e-6)  # the ops compute in fp32
        for r, res in enumerate(ranks):
            torch.testing.assert_close(res[name][1], WORLD * _rows(grad, r * B, (r + 1) * B), rtol=1e-4, atol=1e-6)
