"""Small pieces the two-view methods share: encode every view in one call, heads per view,
the collapse monitors."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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


@torch.no_grad()
def pair_metrics(a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    """Monitors for a pair of ``[B, D]`` embeddings of the two views: mean cosine of the pairs, and
    the per-dimension std of the normalised embeddings (1/sqrt(D) when spread, 0 when collapsed)."""
    na, nb = F.normalize(a.float(), dim=1), F.normalize(b.float(), dim=1)
    return {"pos_cosine": (na * nb).sum(1).mean(), "z_std": na.std(dim=0).mean()}


def per_view_chunks(head: nn.Module, x: torch.Tensor, n_views: int = 2) -> torch.Tensor:
    """``head`` on ``x [c, V·B, D]`` (c chunks of each of the V·B view-major images) -> ``[c, V·B, D']``.

    The head sees the c·B chunk rows of one view at a time, so BatchNorm statistics are per view
    (each chunk counts as an image of that view's batch); with c = 1 this is ``per_view``."""
    c = x.shape[0]
    outs = [head(v.reshape(-1, v.shape[-1])).view(c, v.shape[1], -1) for v in x.chunk(n_views, dim=1)]
    return torch.cat(outs, dim=1)


def online_and_predictor_groups(encoder: nn.Module, projector: nn.Module, predictor: nn.Module) -> list:
    """BYOL's and MoCo v3's parameter groups: the online encoder + projector, and the predictor."""
    from fastssl.methods.param_groups import ParamGroup, trainable

    return [ParamGroup("online", trainable(encoder, "encoder.") + trainable(projector, "projector.")),
            ParamGroup("predictor", trainable(predictor, "predictor."))]


@torch.no_grad()
def target_projections(target: nn.Module, views: torch.Tensor) -> torch.Tensor:
    """An ``EmaTarget(encoder, projector)``'s projections of ``views [2, B, ...]``: ``[2B, D]``, heads per view."""
    return per_view(target.net[1], encode_views(target.net[0], views), 2)
