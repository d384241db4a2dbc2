"""M-MoCo chunking: n chunks, every patch in exactly one chunk (or equal chunks dropping N mod n)."""
from __future__ import annotations

import pytest
import torch

from fastssl.models import ChunkedView, PackedViT
from fastssl.models.vit.chunks import chunk_sizes, random_permutation, split_chunks


@pytest.mark.parametrize("n_patches,n_chunks", [(196, 8), (64, 8), (7, 3), (49, 1), (13, 13), (50, 4)])
@pytest.mark.parametrize("batch", [1, 3])
def test_split_covers_every_patch_once(n_patches, n_chunks, batch):
    perm = random_permutation(batch, n_patches)
    groups = split_chunks(perm, n_chunks)
    assert sum(g.shape[0] for g in groups) == n_chunks
    sizes = [g.shape[2] for g in groups for _ in range(g.shape[0])]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n_patches
    for b in range(batch):
        chunks = [g[j, b] for g in groups for j in range(g.shape[0])]
        # the chunks are consecutive slices of the shuffled order ...
        assert torch.equal(torch.cat(chunks), perm[b])
        # ... so together they hold every patch exactly once
        assert torch.equal(torch.sort(torch.cat(chunks)).values, torch.arange(n_patches))


@pytest.mark.parametrize("n_patches,n_chunks", [(196, 8), (7, 3), (64, 8)])
def test_equal_chunks_drop_only_the_remainder(n_patches, n_chunks):
    perm = random_permutation(2, n_patches)
    groups = split_chunks(perm, n_chunks, equal=True)
    assert len(groups) == 1 and groups[0].shape == (n_chunks, 2, n_patches // n_chunks)
    for b in range(2):
        used = groups[0][:, b].reshape(-1)
        assert len(set(used.tolist())) == used.numel() == n_chunks * (n_patches // n_chunks)


def test_chunk_sizes_validation():
    assert chunk_sizes(10, 4) == (3, 3, 2, 2)
    with pytest.raises(ValueError):
        chunk_sizes(5, 6)
    with pytest.raises(ValueError):
        chunk_sizes(5, 0)


def test_chunked_view_patch_ids_cover_each_image():
    vit = PackedViT(img_size=32, patch_size=4, embed_dim=48, depth=1, num_heads=3)
    b, n = 3, 5
    out = vit.encode([ChunkedView(torch.randn(b, 3, 32, 32), n_chunks=n)]).views[0]
    assert out.cls.shape == (n, b, 48)
    lens = out.final.seqlens
    assert len(lens) == n * b
    per_seq = torch.split(out.patch_ids, list(lens))
    for img in range(b):
        ids = torch.cat([s for s, o in zip(per_seq, out.owner.tolist()) if o == img])
        assert torch.equal(torch.sort(ids).values, torch.arange(64))
    # a random permutation per call: two calls give different chunks
    out2 = vit.encode([ChunkedView(torch.randn(b, 3, 32, 32), n_chunks=n)]).views[0]
    assert not torch.equal(out.patch_ids, out2.patch_ids)
