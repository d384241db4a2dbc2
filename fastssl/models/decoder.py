"""MAE's lightweight decoder, shared by MAE, CAN and DAC (``forward_decoder`` of MAE's models_mae.py).

    kept [N, K, De] (encoder patch tokens, ids_keep order), cls [N, De]
      -> decoder_embed (Linear De -> Dd) on the K + 1 encoder tokens only
      -> scatter_tokens: full length L, learned mask token at the removed patches, + fixed 2-D
         sin-cos positional table (MAE's decoder_pos_embed, requires_grad=False; CLS row zeros)
      -> [+ a per-image vector on every token: CAN's σ embedding]
      -> depth ViT blocks, LayerNorm -> pred (Linear Dd -> p·p·C) on the patch tokens
    returns pred [N, L, p·p·C] in ``fastssl.ops.patchify`` order (row-major grid, (p, q, c)) and the
    decoder's CLS [N, Dd] (after the norm; DAC's contrastive feature of the masked view).

The packed path runs the blocks as one pack of N equal sequences (one dense SDPA per call on CPU,
one varlen/xformers kernel on CUDA) and the scatter through ``fastssl.ops.scatter_tokens`` (Triton
on CUDA). MAE's own way (reference scatter, dense blocks) is the tests' reference
(``tests/methods/_masked_image_ref.py``).
Initialisation as MAE: xavier-uniform Linear weights, zero biases, mask token N(0, 0.02²).
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from fastssl.config_base import Section
from fastssl.models.vit.attention import AttentionDispatch
from fastssl.models.vit.blocks import PackedBlock
from fastssl.models.vit.layout import AttnLayout
from fastssl.models.sincos import sincos_2d
from fastssl.ops.dispatch import Backend
from fastssl.ops.tokens import scatter_tokens


class DecoderConfig(Section):
    """MAE's defaults for ViT-B/L (512 wide, 8 blocks, 16 heads); tiny models take smaller ones."""

    embed_dim: int = Field(512, ge=4, description="Decoder width (a multiple of 4 and of num_heads).")
    depth: int = Field(8, ge=1, description="Decoder blocks.")
    num_heads: int = Field(16, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)


class MaskedDecoder(nn.Module):
    def __init__(self, enc_dim: int, grid: tuple[int, int], patch_size: int, in_chans: int, cfg: DecoderConfig,
                 attn_backend: str = "auto"):
        super().__init__()
        d = cfg.embed_dim
        if d % cfg.num_heads:
            raise ValueError(f"method.decoder.embed_dim {d} is not a multiple of num_heads {cfg.num_heads}")
        if d % 4:
            raise ValueError(f"method.decoder.embed_dim must be a multiple of 4 (2-D sin-cos table), got {d}")
        self.grid = grid
        self.num_patches = grid[0] * grid[1]
        self.decoder_embed = nn.Linear(enc_dim, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.register_buffer("pos_embed", sincos_2d(d, grid, cls=True), persistent=False)  # [1 + L, d], fixed
        self.dispatch = AttentionDispatch(attn_backend)
        self.blocks = nn.ModuleList(PackedBlock(d, cfg.num_heads, self.dispatch, mlp_ratio=cfg.mlp_ratio)
                                    for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.pred = nn.Linear(d, patch_size * patch_size * in_chans)
        self._init()

    def _init(self) -> None:
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _check(self, kept: torch.Tensor, ids_keep: torch.Tensor) -> None:
        if kept.ndim != 3 or tuple(ids_keep.shape) != tuple(kept.shape[:2]):
            raise ValueError(f"kept must be [N, K, D] and ids_keep [N, K], got {tuple(kept.shape)} and {tuple(ids_keep.shape)}")

    def _head(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm(h)
        return self.pred(h[:, 1:]), h[:, 0]

    def forward(self, kept: torch.Tensor, cls: torch.Tensor, ids_keep: torch.Tensor, extra: torch.Tensor | None = None,
                *, backend: Backend = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """kept ``[N, K, De]``, cls ``[N, De]``, ids_keep ``[N, K]``, extra ``[N, Dd]`` or None ->
        ``(pred [N, L, p·p·C], cls [N, Dd])``; ``backend`` of ``scatter_tokens``."""
        self._check(kept, ids_keep)
        n, length = kept.shape[0], self.num_patches
        pos = self.pos_embed.to(self.decoder_embed.weight.dtype)
        x = scatter_tokens(self.decoder_embed(kept), ids_keep, length, self.mask_token, pos[1:], backend=backend)
        c = self.decoder_embed(cls) + pos[0]
        x = torch.cat([c.unsqueeze(1).to(x.dtype), x], dim=1)  # [N, 1 + L, Dd]
        if extra is not None:
            x = x + extra.unsqueeze(1)
        d = x.shape[-1]
        layout = AttnLayout.build((1 + length,) * n, None, x.device)
        h = x.reshape(n * (1 + length), d)
        for blk in self.blocks:
            h = blk(h, layout)
        return self._head(h.view(n, 1 + length, d))
