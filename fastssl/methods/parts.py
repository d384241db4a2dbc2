"""The pieces several methods share (the contract itself is ``base.py``; the contrastive losses and
the Sinkhorn are ``fastssl.ops``).

    encoding      param_dtype, encode_views, per_view, per_view_chunks, target_projections
    monitors      pair_metrics, vmf_kappa (Masked MoCo / BYOL)
    losses        negative_cosine (SimSiam's D), normalized_mse (BYOL's), swapped_prediction (SwAV's),
                  simsiam_loss (SimSiam, DAC)
    heads         simsiam_predictor, SiamesePair (SimSiam, DAC)
    skeleton      MomentumSiamese: online encoder + projector + predictor, EMA target (BYOL, MoCo v3)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastssl.data.batch import Batch
from fastssl.data.crops import TWO_VIEWS, CropSpec
from fastssl.methods.base import MethodModule, ParamGroup, StepContext, StepOutput, trainable
from fastssl.models.ema import EmaTarget, cosine_momentum
from fastssl.models.heads import HeadConfig, MLPHead


# ---- encoding ----------------------------------------------------------------------------------

def param_dtype(module: nn.Module) -> torch.dtype:
    """The dtype the module computes in (bf16/fp16 under DeepSpeed mixed precision)."""
    return next(module.parameters()).dtype


def encode_views(encoder: nn.Module, views: torch.Tensor) -> torch.Tensor:
    """``views [n, B, 3, S, S]`` → ``[n·B, D]`` CLS features, view-major, in one encoder call.

    The ViT has no batch statistics (LayerNorm is per token), so encoding the views together is
    the same as one call per view, and one packed forward is faster."""
    return encoder(views.flatten(0, 1).to(param_dtype(encoder)))


def per_view(head: nn.Module, x: torch.Tensor, n: int) -> torch.Tensor:
    """``head`` applied to each of the ``n`` view-major chunks of ``x [n·B, ...]`` separately, so
    BatchNorm statistics are per view, as in BYOL's, SimSiam's and MoCo v3's official code."""
    return torch.cat([head(c) for c in x.chunk(n)])


def per_view_chunks(head: nn.Module, x: torch.Tensor, n_views: int = 2) -> torch.Tensor:
    """``head`` on ``x [c, V·B, D]`` (c chunks of each of the V·B view-major images) -> ``[c, V·B, D']``.

    The head sees the c·B chunk rows of one view at a time, so BatchNorm statistics are per view
    (each chunk counts as an image of that view's batch); with c = 1 this is ``per_view``."""
    c = x.shape[0]
    outs = [head(v.reshape(-1, v.shape[-1])).view(c, v.shape[1], -1) for v in x.chunk(n_views, dim=1)]
    return torch.cat(outs, dim=1)


@torch.no_grad()
def target_projections(target: nn.Module, views: torch.Tensor) -> torch.Tensor:
    """An ``EmaTarget(encoder, projector)``'s projections of ``views [2, B, ...]``: ``[2B, D]``, heads per view."""
    return per_view(target.net[1], encode_views(target.net[0], views), 2)


# ---- monitors ----------------------------------------------------------------------------------

@torch.no_grad()
def pair_metrics(a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    """Monitors for a pair of ``[B, D]`` embeddings of the two views: mean cosine of the pairs, and
    the per-dimension std of the normalised embeddings (1/sqrt(D) when spread, 0 when collapsed)."""
    na, nb = F.normalize(a.float(), dim=1), F.normalize(b.float(), dim=1)
    return {"pos_cosine": (na * nb).sum(1).mean(), "z_std": na.std(dim=0).mean()}


# The κ monitor of Masked MoCo / BYOL (masked_moco_byol.txt §3.4, Figure 6).
#
# The n chunk representations of one image are unit-normalised and treated as samples of a von
# Mises–Fisher distribution on the sphere S^{d−1}; its concentration κ is estimated with Banerjee
# et al. (2005)'s approximation of the maximum-likelihood solution
#
#     r̄ = ‖(1/n) Σ_i x̂_i‖,    κ̂ = r̄ (d − r̄²) / (1 − r̄²)
#
# (large κ: the chunks of an image agree; κ → 0: they point anywhere). With few samples per image
# (n = 8) r̄ is biased upwards, so κ̂ is a relative monitor across training, as in the paper, not an
# unbiased estimate.
@torch.no_grad()
def vmf_kappa(x: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """Per-image vMF concentration of ``x [n, B, d]`` (n samples of each of B images) -> ``[B]``.

    Computed in fp64 (the inputs are small; ``1 − r̄²`` cancels badly in fp32 once the chunks of an
    image agree to 1e-4, which happens at initialisation), returned in fp32 or the input's wider
    dtype. Needs n ≥ 2 (one sample gives r̄ = 1, κ = ∞). ``1 − r̄²`` is clamped at ``eps`` so
    identical samples give a large finite value instead of inf.
    """
    if x.ndim != 3 or x.shape[0] < 2:
        raise ValueError(f"x must be [n >= 2, B, d] (n samples per image), got {tuple(x.shape)}")
    d = x.shape[-1]
    unit = F.normalize(x.double(), dim=-1)
    r = unit.mean(dim=0).norm(dim=-1)  # [B], mean resultant length in [0, 1]
    r2 = r * r
    return (r * (d - r2) / (1.0 - r2).clamp_min(eps)).to(torch.promote_types(x.dtype, torch.float32))


# ---- losses (the non-contrastive ones) ---------------------------------------------------------

def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, z) = −mean_i cos(p_i, z_i) over ``[B, D]`` rows, in fp32 or wider. The caller
    detaches z (stop-gradient) where the method says so."""
    return -F.cosine_similarity(_at_least_fp32(p), _at_least_fp32(z), dim=-1, eps=1e-8).mean()


def normalized_mse(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's ‖p̄ − z̄‖² = 2 − 2·cos(p, z), averaged over ``[B, D]`` rows, in fp32 or wider."""
    return 2.0 + 2.0 * negative_cosine(p, z)


def swapped_prediction(scores: list[torch.Tensor], codes: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """SwAV's loss. scores: per crop ``[B, K]`` (the first ``len(codes)`` are the crops with codes),
    codes: per coded crop ``[B, K]`` (rows sum to 1, no gradient). Each coded crop i is predicted
    by every other crop v: mean over i of the mean over v ≠ i of −Σ_k Q_i · log softmax(s_v / τ)."""
    total = scores[0].new_zeros((), dtype=torch.float32)
    for i, q in enumerate(codes):
        others = [v for v in range(len(scores)) if v != i]
        sub = sum(-(q * F.log_softmax(scores[v].float() / temperature, dim=1)).sum(1).mean() for v in others)
        total = total + sub / len(others)
    return total / len(codes)


def simsiam_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam eq. 4, symmetric, stop-gradient on the targets: L = D(p₁, sg(z₂))/2 + D(p₂, sg(z₁))/2.
    p, z: ``[2B, D]`` view-major; z is detached here."""
    p1, p2 = p.chunk(2)
    z1, z2 = z.detach().chunk(2)
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)


# ---- heads -------------------------------------------------------------------------------------

def simsiam_predictor(out_dim: int = 2048, hidden_dim: int = 512) -> HeadConfig:
    """SimSiam's predictor: out_dim → hidden_dim (BN, ReLU) → out_dim (its input is the projection)."""
    return HeadConfig(hidden_dim=hidden_dim, out_dim=out_dim, num_layers=2, norm="batchnorm")


class SiamesePair(nn.Module):
    """Projector + SimSiam predictor on two views' features ``h [2B, D]`` -> ``(p, z)``, each ``[2B, P]``,
    both heads per view (BatchNorm statistics per view, as SimSiam's official code)."""

    def __init__(self, in_dim: int, projector: HeadConfig, predictor: HeadConfig):
        super().__init__()
        if predictor.out_dim != projector.out_dim:
            raise ValueError(f"method.predictor.out_dim ({predictor.out_dim}) must equal method.projector.out_dim ({projector.out_dim})")
        self.projector = MLPHead(in_dim, projector)
        self.predictor = MLPHead(projector.out_dim, predictor)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = per_view(self.projector, h, 2)
        return per_view(self.predictor, z, 2), z


# ---- skeleton ----------------------------------------------------------------------------------

class MomentumSiamese(MethodModule):
    """BYOL's and MoCo v3's common step: both views through the online encoder (one packed call),
    projector and predictor per view -> q ``[2B, P]``; the EMA target's projections -> k ``[2B, P]``
    (no gradient); ``loss(q, k)``. The target follows encoder + projector with the cosine momentum
    base → 1 after every step. A subclass sets ``Config`` (with ``projector``, ``predictor`` and
    ``base_momentum``) and ``loss``; Masked MoCo / BYOL (``masked.py``) also put a neck (class
    attention) between encoder and projector, which the target follows too, and their own step."""

    def __init__(self, cfg, encoder: nn.Module):
        super().__init__(cfg, encoder)
        self.build_neck()  # before the heads: module creation order is the seeded init order
        self.projector = MLPHead(encoder.num_features, cfg.projector)
        self.predictor = MLPHead(cfg.projector.out_dim, cfg.predictor)
        self.target = EmaTarget(*self.online())

    def build_neck(self) -> None:
        """Register modules between the encoder and the projector (none here)."""

    def online(self) -> list[nn.Module]:
        """The modules the target follows, in the target's order."""
        return [self.encoder, self.projector]

    def crops(self) -> tuple[CropSpec, ...]:
        return TWO_VIEWS  # view 1 always blurred, view 2 solarized with p = 0.2: data.augment's pairs

    def param_groups(self) -> list[ParamGroup]:
        """The online encoder + projector, and the predictor."""
        return [ParamGroup("online", trainable(self.encoder, "encoder.") + trainable(self.projector, "projector.")),
                ParamGroup("predictor", trainable(self.predictor, "predictor."))]

    def loss(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        views = batch["views"]  # [2, B, 3, S, S]
        q = per_view(self.predictor, per_view(self.projector, encode_views(self.encoder, views), 2), 2)
        k = target_projections(self.target, views)
        q1, q2 = q.chunk(2)
        return StepOutput(loss=self.loss(q, k), metrics=pair_metrics(q1, q2))

    def after_step(self, ctx: StepContext) -> None:
        self.target.update_(*self.online(), momentum=cosine_momentum(self.cfg.base_momentum, ctx.progress))
