"""MAE token ops: random masking, gather of the kept tokens, scatter back with mask tokens.

Conventions (MAE's models_mae.py): mask 0 = keep, 1 = removed; ``ids_keep`` [B, K] lists the kept
patch indices in MAE's (random) order; positional embeddings are ``[L, D]``, patch positions only.

Dispatch (``backend``): "auto" runs the Triton kernels (``fastssl.kernels.tokens``) on CUDA
tensors and the eager reference (``fastssl.ops.reference``) elsewhere; "reference" / "triton"
force one (the Triton kernels also run on CPU under ``TRITON_INTERPRET=1``, which the tests use).

Two doors to the same launchers: inside ``torch.compile`` the ops go through the custom ops of
``fastssl.ops.library`` (one graph node each); in eager code through the kernels' own
autograd.Functions. The custom-op door costs ~45 µs of Python per forward + backward (measured on
CPU with an empty body: 76 µs vs 29 µs for an autograd.Function), which at B = 256 is more than
the kernels' whole device time; both doors call the same ``gather_fwd`` / ``gather_bwd`` /
``scatter_fwd`` / ``scatter_bwd``.
"""
from __future__ import annotations

import torch

from fastssl.ops import reference
from fastssl.ops.dispatch import Backend, use_triton


def random_masking(
    batch_size: int,
    num_patches: int,
    mask_ratio: float,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample uniformly random subset of K = int(L·(1 − mask_ratio)) kept patches, as MAE.

    Returns ``(ids_keep [B, K] int64, ids_restore [B, L] int64, mask [B, L] float32)``:
    ``ids_keep`` is the first K entries of a random permutation ``ids_shuffle`` (kept tokens in
    that random order), ``ids_restore = argsort(ids_shuffle)`` (position of patch l in the
    shuffle, MAE's unshuffle index), ``mask[b, l] = 0`` if l is kept else 1.

    Not a kernel, on purpose: it touches O(B·L) integers (B·196 for ViT-B), a rounding error next
    to the O(B·L·D) token traffic, and torch's batched sort of uniform noise is already one
    launch; keeping it in torch also keeps torch's RNG semantics (``generator``,
    ``torch.manual_seed``). Argsort of i.i.d. uniform noise gives a uniform random permutation
    (ties have probability ~0), so every K-subset is equally likely.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    if batch_size < 1 or num_patches < 1:
        raise ValueError(f"batch_size and num_patches must be >= 1, got {batch_size}, {num_patches}")
    keep = int(num_patches * (1 - mask_ratio))
    if keep < 1:
        raise ValueError(f"mask_ratio={mask_ratio} keeps no patch out of {num_patches}")
    device = torch.device(device) if device is not None else (generator.device if generator is not None else torch.device("cpu"))
    # Draw on the generator's device (a CPU generator cannot fill a CUDA tensor), then move.
    noise_device = generator.device if generator is not None else device
    noise = torch.rand(batch_size, num_patches, generator=generator, device=noise_device).to(device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    mask = torch.ones(batch_size, num_patches, device=device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_keep, ids_restore, mask


def _check_ids(ids_keep: torch.Tensor, batch: int, device: torch.device) -> None:
    if ids_keep.ndim != 2 or ids_keep.shape[0] != batch:
        raise ValueError(f"ids_keep must be [B={batch}, K], got {tuple(ids_keep.shape)}")
    if ids_keep.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"ids_keep must be int32 or int64, got {ids_keep.dtype}")
    if ids_keep.device != device:
        raise ValueError(f"ids_keep is on {ids_keep.device}, tokens on {device}")


def _check_pos(pos_embed: torch.Tensor | None, num_patches: int, dim: int) -> None:
    if pos_embed is not None and tuple(pos_embed.shape) != (num_patches, dim):
        raise ValueError(f"pos_embed must be [L={num_patches}, D={dim}] (patch positions, no CLS), got {tuple(pos_embed.shape)}")


def gather_tokens(
    x: torch.Tensor,
    ids_keep: torch.Tensor,
    pos_embed: torch.Tensor | None = None,
    *,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Kept tokens plus their positional embeddings (MAE encoder input after masking).

    x [B, L, D], ids_keep [B, K] (distinct indices per row), pos_embed [L, D] or None -> [B, K, D]:
        out[b, k] = x[b, ids_keep[b, k]] + pos_embed[ids_keep[b, k]]
    Backward: dx scatters the gradient back (zeros at removed positions); d pos_embed sums it over
    the batch. Output dtype = torch's promotion of x and pos_embed (as ``x + pos_embed``).
    """
    if x.ndim != 3:
        raise ValueError(f"x must be [B, L, D], got {tuple(x.shape)}")
    _check_ids(ids_keep, x.shape[0], x.device)
    _check_pos(pos_embed, x.shape[1], x.shape[2])
    if use_triton(backend, x.device):
        if torch.compiler.is_compiling():
            from fastssl.ops.library import gather_tokens as triton_gather  # the kernel as a custom op
        else:
            from fastssl.kernels.tokens import gather_tokens as triton_gather  # the kernel's autograd.Function

        return triton_gather(x, ids_keep, pos_embed)
    return reference.gather_tokens(x, ids_keep, pos_embed)


def scatter_tokens(
    x: torch.Tensor,
    ids_keep: torch.Tensor,
    num_patches: int,
    mask_token: torch.Tensor,
    pos_embed: torch.Tensor | None = None,
    *,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Full-length decoder input: kept tokens at their positions, the mask token elsewhere, + pos.

    x [B, K, D], ids_keep [B, K] (distinct), mask_token with D elements ([D] or MAE's [1, 1, D]),
    pos_embed [L, D] or None -> [B, L, D], L = num_patches:
        out[b, l] = (x[b, k] if ids_keep[b, k] == l else mask_token) + pos_embed[l]
    Backward: dx[b, k] = g[b, ids_keep[b, k]]; d mask_token = Σ over removed (b, l) of g[b, l];
    d pos_embed[l] = Σ_b g[b, l]. Output dtype = promotion of x, mask_token and pos_embed.
    """
    if x.ndim != 3:
        raise ValueError(f"x must be [B, K, D], got {tuple(x.shape)}")
    _check_ids(ids_keep, x.shape[0], x.device)
    if ids_keep.shape[1] != x.shape[1] or x.shape[1] > num_patches:
        raise ValueError(f"ids_keep {tuple(ids_keep.shape)} must match x {tuple(x.shape)} with K <= L={num_patches}")
    if mask_token.numel() != x.shape[2]:
        raise ValueError(f"mask_token must hold D={x.shape[2]} values, got shape {tuple(mask_token.shape)}")
    _check_pos(pos_embed, num_patches, x.shape[2])
    if use_triton(backend, x.device):
        if torch.compiler.is_compiling():
            from fastssl.ops.library import scatter_tokens as triton_scatter  # the kernel as a custom op
        else:
            from fastssl.kernels.tokens import scatter_tokens as triton_scatter  # the kernel's autograd.Function

        return triton_scatter(x, ids_keep, num_patches, mask_token, pos_embed)
    return reference.scatter_tokens(x, ids_keep, num_patches, mask_token, pos_embed)
