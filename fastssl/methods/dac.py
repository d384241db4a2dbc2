"""DAC (dac.txt): MAE plus SimSiam between two cheap views of one image.

    view B  a random crop, masked as MAE (75 %): encoder on the K kept patches -> decoder -> pixels + CLS
    view A  the whole image resized so that its patch grid has exactly K patches (dac.txt §3.1:
            "the resized image have the same number of patches as unmasked parts"); 224 px / 16 at
            75 % -> 112 px (7×7 = 49 = 196/4), the paper's "resize scale 0.5"; 28 px / 7 -> 14 px
    L = L_SimSiam + λ_e·L_rec,  λ_e = 0.24·0.996^epoch (Table 1), L_rec on view B's masked patches.

Contrastive features (§3.2 and the Table 7 ablation): view B's is the decoder output CLS; view A's is
its *encoder* CLS passed through the decoder embedding ("the encoder output with an additional linear
layer to make shapes match"), so both live in the decoder width. ``small_feature: decoder`` is Table 7's
symmetric row ("both decoder outputs"): view A's K tokens also go through the decoder and its decoder
output CLS is the feature (``decode_whole``). They share one 2-layer projector and
SimSiam's 2-layer predictor (§3.3), applied per view, with SimSiam's symmetric stop-gradient loss
(the paper says "SimSiam loss" and nothing about asymmetry of the loss; we keep SimSiam's official
symmetric form). Both views go through the encoder in one packed call (1 + K tokens each).

Augmentations (Tables 2, 3 and §4.1): view B is a random resized crop (scale 0.2–1) with colour
jitter, grey-scale and flip but no blur and no solarize ("mask modelling is equivalent to a strong
blurring"); view A is *not* cropped ("for downsampled image, we didn't perform cropping"): the whole
image resized to p·√K px with its own colour jitter, grey-scale, flip, blur (p = 0.1) and solarize
(p = 0.2). ``small_view: same_crop`` instead makes view A view B's crop resized, same pixels and
flip: an ablation, measured worse (notes/masked_image.md).
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from fastssl.data.batch import Batch
from fastssl.data.crops import CropSpec
from fastssl.methods.base import MethodModule, ParamGroup, StepContext, StepOutput, trainable
from fastssl.methods.masked_image import MaskedImageFields, build_decoder, draw_masks, kept_count
from fastssl.methods.parts import SiamesePair, pair_metrics, param_dtype, simsiam_loss, simsiam_predictor
from fastssl.models.decoder import MaskedDecoder
from fastssl.models.heads import HeadConfig
from fastssl.models.vit.layout import AttnLayout
from fastssl.models.vit.pos_embed import resample_patch_pos
from fastssl.models.vit.views import ImageView, MaskedView
from fastssl.ops import masked_patch_loss, patchify


def _projector() -> HeadConfig:
    return HeadConfig(hidden_dim=2048, out_dim=2048, num_layers=2, norm="batchnorm", last_norm=True)


class DACConfig(MaskedImageFields):
    name: Literal["dac"] = "dac"
    mask_ratio: float = Field(0.75, gt=0.0, lt=1.0, description="View B's masked fraction; K = L·(1 − r) must be a square.")
    rec_weight: float = Field(0.24, ge=0.0, description="λ at epoch 0 (Table 1: 0.24).")
    rec_weight_decay: float = Field(0.996, gt=0.0, le=1.0, description="λ_e = rec_weight · rec_weight_decay^epoch.")
    projector: HeadConfig = Field(default_factory=_projector, description="2-layer projection MLP (§3.3).")
    predictor: HeadConfig = Field(default_factory=simsiam_predictor, description="SimSiam's predictor; out_dim = projector.out_dim.")
    small_view: Literal["whole", "same_crop"] = Field(
        "whole", description="View A: the whole image downsampled (§4.1, Table 3) or view B's crop resized (ablation).")
    small_feature: Literal["encoder", "decoder"] = Field(
        "encoder", description="View A's contrastive feature: its encoder CLS through decoder_embed (the paper's "
                               "asymmetric design) or its decoder output CLS (Table 7's symmetric ablation).")


def decode_whole(dec: MaskedDecoder, tokens: torch.Tensor, cls: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """View A through the decoder (Table 7's symmetric row): tokens ``[N, h·w, De]`` (all patches of
    its ``grid``), cls ``[N, De]`` -> the decoder output CLS ``[N, Dd]``.

    The paper only says "both decoder outputs". View A has nothing masked, so this is MAE's
    ``forward_decoder`` with an empty mask (its official code appends no mask token then): 1 + h·w
    tokens, not the 1 + L of view B, and no mask tokens standing in for patches the view does have.
    Its positional table is the decoder's native one resampled bicubically to view A's grid, as the
    encoder resamples its own table for this view (``resample_patch_pos``) and as MAE's code does for
    an input of another resolution (its ``interpolate_pos_embed``): view A covers the whole image, so
    each of its tokens keeps the position of the image region it covers (a sin-cos table built for
    the small grid would instead put its tokens on the first h·w positions of the full grid). The
    feature is the CLS after the decoder's norm, the same point as view B's."""
    pos = dec.pos_embed.to(dec.decoder_embed.weight.dtype)
    x = dec.decoder_embed(tokens) + resample_patch_pos(pos[1:], dec.grid, grid)
    c = dec.decoder_embed(cls) + pos[0]
    x = torch.cat([c.unsqueeze(1).to(x.dtype), x], dim=1)  # [N, 1 + h·w, Dd]
    n, length, d = x.shape
    layout = AttnLayout.build((length,) * n, None, x.device)
    h = x.reshape(n * length, d)
    for blk in dec.blocks:
        h = blk(h, layout)
    return dec.norm(h.view(n, length, d)[:, 0])  # the CLS row only: view A has no reconstruction target


def small_size(img_size: int, patch_size: int, ratio: float) -> int:
    """Side of view A: p·√K pixels, K = the kept patches of view B; K must be a perfect square."""
    grid = img_size // patch_size
    k = kept_count(grid * grid, ratio)
    side = math.isqrt(k)
    if side * side != k:
        raise ValueError(f"method.mask_ratio {ratio} keeps {k} of {grid * grid} patches, not a square number: "
                         f"DAC's resized view needs a square grid of exactly K patches (e.g. 0.75 on a square grid)")
    return side * patch_size


class DAC(MethodModule):
    Config = DACConfig

    def __init__(self, cfg: DACConfig, encoder: nn.Module):
        super().__init__(cfg, encoder)
        self.decoder = build_decoder(encoder, cfg)
        self.small = small_size(encoder.config["img_size"], encoder.patch_size, cfg.mask_ratio)
        self.heads = SiamesePair(cfg.decoder.embed_dim, cfg.projector, cfg.predictor)

    def crops(self) -> tuple[CropSpec, ...]:
        full = CropSpec("full", blur_p=0.0, solarize_p=0.0)  # Table 2: no blur, no solarize
        if self.cfg.small_view == "same_crop":
            return full, CropSpec("small", size=self.small, resize_of="full")
        return full, CropSpec("small", size=self.small, crop=False, blur_p=0.1, solarize_p=0.2)  # Table 3

    def param_groups(self) -> list[ParamGroup]:
        return [ParamGroup("all", trainable(self.encoder, "encoder.") + trainable(self.decoder, "decoder.")
                           + trainable(self.heads, "heads."))]

    def rec_weight(self, epoch: float) -> float:
        return self.cfg.rec_weight * self.cfg.rec_weight_decay ** epoch

    def features(self, full: torch.Tensor, small: torch.Tensor, ids_keep: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ``(pred [B, L, p·p·C] of view B, h [2B, Dd] = [view A's feature; view B's])``."""
        dec = self.decoder
        enc = self.encoder.encode([MaskedView(full, ids_keep), ImageView(small)])
        pred, cls_b = dec(enc[0].final.dense(), enc[0].cls, ids_keep, backend=self.cfg.backend)
        if self.cfg.small_feature == "decoder":
            side = small.shape[-1] // self.encoder.patch_size
            feat_a = decode_whole(dec, enc[1].final.dense(), enc[1].cls, (side, side))
        else:
            feat_a = dec.decoder_embed(enc[1].cls)
        return pred, torch.cat([feat_a, cls_b])

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        dtype = param_dtype(self.encoder)
        full, small = batch["full"][0].to(dtype), batch["small"][0].to(dtype)
        if small.shape[-1] != self.small:
            raise ValueError(f"view A must be {self.small} px (K patches), got {small.shape[-1]}")
        b, p = full.shape[0], self.encoder.patch_size
        num_patches = self.encoder.grid[0] * self.encoder.grid[1]
        ids_keep, mask = draw_masks(ctx.generator(), 1, b, num_patches, self.cfg.mask_ratio, full.device)
        pred, h = self.features(full, small, ids_keep)
        pr, z = self.heads(h)
        l_con = simsiam_loss(pr, z)
        masked = b * (num_patches - kept_count(num_patches, self.cfg.mask_ratio))
        l_rec = masked_patch_loss(pred, patchify(full, p, backend=self.cfg.backend), mask, norm_pix=self.cfg.norm_pix,
                                  num_masked=masked, backend="reference" if self.cfg.backend == "reference" else "auto")
        lam = self.rec_weight(ctx.epoch)
        metrics = {"loss_simsiam": l_con.detach(), "loss_rec": l_rec.detach(), "rec_weight": torch.tensor(lam)}
        metrics.update(pair_metrics(*z.chunk(2)))
        return StepOutput(loss=l_con + lam * l_rec, metrics=metrics)
