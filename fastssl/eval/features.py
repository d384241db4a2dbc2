"""Feature extraction for evaluation, sharded over ranks and gathered on every rank."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def _gather_varlen(x: torch.Tensor) -> torch.Tensor:
    """Concatenate [n_r, ...] tensors of possibly different n_r from all ranks (rank order)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return x
    world = dist.get_world_size()
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    biggest = int(max(s.item() for s in sizes))
    padded = torch.zeros((biggest, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


@torch.no_grad()
def extract(encoder: nn.Module, loader, dtype: torch.dtype, *, desc: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``encoder`` over ``loader`` ((images, labels) batches) in eval mode → (features fp32, labels),
    gathered from all ranks. The encoder's train/eval mode is restored afterwards.
    ``desc``: show a progress bar with that title (pass it on rank 0 only)."""
    was_training = encoder.training
    encoder.eval()
    feats, labels = [], []
    batches = loader
    if desc is not None:
        from tqdm.auto import tqdm

        batches = tqdm(loader, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
    try:
        for images, y in batches:
            feats.append(encoder(images.to(dtype)).float())
            labels.append(y.long().view(-1))
    finally:
        encoder.train(was_training)
    f = torch.cat(feats) if feats else torch.empty(0)
    y = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)
    return _gather_varlen(f), _gather_varlen(y)
