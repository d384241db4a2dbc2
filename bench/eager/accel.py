"""Eager reference of the Accel variants (intermediate_contrastive_loss.txt) of SimCLR, MoCo v2 and SwAV:
timm's ResNet run stage by stage, a torch.nn head per stage, the method's plain loss per stage.

Per step (the draws come from ``ctx.generator()`` in the fastssl method's order, so both meet the same
stage and regions): partial back-prop draws the stage s to stop at (uniform over 1 … 4); after the
hard-pair stages that are not the last one run, each view's map is cut into M random regions and,
per image, the region pair with the largest pair loss (no gradient) goes on; the loss is the
method's on the head embeddings of stage s (or the mean over stages 1 … s without PB).
SimCLR and SwAV run both views through one call per layer (BN over both); MoCo v2's keys come from
the momentum copy (updated in the forward, official MoCo order) and each stage has its own
``[D, K]`` queue written at a host-read pointer.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from bench.eager import losses
from bench.eager.nets import frozen_copy, head, momentum_update, timm_resnet

N_STAGES = 4


def stem(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net.maxpool(net.act1(net.bn1(net.conv1(x))))


def regions(x: torch.Tensor, m: int, scale: float, g: torch.Generator) -> torch.Tensor:
    """``x [B, C, H, W]`` -> ``[m, B, C, h, w]``: m random crops of side ⌊scale·H⌋ per image."""
    b, _, hh, ww = x.shape
    h, w = max(1, int(scale * hh)), max(1, int(scale * ww))
    y0 = torch.randint(0, hh - h + 1, (m, b), generator=g).to(x.device)
    x0 = torch.randint(0, ww - w + 1, (m, b), generator=g).to(x.device)
    rows = (y0[..., None] + torch.arange(h, device=x.device))[..., :, None]
    cols = (x0[..., None] + torch.arange(w, device=x.device))[..., None, :]
    img = torch.arange(b, device=x.device)[None, :, None, None]
    return x[img, :, rows, cols].permute(0, 1, 4, 2, 3)


class EagerAccel(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.kind, self.cfg, self.acc = m.cfg.name, m.cfg, m.cfg.accel
        self.net = timm_resnet(m.encoder)
        self.heads = nn.ModuleList([head(h) for h in m.accel.heads] + [head(m.projector)])  # stage i: heads[i - 1]
        if self.kind == "mocov2":
            self.t_net, self.t_heads = frozen_copy(self.net, self.heads)
            keys = [q.keys for q in m.accel.queues] + [m.queue.keys]
            for i, k in enumerate(keys):
                self.register_buffer(f"queue{i}", k.detach().t().clone())  # [D, K]
                self.register_buffer(f"queue_ptr{i}", torch.zeros(1, dtype=torch.long))
        if self.kind == "swav":
            self.prototypes = nn.ModuleList([copy.deepcopy(p) for p in m.accel.prototypes] + [copy.deepcopy(m.prototypes)])

    def layers(self, net: nn.Module) -> list:
        return [lambda x: stem(net, x)] + [getattr(net, f"layer{i}") for i in range(1, N_STAGES + 1)]

    def embed(self, i: int, side: int, maps: torch.Tensor) -> torch.Tensor:
        if self.kind == "mocov2" and side == 1:
            with torch.no_grad():
                return self.t_heads[i - 1](self.t_net.global_pool(maps))
        z = self.heads[i - 1](self.net.global_pool(maps))
        return F.normalize(z, dim=1, p=2) if self.kind == "swav" else z

    def pair_loss(self, i: int, za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
        """``[M, B, D]`` twice -> ``[B, M, M]``."""
        if self.kind != "swav":
            return -torch.einsum("pbd,qbd->bpq", F.normalize(za.float(), dim=-1), F.normalize(zb.float(), dim=-1))
        c, proto = self.cfg, self.prototypes[i - 1]
        sa, sb = proto(za).float(), proto(zb).float()
        qa = torch.stack([losses.sinkhorn(s, c.epsilon, c.sinkhorn_iterations) for s in sa])
        qb = torch.stack([losses.sinkhorn(s, c.epsilon, c.sinkhorn_iterations) for s in sb])
        la, lb = F.log_softmax(sa / c.temperature, dim=-1), F.log_softmax(sb / c.temperature, dim=-1)
        return -(torch.einsum("pbk,qbk->bpq", qa, lb) + torch.einsum("qbk,pbk->bpq", qb, la)) / 2

    def stage_loss(self, i: int, za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        if self.kind == "simclr":
            if c.loss == "nt_xent":
                return losses.nt_xent(za, zb, c.temperature)
            return losses.dcl(za, zb, c.temperature, c.weight_sigma if c.loss == "dclw" else None)
        if self.kind == "swav":
            s = self.prototypes[i - 1](torch.cat([za, zb]))
            return losses.swav(s, za.shape[0], 2, c.temperature, c.epsilon, c.sinkhorn_iterations)
        queue, ptr = getattr(self, f"queue{i - 1}"), getattr(self, f"queue_ptr{i - 1}")
        k = F.normalize(zb.detach(), dim=1)
        loss = losses.moco_v2(za, k, queue, c.temperature)
        with torch.no_grad():  # MoCo's _dequeue_and_enqueue
            p, b = int(ptr), k.shape[0]
            queue[:, p:p + b] = k.t().to(queue.dtype)
            ptr[0] = (p + b) % queue.shape[1]
        return loss

    def forward(self, batch, ctx) -> torch.Tensor:
        acc = self.acc
        g = ctx.generator()
        stop = int(torch.randint(1, N_STAGES + 1, (1,), generator=g)) if acc.partial_backprop else N_STAGES
        if self.kind == "swav":
            with torch.no_grad():
                for p in self.prototypes:
                    p.weight.copy_(F.normalize(p.weight.data.clone(), dim=1, p=2))
        v = batch["global" if self.kind == "swav" else "views"]
        a, b = v[0], v[1]
        online = self.layers(self.net)
        if self.kind == "mocov2":
            with torch.no_grad():
                momentum_update(self.t_net, self.net, self.cfg.momentum)
                momentum_update(self.t_heads, self.heads, self.cfg.momentum)
            other = self.layers(self.t_net)
        maps = []
        for i in range(stop + 1):  # 0: the stem
            if self.kind == "mocov2":
                a = online[i](a)
                with torch.no_grad():
                    b = other[i](b)
            elif a.shape == b.shape:
                a, b = online[i](torch.cat([a, b])).chunk(2)
            else:
                a, b = online[i](a), online[i](b)
            if i == 0:
                continue
            maps.append((a, b))
            if acc.hard_pairs and i in acc.hard_pair_stages and i < stop:
                m = acc.regions
                ra, rb = regions(a, m, acc.region_scale, g), regions(b, m, acc.region_scale, g)
                with torch.no_grad():
                    za = self.embed(i, 0, ra.flatten(0, 1)).unflatten(0, (m, -1))
                    zb = self.embed(i, 1, rb.flatten(0, 1)).unflatten(0, (m, -1))
                    best = self.pair_loss(i, za, zb).flatten(1).argmax(1)
                rows = torch.arange(a.shape[0], device=a.device)
                a, b = ra[best // m, rows], rb[best % m, rows]
        stages = [stop] if acc.partial_backprop else list(range(1, stop + 1))
        return torch.stack([self.stage_loss(i, self.embed(i, 0, maps[i - 1][0]), self.embed(i, 1, maps[i - 1][1]))
                            for i in stages]).mean()
