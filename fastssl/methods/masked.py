"""What Masked MoCo and Masked BYOL share (masked_moco_byol.txt §3.2–3.4): chunked online views,
optionally chunked targets, LayerNorm heads, optional class-attention blocks, the κ monitor.

Per step, for the two views (view-major ``2B`` images):

    online   each image's patches shuffled and sliced into n chunks, each chunk + its own CLS encoded
             as an independent image, all chunks of all images in ONE packed forward (``ChunkedView``)
             -> [CA blocks] -> projector -> predictor: queries ``[n, 2B, P]``
    target   EMA copy of encoder [+ CA] + projector on the full view (m = 1) or on m chunks whose
             keys are combined by their spherical mean (eq. 4): keys ``[2B, P]``
    loss     the method's symmetric loss with the n queries averaged (eq. 3): ``loss(q, k)``

n = 1 (m = 1) encodes the plain image: MoCo v3 / BYOL exactly (a single chunk holds every patch, and
attention and pooling do not see the order, so no shuffle is needed).

Shuffles come from ``ctx.generator()`` (seeded by run seed and step): the same after a resume. The
permutations are drawn for the global batch and each rank takes its rows, so 2 ranks see the same
chunks as 1 rank on the global batch.

The two method files hold only their config and loss; this is the one place for the rest.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from pydantic import Field
from torch import nn

from fastssl.config_base import Section
from fastssl.data.batch import Batch
from fastssl.methods.base import ParamGroup, StepContext, StepOutput, trainable
from fastssl.methods.parts import MomentumSiamese, pair_metrics, param_dtype, per_view_chunks, vmf_kappa
from fastssl.models.vit.chunks import random_permutation
from fastssl.models.vit.cross_attention import ClassAttentionHead
from fastssl.models.heads import HeadConfig
from fastssl.models.vit.outputs import split_per_view
from fastssl.models.vit.views import ChunkedView, ImageView
from fastssl.ops.contrastive import spherical_mean


def ln_projector() -> HeadConfig:
    """MoCo v3's projector (3 layers, 4096 → 256, output normalised without affine) with LayerNorm (§3.4)."""
    return HeadConfig(hidden_dim=4096, out_dim=256, num_layers=3, norm="layernorm", last_norm=True)


def ln_predictor() -> HeadConfig:
    """MoCo v3's predictor (2 layers, plain linear output; §3.1: "critical" for BYOL) with LayerNorm."""
    return HeadConfig(hidden_dim=4096, out_dim=256, num_layers=2, norm="layernorm", last_norm=False)


class MaskingFields(Section):
    """The fields Masked MoCo and Masked BYOL share (each method adds its name and loss fields)."""

    n_chunks: int = Field(8, ge=1, description="Online chunks per image (paper default 8; 1 = plain MoCo v3 / BYOL).")
    target_chunks: int = Field(1, ge=1, description="Target chunks m, combined by their spherical mean (1: full target view).")
    cross_attention: bool = Field(False, description="Two class-attention blocks between ViT and projector (the paper's LN + CA).")
    cross_attention_depth: int = Field(2, ge=1, description="Class-attention blocks when cross_attention is on.")
    kappa_monitor: bool = Field(True, description="Log kappa_rep / kappa_proj / kappa_pred (needs n_chunks >= 2).")
    base_momentum: float = Field(0.99, ge=0.0, le=1.0, description="EMA momentum at step 0, cosine → 1.")
    projector: HeadConfig = Field(default_factory=ln_projector, description="norm: layernorm (default) | batchnorm.")
    predictor: HeadConfig = Field(default_factory=ln_predictor, description="Its input width is projector.out_dim.")


def global_permutations(gen: torch.Generator, views: int, batch: int, num_patches: int,
                        device: torch.device) -> torch.Tensor:
    """``[views·batch, N]`` patch permutations (view-major) of this rank's images.

    Drawn for the global batch ``[views, world·batch]`` and sliced to this rank's rows, so every
    rank uses its part of the draw a single process would make on the global batch.
    """
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    perm = random_permutation(views * world * batch, num_patches, generator=gen, device=device)
    perm = perm.view(views, world * batch, num_patches)[:, rank * batch:(rank + 1) * batch]
    return perm.reshape(views * batch, num_patches)


def encode_chunks(encoder: nn.Module, head: nn.Module | None, images: torch.Tensor, chunks: int,
                  perm: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One packed forward of ``images [M, 3, S, S]`` cut into ``chunks`` chunks per image.

    Returns ``(cls [c, M, D], rep [c, M, D])``: the CLS of every chunk (after the class-attention
    ``head`` when given) and its mean-pooled patch tokens after the last block and final norm
    ("rep", CLS excluded), chunk-major. ``chunks == 1`` encodes the whole image (c = 1).
    """
    view = ImageView(images) if chunks == 1 else ChunkedView(images, n_chunks=chunks, perm=perm)
    enc = encoder.encode([view])
    out = enc[0]
    cls = out.cls if head is None else split_per_view(head(enc.hidden, enc.pack), enc.pack)[0]
    rep = out.mean
    if chunks == 1:
        cls, rep = cls.unsqueeze(0), rep.unsqueeze(0)
    return cls, rep


class MaskedSiamese(MomentumSiamese):
    """Encoder [+ class attention] + projector + predictor and their EMA target (``MomentumSiamese``),
    and one step of a masked two-view method. A subclass sets ``Config`` (a ``MaskingFields``) and
    ``loss(q [n, 2B, P], k [2B, P])``."""

    Config = MaskingFields

    def build_neck(self) -> None:
        cfg, encoder = self.cfg, self.encoder
        self.cross_attention = (ClassAttentionHead(encoder.num_features, encoder.config["num_heads"],
                                                   depth=cfg.cross_attention_depth, attn_backend=encoder.dispatch.requested)
                                if cfg.cross_attention else None)

    def online(self) -> list[nn.Module]:
        return [m for m in (self.encoder, self.cross_attention, self.projector) if m is not None]

    def param_groups(self) -> list[ParamGroup]:
        """The online encoder + projector [+ class attention], and the predictor."""
        online = trainable(self.encoder, "encoder.") + trainable(self.projector, "projector.")
        if self.cross_attention is not None:
            online += trainable(self.cross_attention, "cross_attention.")
        return [ParamGroup("online", online), ParamGroup("predictor", trainable(self.predictor, "predictor."))]

    def queries(self, images: torch.Tensor, perm: torch.Tensor | None, views: int = 2):
        """Online branch on ``images [V·B, 3, S, S]`` (view-major) cut by ``perm [V·B, N]`` into
        ``n_chunks`` chunks -> ``(q [n, V·B, P] predictions, z [n, V·B, P] projections, rep [n, V·B, D])``."""
        h, rep = encode_chunks(self.encoder, self.cross_attention, images, self.cfg.n_chunks, perm)
        z = per_view_chunks(self.projector, h, views)
        return per_view_chunks(self.predictor, z, views), z, rep

    @torch.no_grad()
    def keys(self, images: torch.Tensor, perm: torch.Tensor | None, views: int = 2) -> torch.Tensor:
        """Target branch -> ``[V·B, P]``: the full view's projection (m = 1) or the spherical mean of
        the m chunk projections (eq. 4, unit vectors)."""
        net, m = self.target.net, self.cfg.target_chunks
        head = net[1] if self.cross_attention is not None else None
        h, _ = encode_chunks(net[0], head, images, m, perm)
        keys = per_view_chunks(net[-1], h, views)  # [m, V·B, P]
        return keys[0] if m == 1 else spherical_mean(keys)

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        views = batch["views"]  # [2, B, 3, S, S]
        v, b = views.shape[:2]
        images = views.flatten(0, 1).to(param_dtype(self.encoder))
        n, m = self.cfg.n_chunks, self.cfg.target_chunks
        grid = images.shape[-1] // self.encoder.patch_size
        gen = ctx.generator()
        perm_q = global_permutations(gen, v, b, grid * grid, images.device) if n > 1 else None
        perm_k = global_permutations(gen, v, b, grid * grid, images.device) if m > 1 else None
        q, z, rep = self.queries(images, perm_q, v)
        k = self.keys(images, perm_k, v)
        metrics = pair_metrics(q[:, :b].mean(0), q[:, b:].mean(0))
        if self.cfg.kappa_monitor and n > 1:
            for place, x in (("rep", rep), ("proj", z), ("pred", q)):
                metrics[f"kappa_{place}"] = vmf_kappa(x.detach()).mean()
        return StepOutput(loss=self.loss(q, k), metrics=metrics)
