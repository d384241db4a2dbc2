"""M-MoCo's optional cross-attention blocks between the ViT and the projector (masked_moco_byol.txt
§3.4, Table 3 "LayerNorm + CA").

The paper inserts "two cross-attention blocks between ViT backbone and the projector, following
(Wu et al., 2022) (but differently we keep CLS and thus make the backbone intact)", citing CaiT's
class attention (Touvron et al., 2021). There is no official M-MoCo code, so this follows CaiT's
class-attention block: only the class token is updated; its query attends to the keys/values of
the whole sequence ``[CLS, patches]`` of its own sequence (one chunk, for chunked views), and the
patch tokens pass through unchanged:

    u     = norm1([cls, patches])
    cls  += ls1 · proj(softmax(q(u_cls) · k(u)ᵀ / √d) · v(u))
    cls  += ls2 · mlp(norm2(cls))

and, as in CaiT, a final LayerNorm on the CLS. "Keep CLS": the query starts from the backbone's
own (final-normed) CLS rather than a fresh learned token as in Wu et al. Works on the pack, so
every chunk's CLS only sees its chunk, through the same attention backends as the encoder (one
query per sequence, ``PackInfo.cls_layout``).
"""
from __future__ import annotations

import torch
from timm.layers import LayerScale, Mlp
from torch import nn

from fastssl.models.vit.attention import AttentionDispatch, BackendName
from fastssl.models.vit.layout import AttnLayout
from fastssl.models.vit.packing import PackInfo


class ClassAttention(nn.Module):
    """q from the CLS tokens ``[S, D]``, k / v from all tokens ``[T, D]`` -> ``[S, D]``."""

    def __init__(self, dim: int, num_heads: int, dispatch: AttentionDispatch, *, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not a multiple of num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.dispatch = dispatch

    def forward(self, cls: torch.Tensor, x: torch.Tensor, layout: AttnLayout) -> torch.Tensor:
        s, t, h, dh = cls.shape[0], x.shape[0], self.num_heads, self.head_dim
        o = self.dispatch(self.q(cls).view(s, h, dh), self.k(x).view(t, h, dh), self.v(x).view(t, h, dh), layout)
        return self.proj(o.reshape(s, -1))


class ClassAttentionBlock(nn.Module):
    """One CaiT class-attention block on a pack: updates the CLS of every sequence."""

    def __init__(self, dim: int, num_heads: int, dispatch: AttentionDispatch, *, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, init_values: float | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ClassAttention(dim, num_heads, dispatch, qkv_bias=qkv_bias)
        self.ls1 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)
        self.ls2 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()

    def forward(self, cls: torch.Tensor, x: torch.Tensor, pack: PackInfo) -> torch.Tensor:
        """cls ``[S, D]`` current class tokens; x ``[T, D]`` packed tokens whose CLS slots are replaced
        by ``cls`` (so keys see the updated CLS, as CaiT's ``cat([x_cls, x])``) -> new cls ``[S, D]``."""
        u = x.index_copy(0, pack.cls_index, cls)
        u = self.norm1(u)
        cls = cls + self.ls1(self.attn(u[pack.cls_index], u, pack.cls_layout))
        return cls + self.ls2(self.mlp(self.norm2(cls)))


class ClassAttentionHead(nn.Module):
    """``depth`` (paper: 2) class-attention blocks + LayerNorm: ``(hidden [T, D], pack) -> [S, D]``.

    ``hidden`` and ``pack`` are ``Encoded.hidden`` / ``Encoded.pack`` from ``PackedViT.encode``;
    ``outputs.split_per_view`` turns the ``[S, D]`` result into ``[*lead, D]`` per view.
    """

    def __init__(self, dim: int, num_heads: int, *, depth: int = 2, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 init_values: float | None = None, attn_backend: BackendName = "auto") -> None:
        super().__init__()
        self.dispatch = AttentionDispatch(attn_backend)
        self.blocks = nn.ModuleList(
            ClassAttentionBlock(dim, num_heads, self.dispatch, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, init_values=init_values)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        for m in self.modules():  # CaiT / timm ViT init: truncated normal 0.02, zero bias
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, hidden: torch.Tensor, pack: PackInfo) -> torch.Tensor:
        cls = hidden[pack.cls_index]
        for blk in self.blocks:
            cls = blk(cls, hidden, pack)
        return self.norm(cls)
