"""Transformer block on packed tokens ``[T, D]``, with timm's parameter names and maths.

Parameter names match ``timm.models.vision_transformer.Block`` (``norm1``, ``attn.qkv``,
``attn.proj``, ``ls1.gamma``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``, ``ls2.gamma``), so a
``VisionTransformer`` state_dict loads unchanged. Only the attention core differs: it is
block-diagonal over the sequences of the pack (``attention.AttentionDispatch``) instead of dense
over a ``[B, N]`` batch. LayerNorm, the MLP and the projections act per token, so the packed
layout changes nothing for them.
"""
from __future__ import annotations

import torch
from timm.layers import LayerScale, Mlp
from torch import nn

from fastssl.models.vit.attention import AttentionDispatch
from fastssl.models.vit.layout import AttnLayout


class PackedAttention(nn.Module):
    """Multi-head self-attention over a pack: ``x [T, D] -> [T, D]`` (timm ``Attention`` weights)."""

    def __init__(self, dim: int, num_heads: int, dispatch: AttentionDispatch, *, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        # A plain attribute, not a submodule: the dispatcher has no parameters and is shared.
        self.dispatch = dispatch

    def forward(self, x: torch.Tensor, layout: AttnLayout) -> torch.Tensor:
        t = x.shape[0]
        # timm's qkv output layout is (3, heads, head_dim) along the features.
        q, k, v = self.qkv(x).view(t, 3, self.num_heads, self.head_dim).unbind(1)  # each [T, H, Dh]
        o = self.dispatch(q, k, v, layout)
        return self.proj(o.reshape(t, -1))


def drop_path_packed(y: torch.Tensor, token_seq: torch.Tensor, num_seqs: int, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth per *sequence* (each sequence is an independent image, as timm's DropPath
    is per sample): a branch output ``y [T, D]`` is zeroed for a random subset of sequences and
    scaled by 1/(1-p) elsewhere."""
    if p == 0.0 or not training:
        return y
    keep = torch.empty(num_seqs, device=y.device, dtype=y.dtype).bernoulli_(1 - p).div_(1 - p)
    return y * keep[token_seq].unsqueeze(-1)


class PackedBlock(nn.Module):
    """Pre-norm ViT block: ``x + ls1(attn(norm1 x))``, then ``x + ls2(mlp(norm2 x))``, on ``[T, D]``."""

    def __init__(self, dim: int, num_heads: int, dispatch: AttentionDispatch, *, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, init_values: float | None = None, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)  # timm ViT's LayerNorm eps
        self.attn = PackedAttention(dim, num_heads, dispatch, qkv_bias=qkv_bias)
        self.ls1 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)
        self.ls2 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor, layout: AttnLayout, token_seq: torch.Tensor | None = None) -> torch.Tensor:
        """x ``[T, D]``; ``token_seq [T]`` (sequence of each token) is needed only for drop path."""
        dp = self.drop_path if self.training else 0.0
        y = self.ls1(self.attn(self.norm1(x), layout))
        x = x + (drop_path_packed(y, token_seq, layout.num_seqs, dp, True) if dp else y)
        y = self.ls2(self.mlp(self.norm2(x)))
        return x + (drop_path_packed(y, token_seq, layout.num_seqs, dp, True) if dp else y)
