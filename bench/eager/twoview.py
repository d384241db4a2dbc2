"""Eager references of the two-view and multi-crop methods, as their official PyTorch code runs a step.

SimCLR     both views in one batch through encoder + projector (BN over 2N), NT-Xent / DCL / DCLW on
           the full 2N×2N logits (``fastssl/methods/parts.py``)
BYOL       online encoder → projector → predictor per view; the target (a deep copy) per view without
           gradient; ``2 − 2·cos`` both ways; the momentum loop after the optimizer step
SimSiam    encoder → projector → predictor per view, stop-gradient, symmetric negative cosine
MoCo v3    per view queries, momentum update (loop) inside the forward, keys per view, N×N logits ×2τ
MoCo v2    queries from view 1, momentum update, keys from view 2, positive + queue logits, the queue
           a ``[D, K]`` buffer written at a host-read pointer (``int(queue_ptr)``)
SwAV       prototypes normalised, the backbone once per crop resolution, the head once over all crops,
           Sinkhorn on each global crop, swapped prediction from every other crop
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.eager import losses
from bench.eager.nets import cosine_momentum, frozen_copy, head, momentum_update, timm_encoder


class EagerSimCLR(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.cfg = m.cfg
        self.encoder, self.projector = timm_encoder(m.encoder), head(m.projector)

    def forward(self, batch, ctx) -> torch.Tensor:
        v = batch["views"]
        z1, z2 = self.projector(self.encoder(torch.cat([v[0], v[1]]))).chunk(2)
        c = self.cfg
        if c.loss == "nt_xent":
            return losses.nt_xent(z1, z2, c.temperature)
        return losses.dcl(z1, z2, c.temperature, c.weight_sigma if c.loss == "dclw" else None)


class _Momentum(nn.Module):
    """Online encoder + projector + predictor and their momentum copy (encoder + projector)."""

    def __init__(self, m):
        super().__init__()
        self.cfg = m.cfg
        self.encoder, self.projector, self.predictor = timm_encoder(m.encoder), head(m.projector), head(m.predictor)
        self.target_encoder, self.target_projector = frozen_copy(self.encoder, self.projector)

    def online(self, x):
        return self.predictor(self.projector(self.encoder(x)))

    @torch.no_grad()
    def target(self, x):
        return self.target_projector(self.target_encoder(x))

    def update(self, m: float) -> None:
        momentum_update(self.target_encoder, self.encoder, m)
        momentum_update(self.target_projector, self.projector, m)


class EagerBYOL(_Momentum):
    def forward(self, batch, ctx) -> torch.Tensor:
        v = batch["views"]
        p1, p2 = self.online(v[0]), self.online(v[1])
        z1, z2 = self.target(v[0]), self.target(v[1])
        return losses.byol(p1, z2) + losses.byol(p2, z1)

    def after_step(self, ctx) -> None:
        self.update(cosine_momentum(self.cfg.base_momentum, ctx.progress))


class EagerMoCoV3(_Momentum):
    def forward(self, batch, ctx) -> torch.Tensor:
        v = batch["views"]
        q1, q2 = self.online(v[0]), self.online(v[1])
        self.update(cosine_momentum(self.cfg.base_momentum, ctx.progress))  # official: before the keys
        k1, k2 = self.target(v[0]), self.target(v[1])
        t = self.cfg.temperature
        return losses.moco_v3(q1, k2, t) + losses.moco_v3(q2, k1, t)


class EagerSimSiam(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.encoder, self.projector, self.predictor = timm_encoder(m.encoder), head(m.projector), head(m.predictor)

    def forward(self, batch, ctx) -> torch.Tensor:
        v = batch["views"]
        z1, z2 = self.projector(self.encoder(v[0])), self.projector(self.encoder(v[1]))
        return losses.simsiam(self.predictor(z1), self.predictor(z2), z1, z2)


class EagerMoCoV2(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.cfg = m.cfg
        self.encoder_q = nn.Sequential(timm_encoder(m.encoder), head(m.projector))
        (self.encoder_k,) = frozen_copy(self.encoder_q)
        self.register_buffer("queue", m.queue.keys.detach().t().clone())  # [D, K], as the official code keeps it
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys: torch.Tensor) -> None:
        b = keys.shape[0]
        ptr = int(self.queue_ptr)
        self.queue[:, ptr:ptr + b] = keys.t().to(self.queue.dtype)
        self.queue_ptr[0] = (ptr + b) % self.queue.shape[1]

    def forward(self, batch, ctx) -> torch.Tensor:
        v = batch["views"]
        q = self.encoder_q(v[0])
        with torch.no_grad():
            momentum_update(self.encoder_k, self.encoder_q, self.cfg.momentum)
            k = F.normalize(self.encoder_k(v[1]), dim=1)
        loss = losses.moco_v2(q, k, self.queue, self.cfg.temperature)
        self._dequeue_and_enqueue(k)
        return loss


class EagerSwAV(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.cfg = m.cfg
        self.encoder, self.projector = timm_encoder(m.encoder), head(m.projector)
        self.prototypes = nn.Linear(m.prototypes.in_features, m.prototypes.out_features, bias=False)
        self.prototypes.load_state_dict(m.prototypes.state_dict())

    def forward(self, batch, ctx) -> torch.Tensor:
        with torch.no_grad():  # official: normalise the prototypes at the start of every iteration
            w = self.prototypes.weight.data.clone()
            self.prototypes.weight.copy_(F.normalize(w, dim=1, p=2))
        inputs = list(batch["global"]) + (list(batch["local"]) if self.cfg.n_local else [])
        idx_crops = torch.cumsum(torch.unique_consecutive(torch.tensor([x.shape[-1] for x in inputs]), return_counts=True)[1], 0)
        start, feats = 0, []
        for end in idx_crops.tolist():
            feats.append(self.encoder(torch.cat(inputs[start:end])))
            start = end
        z = F.normalize(self.projector(torch.cat(feats)), dim=1, p=2)
        c = self.cfg
        return losses.swav(self.prototypes(z), inputs[0].shape[0], len(inputs), c.temperature, c.epsilon, c.sinkhorn_iterations)
