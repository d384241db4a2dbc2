"""M-MoCo / M-BYOL chunking: shuffle a view's patches and slice them into n chunks.

Paper (masked_moco_byol.txt §3.2): "randomly shuffle this sequence, and slice it into n chunks of
equal length ... append a CLS token to each chunk, and feed these chunks into the online
transformer encoder as independent images". When n does not divide the patch count N (ViT-B/16:
N = 196, n = 8) "equal length" is impossible without dropping patches. Default here: keep every
patch, chunk sizes differ by at most one (the first N mod n chunks get one extra patch), so the
encoder sees all patches as the paper states ("Our encoder will see the same number of image
patches as MoCo-v3"). ``equal=True`` instead drops the last N mod n shuffled patches (random ones)
so that all chunks have N // n patches.
"""
from __future__ import annotations

import torch

from fastssl.ops.host_copy import to_device


def chunk_sizes(num_patches: int, n_chunks: int, *, equal: bool = False) -> tuple[int, ...]:
    """Patches per chunk, in chunk order (non-increasing)."""
    if n_chunks < 1 or n_chunks > num_patches:
        raise ValueError(f"n_chunks must be in [1, num_patches={num_patches}], got {n_chunks}")
    q, r = divmod(num_patches, n_chunks)
    if equal:
        return (q,) * n_chunks
    return (q + 1,) * r + (q,) * (n_chunks - r)


def random_permutation(batch: int, num_patches: int, *, device: torch.device | str | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """``[B, N]`` int64, an independent uniformly random permutation of ``range(N)`` per row."""
    noise_device = generator.device if generator is not None else device
    noise = torch.rand(batch, num_patches, generator=generator, device=noise_device)
    return to_device(torch.argsort(noise, dim=1), device)  # sorted where drawn, then one non-blocking copy


def split_chunks(perm: torch.Tensor, n_chunks: int, *, equal: bool = False) -> list[torch.Tensor]:
    """Slice shuffled patch indices into chunks, grouped by chunk size.

    perm ``[B, N]`` (a permutation per row) -> list of ``[c, B, L]`` int64 tensors, one per distinct
    chunk size L in chunk order (at most two groups), with ``Σ c = n_chunks``. Chunk j of image b
    is ``perm[b, start_j : start_j + L_j]`` (contiguous slices of the shuffled order), so the
    groups are chunk-major: sequence index ``j * B + b`` across the concatenated groups.
    """
    if perm.ndim != 2:
        raise ValueError(f"perm must be [B, N], got {tuple(perm.shape)}")
    b, n = perm.shape
    sizes = chunk_sizes(n, n_chunks, equal=equal)
    groups: list[torch.Tensor] = []
    start = 0
    j = 0
    while j < n_chunks:
        size = sizes[j]
        count = sum(1 for s in sizes[j:] if s == size)
        block = perm[:, start:start + count * size].reshape(b, count, size)
        groups.append(block.transpose(0, 1).contiguous())
        start += count * size
        j += count
    return groups
