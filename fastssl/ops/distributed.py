"""All-gather with a gradient, for contrastive negatives drawn from every rank.

Convention (the one DDP/DeepSpeed assume): each rank's loss is the mean over its *local* anchors
and the engine averages parameter gradients over ranks. Then the averaged gradient equals the
single-process gradient on the global batch exactly when the backward of the gather SUMS the
gradients every rank computed for a gathered block and hands the sum to the block's owner.
Averaging instead of summing there is the classic 1/world_size bug; dropping the other ranks'
contributions (gathering without grad) is the other one.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def world_info() -> tuple[int, int]:
    """(rank, world_size); (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate ``x [n, ...]`` from all ranks along dim 0; returns (gathered, row offset of ours).

    Every rank must pass the same ``n``. Gradients flow back to the owning rank (summed over ranks).
    Without an initialised process group this is the identity with offset 0.
    """
    rank, world = world_info()
    if world == 1:
        return x, 0
    sizes = [torch.zeros((), dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor(x.shape[0], device=x.device))
    if any(int(s) != x.shape[0] for s in sizes):
        raise ValueError(f"gather_distributed needs the same batch size on every rank, got {[int(s) for s in sizes]}")
    if x.requires_grad:
        return _GatherWithGrad.apply(x), rank * x.shape[0]
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0), rank * x.shape[0]
