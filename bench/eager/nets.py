"""The networks of the eager references: timm's own modules holding the fastssl method's weights.

Every reference is built *from* a fastssl method (the same seed, the same weights), so the two steps
start from identical parameters and a first-step loss can be compared. Nothing here calls a fastssl op
or packs sequences: a ViT is ``timm.models.vision_transformer.VisionTransformer`` (dense ``[B, T, D]``
batches, SDPA attention), a ResNet is ``timm.create_model(arch)``, heads are ``torch.nn`` layers, the
momentum update is the per-parameter loop of the official MoCo / BYOL code.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def timm_vit(packed) -> nn.Module:
    """A timm ``VisionTransformer`` with the weights of a fastssl ``PackedViT`` (``strict=True``)."""
    import fastssl  # noqa: F401  (the torchvision shim timm needs on a CPU-only torch)
    from timm.models.vision_transformer import VisionTransformer

    # Built on the meta device (no random init of weights that are overwritten: seconds for a ViT-B on
    # a CPU), then given copies of the packed model's tensors.
    with torch.device("meta"):
        vit = VisionTransformer(**packed.timm_kwargs())
    state = {k: v.detach().clone() for k, v in packed.state_dict().items()}
    vit.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in (*vit.parameters(), *vit.buffers())):  # a tensor outside the state_dict
        vit = VisionTransformer(**packed.timm_kwargs())
        vit.load_state_dict(state, strict=True)
    return vit.to(packed.pos_embed.device)


def timm_resnet(taps) -> nn.Module:
    """``timm.create_model(arch, num_classes=0)`` with the weights of a fastssl ``ResNetTaps``
    (its state_dict is timm's; the small stem is rebuilt by hand: 3×3 stride-1 conv, no max-pool)."""
    import fastssl  # noqa: F401
    import timm

    net = timm.create_model(taps.arch, num_classes=0)
    if taps.small_stem:
        conv = net.conv1
        net.conv1 = nn.Conv2d(conv.in_channels, conv.out_channels, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    net.load_state_dict(taps.state_dict(), strict=True)
    return net


def timm_encoder(encoder) -> nn.Module:
    """timm's ViT or ResNet for a fastssl encoder; ``net(x [B,3,H,W]) -> [B, D]`` (CLS / average pool)."""
    return timm_resnet(encoder) if hasattr(encoder, "stage_channels") else timm_vit(encoder)


def head(mlp: nn.Module) -> nn.Sequential:
    """A copy of a fastssl ``MLPHead``'s layers: a plain ``nn.Sequential`` of Linear / BatchNorm1d /
    LayerNorm / ReLU (MLPHead holds nothing else)."""
    return copy.deepcopy(mlp.net)


@torch.no_grad()
def momentum_update(target: nn.Module, online: nn.Module, m: float) -> None:
    """The official MoCo / BYOL update: one small in-place op pair per parameter, buffers copied."""
    for p_t, p_o in zip(target.parameters(), online.parameters()):
        p_t.data = p_t.data * m + p_o.data * (1.0 - m)
    for b_t, b_o in zip(target.buffers(), online.buffers()):
        b_t.copy_(b_o)


def frozen_copy(*modules: nn.Module) -> list[nn.Module]:
    """Deep copies that take no gradient (a momentum encoder)."""
    return [copy.deepcopy(m).requires_grad_(False) for m in modules]


def cosine_momentum(base: float, progress: float) -> float:
    """BYOL's τ = 1 − (1 − τ_base)·(cos(π·k/K) + 1)/2."""
    import math

    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def vit_tokens(vit: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Patch embedding + positional table (patches only), resampled for another grid:
    ``[N, 3, H, W] -> [N, L, D]`` — MAE's ``forward_encoder`` before masking."""
    from timm.layers import resample_abs_pos_embed

    x = vit.patch_embed.proj(images).flatten(2).transpose(1, 2)
    grid = (images.shape[-2] // vit.patch_embed.patch_size[0], images.shape[-1] // vit.patch_embed.patch_size[1])
    pos = vit.pos_embed[:, 1:]
    if grid != tuple(vit.patch_embed.grid_size):
        pos = resample_abs_pos_embed(pos, list(grid), list(vit.patch_embed.grid_size), num_prefix_tokens=0)
    return x + pos


def vit_blocks(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CLS (+ its positional embedding) prepended to ``x [N, L, D]``, the blocks, the final norm:
    ``[N, 1 + L, D]``."""
    cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
    x = torch.cat([cls.to(x.dtype), x], dim=1)
    for blk in vit.blocks:
        x = blk(x)
    return vit.norm(x)


def mae_masking(n: int, length: int, ratio: float, gen: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's ``random_masking`` index maths: ``(ids_keep [N, K], ids_restore [N, L], mask [N, L])``,
    the noise drawn from ``gen`` on its own device (the same draw as the fastssl method's)."""
    keep = int(length * (1 - ratio))
    noise = torch.rand(n, length, generator=gen, device=gen.device).to(device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(n, length, device=device)
    mask[:, :keep] = 0
    return ids_shuffle[:, :keep], ids_restore, torch.gather(mask, 1, ids_restore)


def gather_rows(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``x [N, L, D]``, ``ids [N, K]`` -> ``[N, K, D]`` (MAE's ``torch.gather`` of kept tokens)."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """MAE's ``patchify``: ``[N, C, H, W] -> [N, L, p·p·C]`` ((p, q, c) order)."""
    n, c, h, w = imgs.shape
    x = imgs.reshape(n, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(n, (h // p) * (w // p), p * p * c)


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool) -> torch.Tensor:
    """MAE's ``forward_loss``: per-patch MSE averaged over the masked patches (mask 1)."""
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = ((pred - target) ** 2).mean(dim=-1)
    return (loss * mask).sum() / mask.sum()


class EagerDecoder(nn.Module):
    """MAE's ``forward_decoder`` with timm ``Block``s, the weights of a fastssl ``MaskedDecoder``."""

    def __init__(self, dec: nn.Module):
        super().__init__()
        from functools import partial

        from timm.models.vision_transformer import Block

        d = dec.decoder_embed.out_features
        heads = dec.blocks[0].attn.num_heads
        ratio = dec.blocks[0].mlp.fc1.out_features / d
        self.decoder_embed = copy.deepcopy(dec.decoder_embed)
        self.mask_token = nn.Parameter(dec.mask_token.detach().clone())
        self.register_buffer("decoder_pos_embed", dec.pos_embed.detach().clone().unsqueeze(0))  # [1, 1 + L, d], fixed
        self.decoder_blocks = nn.ModuleList(Block(d, heads, ratio, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))
                                            for _ in dec.blocks)
        for mine, theirs in zip(self.decoder_blocks, dec.blocks):
            mine.load_state_dict(theirs.state_dict(), strict=True)
        self.decoder_norm = copy.deepcopy(dec.norm)
        self.decoder_pred = copy.deepcopy(dec.pred)

    def forward(self, x: torch.Tensor, ids_restore: torch.Tensor, extra: torch.Tensor | None = None):
        """x ``[N, 1 + K, De]`` encoder tokens (CLS first) -> ``(pred [N, L, p·p·C], cls [N, Dd])``."""
        x = self.decoder_embed(x)
        n, length = ids_restore.shape
        mask_tokens = self.mask_token.to(x.dtype).repeat(n, length + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed.to(x.dtype)
        if extra is not None:
            x = x + extra.unsqueeze(1)
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        return self.decoder_pred(x[:, 1:, :]), x[:, 0]


def normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=1)
