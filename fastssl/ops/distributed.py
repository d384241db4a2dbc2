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


# The single-tensor collectives under their current names (torch >= 2.13 deprecates the older ones,
# which the GPU machine's torch 2.11 still has alone).
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """[world·n, ...]: every rank's ``x`` in rank order, gathered straight into one tensor (no list of
    parts and no concatenated copy)."""
    x = x.contiguous()
    out = x.new_empty((dist.get_world_size() * x.shape[0],) + tuple(x.shape[1:]))
    _all_gather_single(out, x)
    return out


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return all_gather_rows(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Sum every rank's gradient of the gathered tensor and keep our block: a reduce-scatter, which
        # moves half the bytes of an all-reduce followed by a slice.
        return reduce_scatter_rows(grad)


def reduce_scatter_rows(grad: torch.Tensor) -> torch.Tensor:
    """Our block of Σ over ranks of ``grad`` [world·n, ...] (the backward of ``all_gather_rows``)."""
    world = dist.get_world_size()
    out = grad.new_empty((grad.shape[0] // world,) + tuple(grad.shape[1:]))
    _reduce_scatter_single(out, grad.contiguous())
    return out


def check_equal_rows(x: torch.Tensor) -> None:
    """Raise in one line unless every rank holds as many rows as ``x`` (a gather of unequal blocks would
    hang or mix rows). One small all-gather and a host read: the one sync of a gathered loss."""
    world = dist.get_world_size()
    sizes = [torch.zeros((), dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor(x.shape[0], device=x.device))
    if any(int(s) != x.shape[0] for s in sizes):
        raise ValueError(f"gather_distributed needs the same batch size on every rank, got {[int(s) for s in sizes]}")


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate ``x [n, ...]`` from all ranks along dim 0; returns (gathered, row offset of ours).

    Every rank must pass the same ``n``. Gradients flow back to the owning rank (summed over ranks).
    Without an initialised process group this is the identity with offset 0.
    """
    rank, world = world_info()
    if world == 1:
        return x, 0
    check_equal_rows(x)
    if x.requires_grad:
        return _GatherWithGrad.apply(x), rank * x.shape[0]
    return all_gather_rows(x), rank * x.shape[0]
