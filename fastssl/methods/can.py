"""CAN (can.txt): contrastive + masked autoencoding + denoising, on two views, 50 % masked each.

Per view v of image i (§3):
    σ ~ U[0, σ_max] per image and view; x̃ = x + σ·ε, ε ~ N(0, I) (noise before masking, §3.4)
    encoder on the kept patches of x̃ -> tokens; mean over them -> projector -> u (InfoNCE, τ = 0.1,
    in-batch negatives from both views: ``nt_xent``)
    decoder on the tokens with mask tokens, + SigmaEmbedding(σ) on every token -> x̂ [L, p·p·3]
    L_rec     = masked patches: MSE(x̂, clean x) (per-patch normalised target when norm_pix, as MAE)
    L_denoise = visible patches: MSE(x̂, σ·ε)  (the noise itself is the target, §3.4)
    L = λ_InfoNCE·L_InfoNCE + (1 − λ_InfoNCE)·(λ·L_rec + (1 − λ)·L_denoise)

The noise is drawn inside ``patchify_noise`` (one read of the image gives the noisy kept patches,
their noise and the clean normalised target; Triton on CUDA) and the noisy patch vectors go straight
to the patch embedding (``PatchesView``). The eager reference in the tests
(``tests/methods/_masked_image_ref.py``) adds noise to the whole image, masks with MAE's code and
weighs both losses with ``(1 − mask)`` / ``mask`` as the paper's formulas are written.

Heads: the paper's projector is "a lightweight MLP ... into a lower dimension" and it does not give
its layers; we use SimCLR's 2-layer MLP with BN (2048 → 256 at ViT-B), applied to both views at once
as SimCLR's code does.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from fastssl.data.batch import Batch
from fastssl.data.crops import TWO_VIEWS, CropSpec
from fastssl.methods.base import MethodModule, ParamGroup, StepContext, StepOutput, trainable
from fastssl.methods.masked_image import MaskedImageFields, build_decoder, draw_masks, rank_rows, world_size
from fastssl.methods.parts import pair_metrics, param_dtype
from fastssl.models.heads import HeadConfig, MLPHead
from fastssl.models.sigma_embed import SigmaEmbedding
from fastssl.models.vit.views import PatchesView
from fastssl.ops import gather_tokens, masked_patch_loss, nt_xent, patchify_noise
from fastssl.ops.host_copy import to_device


def _projector() -> HeadConfig:
    return HeadConfig(hidden_dim=2048, out_dim=256, num_layers=2, norm="batchnorm")


class CANConfig(MaskedImageFields):
    name: Literal["can"] = "can"
    mask_ratio: float = Field(0.5, gt=0.0, lt=1.0, description="Fraction of patches removed per view (paper: 50 %).")
    sigma_max: float = Field(0.05, ge=0.0, description="σ ~ U[0, sigma_max] per view (in normalised pixel units).")
    temperature: float = Field(0.1, gt=0.0, description="InfoNCE τ.")
    infonce_weight: float = Field(0.03, ge=0.0, le=1.0, description="λ_InfoNCE.")
    rec_weight: float = Field(0.5, ge=0.0, le=1.0, description="λ: reconstruction vs denoising inside (1 − λ_InfoNCE).")
    gather_distributed: bool = Field(True, description="InfoNCE negatives from every rank (the global batch).")
    projector: HeadConfig = Field(default_factory=_projector)


class CAN(MethodModule):
    Config = CANConfig

    def __init__(self, cfg: CANConfig, encoder: nn.Module):
        super().__init__(cfg, encoder)
        self.decoder = build_decoder(encoder, cfg)
        d = cfg.decoder.embed_dim
        self.sigma_embed = SigmaEmbedding(d, scale=1000.0 / cfg.sigma_max if cfg.sigma_max > 0 else 1.0)
        self.projector = MLPHead(encoder.num_features, cfg.projector)

    def crops(self) -> tuple[CropSpec, ...]:
        return TWO_VIEWS

    def param_groups(self) -> list[ParamGroup]:
        return [ParamGroup("all", trainable(self.encoder, "encoder.") + trainable(self.decoder, "decoder.")
                           + trainable(self.sigma_embed, "sigma_embed.") + trainable(self.projector, "projector."))]

    def combine(self, l_nce: torch.Tensor, l_rec: torch.Tensor, l_den: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        return c.infonce_weight * l_nce + (1 - c.infonce_weight) * (c.rec_weight * l_rec + (1 - c.rec_weight) * l_den)

    def _encode_decode(self, images, sigma, ids_keep, mask, gen):
        """-> (mean of the kept tokens [2B, D], L_rec, L_denoise)."""
        c, p = self.cfg, self.encoder.patch_size
        pn = patchify_noise(images.detach(), p, sigma, ids_keep=ids_keep, norm_target=c.norm_pix, generator=gen,
                            backend=c.backend)
        out = self.encoder.encode([PatchesView(pn.inputs, ids_keep, self.encoder.grid)])[0]
        tokens = out.final.dense()  # [2B, K, D]
        pred, _ = self.decoder(tokens, out.cls, ids_keep, self.sigma_embed(sigma), backend=c.backend)
        n, length = mask.shape
        masked = n * (length - ids_keep.shape[1])
        l_rec = masked_patch_loss(pred, pn.target, mask, norm_pix=False, num_masked=masked,
                                  backend="reference" if c.backend == "reference" else "auto")
        pred_kept = gather_tokens(pred, ids_keep, backend=c.backend)
        l_den = (pred_kept.float() - pn.noise.float()).pow(2).mean()
        return tokens.mean(dim=1), l_rec, l_den

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        c = self.cfg
        views = batch["views"]  # [2, B, 3, S, S]
        v, b = views.shape[:2]
        images = views.flatten(0, 1).to(param_dtype(self.encoder))
        num_patches = self.encoder.grid[0] * self.encoder.grid[1]
        gen = ctx.generator()
        ids_keep, mask = draw_masks(gen, v, b, num_patches, c.mask_ratio, images.device)
        sigma = to_device(rank_rows(torch.rand(v * world_size() * b, generator=gen) * c.sigma_max, v, b), images.device)
        pooled, l_rec, l_den = self._encode_decode(images, sigma, ids_keep, mask, gen)
        u = self.projector(pooled)
        z1, z2 = u.chunk(2)
        l_nce = nt_xent(z1, z2, c.temperature, gather_distributed=c.gather_distributed, backend=c.backend)
        metrics = {"loss_infonce": l_nce.detach(), "loss_rec": l_rec.detach(), "loss_denoise": l_den.detach()}
        metrics.update(pair_metrics(z1, z2))
        return StepOutput(loss=self.combine(l_nce, l_rec, l_den), metrics=metrics)
