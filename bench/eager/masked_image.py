"""Eager references of MAE, CAN and DAC: MAE's ``models_mae.py`` way with timm's ViT blocks.

Encoder input as MAE: conv patch embedding of every patch, positional table added, the kept tokens
gathered (``torch.gather``), CLS prepended, dense blocks; the decoder appends mask tokens and
unshuffles with ``ids_restore``; losses as ``forward_loss`` with ``(loss * mask).sum() / mask.sum()``.
Masks (and CAN's σ) come from ``ctx.generator()`` in the fastssl method's order, so MAE, DAC and CAN
see the same masks as the fastssl step; CAN's image noise is drawn on the device from torch's RNG,
as ``torch.randn_like`` in a training loop (fastssl draws it inside ``patchify_noise``: another
stream of the same distribution).

CAN  both views in one batch: noise added to the whole image, MAE masking, the σ embedding added to
     every decoder token, L_rec on masked patches, L_denoise on visible ones (weights ``mask`` and
     ``1 − mask``), NT-Xent on the projected mean of the kept tokens.
DAC  view B masked (MAE encoder), view A the small whole image through the same ViT (positional
     table resampled by timm), SimSiam per view on [decoder_embed(CLS_A); decoder CLS_B].
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from bench.eager import losses
from bench.eager.nets import EagerDecoder, gather_rows, head, mae_loss, mae_masking, patchify, timm_vit, vit_blocks, vit_tokens


class _MaskedImage(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.cfg = m.cfg
        self.vit, self.decoder = timm_vit(m.encoder), EagerDecoder(m.decoder)
        self.patch, self.length = m.encoder.patch_size, m.encoder.grid[0] * m.encoder.grid[1]

    def encode_masked(self, images, ids_keep):
        return vit_blocks(self.vit, gather_rows(vit_tokens(self.vit, images), ids_keep))


class EagerMAE(_MaskedImage):
    def forward(self, batch, ctx) -> torch.Tensor:
        imgs = batch["image"][0]
        ids_keep, ids_restore, mask = mae_masking(imgs.shape[0], self.length, self.cfg.mask_ratio, ctx.generator(), imgs.device)
        pred, _ = self.decoder(self.encode_masked(imgs, ids_keep), ids_restore)
        return mae_loss(pred, patchify(imgs, self.patch), mask, self.cfg.norm_pix)


def sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """The DDPM / transformer embedding of a scalar: [sin(t·ω_i), cos(t·ω_i)], ω_i = 10000^(−i/(dim/2))."""
    half = dim // 2
    omega = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    arg = t.float()[:, None] * omega[None]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class EagerCAN(_MaskedImage):
    def __init__(self, m):
        super().__init__(m)
        self.sigma_fc = nn.Sequential(copy.deepcopy(m.sigma_embed.fc1), nn.ReLU(), copy.deepcopy(m.sigma_embed.fc2))
        self.sigma_scale, self.sigma_dim = m.sigma_embed.scale, m.sigma_embed.dim
        self.projector = head(m.projector)

    def forward(self, batch, ctx) -> torch.Tensor:
        c = self.cfg
        views = batch["views"]
        imgs = views.flatten(0, 1)
        n, dev = imgs.shape[0], imgs.device
        gen = ctx.generator()
        ids_keep, ids_restore, mask = mae_masking(n, self.length, c.mask_ratio, gen, dev)
        sigma = (torch.rand(n, generator=gen) * c.sigma_max).to(dev)
        noise = sigma.view(-1, 1, 1, 1).to(imgs.dtype) * torch.randn_like(imgs)  # on the device, torch's RNG
        latent = self.encode_masked(imgs + noise, ids_keep)
        emb = self.sigma_fc(sinusoid(sigma * self.sigma_scale, self.sigma_dim).to(self.sigma_fc[0].weight.dtype))
        pred, _ = self.decoder(latent, ids_restore, emb)
        l_rec = mae_loss(pred, patchify(imgs, self.patch), mask, c.norm_pix)
        l_den = mae_loss(pred, patchify(noise, self.patch), 1 - mask, False)
        z1, z2 = self.projector(latent[:, 1:].mean(dim=1)).chunk(2)
        l_nce = losses.nt_xent(z1, z2, c.temperature)
        return c.infonce_weight * l_nce + (1 - c.infonce_weight) * (c.rec_weight * l_rec + (1 - c.rec_weight) * l_den)


class EagerDAC(_MaskedImage):
    def __init__(self, m):
        super().__init__(m)
        self.projector, self.predictor = head(m.heads.projector), head(m.heads.predictor)

    def forward(self, batch, ctx) -> torch.Tensor:
        c = self.cfg
        full, small = batch["full"][0], batch["small"][0]
        b = full.shape[0]
        ids_keep, ids_restore, mask = mae_masking(b, self.length, c.mask_ratio, ctx.generator(), full.device)
        pred, cls_b = self.decoder(self.encode_masked(full, ids_keep), ids_restore)
        cls_a = vit_blocks(self.vit, vit_tokens(self.vit, small))[:, 0]
        h_a, h_b = self.decoder.decoder_embed(cls_a), cls_b
        z1, z2 = self.projector(h_a), self.projector(h_b)
        l_con = losses.simsiam(self.predictor(z1), self.predictor(z2), z1, z2)
        l_rec = mae_loss(pred, patchify(full, self.patch), mask, c.norm_pix)
        return l_con + c.rec_weight * c.rec_weight_decay ** ctx.epoch * l_rec
