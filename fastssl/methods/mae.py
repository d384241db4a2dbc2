"""MAE (He et al. 2022), the baseline of CAN and DAC: mask 75 % of the patches of one lightly
augmented view, encode the kept ones, decode all of them with a light decoder, regress the pixels
of the masked patches (per-patch normalised targets by default)."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from fastssl.data.batch import Batch
from fastssl.data.crops import CropSpec
from fastssl.methods.base import MethodModule, ParamGroup, StepContext, StepOutput, trainable
from fastssl.methods.masked_image import MaskedImageFields, build_decoder, draw_masks, kept_count
from fastssl.methods.parts import param_dtype
from fastssl.models.vit.views import MaskedView
from fastssl.ops import masked_patch_loss, patchify


class MAEConfig(MaskedImageFields):
    name: Literal["mae"] = "mae"
    mask_ratio: float = Field(0.75, gt=0.0, lt=1.0, description="Fraction of patches removed per image.")
    crop_scale: tuple[float, float] = Field((0.2, 1.0), description="MAE's RandomResizedCrop scale (crop + flip only).")


class MAE(MethodModule):
    Config = MAEConfig

    def __init__(self, cfg: MAEConfig, encoder: nn.Module):
        super().__init__(cfg, encoder)
        self.decoder = build_decoder(encoder, cfg)

    def crops(self) -> tuple[CropSpec, ...]:
        return (CropSpec("image", recipe="light", scale=self.cfg.crop_scale),)

    def param_groups(self) -> list[ParamGroup]:
        return [ParamGroup("all", trainable(self.encoder, "encoder.") + trainable(self.decoder, "decoder."))]

    def reconstruct(self, images: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """``images [N, C, H, W]``, ``ids_keep [N, K]`` -> ``pred [N, L, p·p·C]`` (patchify order)."""
        out = self.encoder.encode([MaskedView(images, ids_keep)])[0]
        return self.decoder(out.final.dense(), out.cls, ids_keep, backend=self.cfg.backend)[0]

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        images = batch["image"][0].to(param_dtype(self.encoder))  # [B, 3, S, S]
        b, p = images.shape[0], self.encoder.patch_size
        num_patches = self.encoder.grid[0] * self.encoder.grid[1]
        ids_keep, mask = draw_masks(ctx.generator(), 1, b, num_patches, self.cfg.mask_ratio, images.device)
        pred = self.reconstruct(images, ids_keep)
        masked = b * (num_patches - kept_count(num_patches, self.cfg.mask_ratio))
        target = patchify(images, p, backend=self.cfg.backend)
        loss = masked_patch_loss(pred, target, mask, norm_pix=self.cfg.norm_pix, num_masked=masked,
                                 backend="reference" if self.cfg.backend == "reference" else "auto")
        return StepOutput(loss=loss, metrics={"loss_rec": loss.detach()})
