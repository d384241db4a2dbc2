"""The eager reference of MAE, CAN and DAC, run with the *same modules* (weights) as the fastssl
method, so one model can be run both ways and compared loss for loss and gradient for gradient.

What a user of MAE's official ``models_mae.py`` runs: every op on its reference, ViT blocks on
dense ``[N, T, D]`` batches with plain ``scaled_dot_product_attention``, MAE's encoder input (conv
patch embedding of every patch, add the positional table, then gather the kept tokens), one encoder
call per view, the decoder's scatter on the reference op. CAN adds noise to the whole image and
weighs its two pixel losses with ``mask`` / ``1 − mask`` as the paper writes them; its noise comes
from ``image_noise`` (a module function, so tests can fix it), another stream than the fastssl
path's ``patchify_noise`` (same distribution).

Every sequence of these methods' views has the same length (MAE/CAN: 1 + K; DAC's resized view
has 1 + K tokens too), so the dense batch needs no padding.

    out = forward(model, batch, ctx)   # a StepOutput with the method's loss and metrics
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastssl.methods.masked_image import draw_masks, rank_rows, world_size
from fastssl.methods.base import StepOutput
from fastssl.methods.parts import pair_metrics, param_dtype, simsiam_loss
from fastssl.models.vit.pos_embed import resample_patch_pos
from fastssl.ops import nt_xent, reference


def dense_attention(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's ``Attention`` maths with a ``PackedAttention``'s weights: ``[N, T, D] -> [N, T, D]``."""
    n, t, d = x.shape
    qkv = attn.qkv(x).view(n, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [N, H, T, Dh]
    return attn.proj(o.transpose(1, 2).reshape(n, t, d))


def dense_blocks(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """Pre-norm ViT blocks (``PackedBlock`` weights) on ``[N, T, D]``; no stochastic depth."""
    for blk in blocks:
        if blk.drop_path and blk.training:
            raise ValueError("the eager reference runs without stochastic depth (model.drop_path_rate: 0)")
        x = x + blk.ls1(dense_attention(blk.attn, blk.norm1(x)))
        x = x + blk.ls2(blk.mlp(blk.norm2(x)))
    return x


def eager_encode(vit: nn.Module, images: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
    """MAE's ``forward_encoder`` with a ``PackedViT``'s weights: ``images [N, C, H, W]`` (any grid of
    the patch size; other grids get the resampled table) -> ``[N, 1 + K, D]`` after the final norm,
    CLS first, kept tokens in ``ids_keep`` order (all patches when None)."""
    p = vit.patch_size
    x = F.conv2d(images, vit.patch_embed.proj.weight, vit.patch_embed.proj.bias, stride=p)  # [N, D, h, w]
    grid = (x.shape[2], x.shape[3])
    x = x.flatten(2).transpose(1, 2)
    pos = resample_patch_pos(vit.pos_embed[0, 1:], vit.grid, grid)
    x = x + pos.unsqueeze(0)
    if ids_keep is not None:
        x = reference.gather_tokens(x, ids_keep)
    cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
    return vit.norm(dense_blocks(vit.blocks, torch.cat([cls.to(x.dtype), x], dim=1)))


def decoder_eager(dec: nn.Module, tokens: torch.Tensor, ids_keep: torch.Tensor, extra: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """MAE's ``forward_decoder`` with a ``MaskedDecoder``'s weights: tokens ``[N, 1 + K, De]`` (CLS
    first) -> ``(pred [N, L, p·p·C], cls [N, Dd])``, as ``MaskedDecoder.forward``."""
    x = dec.decoder_embed(tokens)
    full = reference.scatter_tokens(x[:, 1:], ids_keep, dec.num_patches, dec.mask_token)
    x = torch.cat([x[:, :1], full], dim=1) + dec.pos_embed.to(x.dtype).unsqueeze(0)
    if extra is not None:
        x = x + extra.unsqueeze(1)
    h = dec.norm(dense_blocks(dec.blocks, x))
    return dec.pred(h[:, 1:]), h[:, 0]


def image_noise(shape: torch.Size, gen: torch.Generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """ε ~ N(0, I) of CAN's image batch (a function so tests can fix it)."""
    return torch.randn(shape, generator=gen, device=gen.device).to(device, dtype)


def mae_forward(model, batch, ctx) -> StepOutput:
    images = batch["image"][0].to(param_dtype(model.encoder))  # [B, 3, S, S]
    b, p = images.shape[0], model.encoder.patch_size
    num_patches = model.encoder.grid[0] * model.encoder.grid[1]
    ids_keep, mask = draw_masks(ctx.generator(), 1, b, num_patches, model.cfg.mask_ratio, images.device)
    pred = decoder_eager(model.decoder, eager_encode(model.encoder, images, ids_keep), ids_keep)[0]
    loss = reference.masked_patch_loss(pred, reference.patchify(images, p), mask, model.cfg.norm_pix)
    return StepOutput(loss=loss, metrics={"loss_rec": loss.detach()})


def can_forward(model, batch, ctx) -> StepOutput:
    c, p = model.cfg, model.encoder.patch_size
    views = batch["views"]  # [2, B, 3, S, S]
    v, b = views.shape[:2]
    images = views.flatten(0, 1).to(param_dtype(model.encoder))
    num_patches = model.encoder.grid[0] * model.encoder.grid[1]
    gen = ctx.generator()  # the method's draws, in its order: masks, σ, then the noise
    ids_keep, mask = draw_masks(gen, v, b, num_patches, c.mask_ratio, images.device)
    sigma = rank_rows(torch.rand(v * world_size() * b, generator=gen) * c.sigma_max, v, b).to(images.device)
    noise = sigma.view(-1, 1, 1, 1).to(images.dtype) * image_noise(images.shape, gen, images.device, images.dtype)
    tokens = eager_encode(model.encoder, images + noise, ids_keep)
    pred, _ = decoder_eager(model.decoder, tokens, ids_keep, model.sigma_embed(sigma))
    l_rec = reference.masked_patch_loss(pred, reference.patchify(images, p), mask, c.norm_pix)
    l_den = reference.masked_patch_loss(pred, reference.patchify(noise, p), 1 - mask, False)
    z1, z2 = model.projector(tokens[:, 1:].mean(dim=1)).chunk(2)
    l_nce = nt_xent(z1, z2, c.temperature, gather_distributed=c.gather_distributed, backend="reference")
    metrics = {"loss_infonce": l_nce.detach(), "loss_rec": l_rec.detach(), "loss_denoise": l_den.detach()}
    metrics.update(pair_metrics(z1, z2))
    return StepOutput(loss=model.combine(l_nce, l_rec, l_den), metrics=metrics)


def dac_forward(model, batch, ctx) -> StepOutput:
    dtype = param_dtype(model.encoder)
    full, small = batch["full"][0].to(dtype), batch["small"][0].to(dtype)
    b, p = full.shape[0], model.encoder.patch_size
    num_patches = model.encoder.grid[0] * model.encoder.grid[1]
    ids_keep, mask = draw_masks(ctx.generator(), 1, b, num_patches, model.cfg.mask_ratio, full.device)
    dec = model.decoder
    pred, cls_b = decoder_eager(dec, eager_encode(model.encoder, full, ids_keep), ids_keep)
    if model.cfg.small_feature == "decoder":  # Table 7's symmetric ablation: view A's decoder CLS, nothing masked
        side = small.shape[-1] // p
        x = dec.decoder_embed(eager_encode(model.encoder, small))  # [B, 1 + side², Dd]
        pos = torch.cat([dec.pos_embed[:1], resample_patch_pos(dec.pos_embed[1:], dec.grid, (side, side))])
        feat_a = dec.norm(dense_blocks(dec.blocks, x + pos.to(x.dtype).unsqueeze(0)))[:, 0]
    else:  # the paper's design: view A's encoder CLS, brought to the decoder's width
        feat_a = dec.decoder_embed(eager_encode(model.encoder, small)[:, 0])
    pr, z = model.heads(torch.cat([feat_a, cls_b]))
    l_con = simsiam_loss(pr, z)
    l_rec = reference.masked_patch_loss(pred, reference.patchify(full, p), mask, model.cfg.norm_pix)
    lam = model.rec_weight(ctx.epoch)
    metrics = {"loss_simsiam": l_con.detach(), "loss_rec": l_rec.detach(), "rec_weight": torch.tensor(lam)}
    metrics.update(pair_metrics(*z.chunk(2)))
    return StepOutput(loss=l_con + lam * l_rec, metrics=metrics)


def forward(model, batch, ctx) -> StepOutput:
    """The eager step of a fastssl MAE / CAN / DAC ``model`` (its modules, its config)."""
    return {"mae": mae_forward, "can": can_forward, "dac": dac_forward}[model.cfg.name](model, batch, ctx)
