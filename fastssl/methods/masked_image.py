"""What MAE, CAN and DAC share: their config fields, the per-step mask draw, the decoder.

Encoder: one packed ``PackedViT.encode`` of all views, the kept patches' pixels gathered before the
patch embedding; decoder: ``scatter_tokens``; losses: the ``fastssl.ops`` ops with ``backend``
(auto: Triton on CUDA, reference on CPU). The eager way of MAE's official code (every op on its
reference, dense SDPA, one encoder call per view, MAE's add-then-gather input) is a reference in
the tests (``tests/methods/_masked_image_ref.py``, same modules: losses and every gradient compared)
and a twin in the benchmarks (``bench/eager/masked_image.py``).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from pydantic import Field

from fastssl.config_base import Section
from fastssl.models.decoder import DecoderConfig, MaskedDecoder
from fastssl.ops import random_masking
from fastssl.ops.dispatch import Backend


class MaskedImageFields(Section):
    """Fields every masked-image method has (each adds its name, mask ratio default and losses)."""

    norm_pix: bool = Field(True, description="Reconstruction target normalised per patch (MAE's norm_pix_loss).")
    decoder: DecoderConfig = Field(default_factory=DecoderConfig, description="MAE's decoder (ViT-B defaults).")
    backend: Backend = Field("auto", description="Op implementation (auto: Triton on CUDA, reference on CPU).")


def rank_rows(x: torch.Tensor, views: int, batch: int) -> torch.Tensor:
    """Rows of a draw made for the global batch ``[views·world·batch, ...]`` (view-major) that
    belong to this rank: ``[views·batch, ...]``. Two ranks then mask exactly as one process on the
    global batch would (and a resume redraws the same masks)."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    x = x.view(views, world * batch, *x.shape[1:])[:, rank * batch:(rank + 1) * batch]
    return x.reshape(views * batch, *x.shape[2:])


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def draw_masks(gen: torch.Generator, views: int, batch: int, num_patches: int, ratio: float,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """MAE's per-image random masking for this rank's ``views·batch`` images (view-major):
    ``(ids_keep [V·B, K] int64, mask [V·B, L] float, 1 = removed)``."""
    ids_keep, _, mask = random_masking(views * world_size() * batch, num_patches, ratio, generator=gen, device=device)
    return rank_rows(ids_keep, views, batch), rank_rows(mask, views, batch)


def build_decoder(encoder, cfg: MaskedImageFields) -> MaskedDecoder:
    return MaskedDecoder(encoder.num_features, encoder.grid, encoder.patch_size, encoder.config["in_chans"], cfg.decoder,
                         attn_backend=encoder.dispatch.requested)


def kept_count(num_patches: int, ratio: float) -> int:
    """K as ``random_masking`` computes it."""
    return int(num_patches * (1 - ratio))
