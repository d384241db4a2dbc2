"""Weighted k-nearest-neighbour classification on L2-normalised features (NPID / DCL's protocol).

Each query votes with its k most cosine-similar training features, each vote weighted by
exp(similarity / T); the class with the largest summed weight wins. DCL reports k = 200.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, queries: torch.Tensor, *,
                k: int, temperature: float, num_classes: int, chunk: int = 1024) -> torch.Tensor:
    """train_feats [Nt, E], train_labels [Nt] int, queries [Nq, E] → predicted labels [Nq].

    Queries are processed ``chunk`` at a time so the similarity matrix never exceeds chunk × Nt.
    """
    if train_feats.shape[0] == 0:
        raise ValueError("kNN needs a non-empty memory bank")
    k = min(k, train_feats.shape[0])
    bank = F.normalize(train_feats.float(), dim=1)
    out = []
    for q in F.normalize(queries.float(), dim=1).split(chunk):
        sim, idx = (q @ bank.t()).topk(k, dim=1)  # [c, k]
        votes = torch.zeros(q.shape[0], num_classes, device=q.device)
        votes.scatter_add_(1, train_labels[idx], (sim / temperature).exp())
        out.append(votes.argmax(dim=1))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=queries.device)


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, *, k: int, temperature: float, num_classes: int) -> float:
    """Top-1 accuracy in [0, 1] of ``knn_predict`` on labelled queries."""
    pred = knn_predict(train_feats, train_labels, test_feats, k=k, temperature=temperature, num_classes=num_classes)
    return (pred == test_labels).float().mean().item()
