"""kNN evaluation of an encoder on the configured data set (the trainer's periodic and final eval)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fastssl.eval.features import extract
from fastssl.eval.knn import knn_accuracy


@dataclass(frozen=True)
class KnnScore:
    k: int
    temperature: float
    accuracy: float  # top-1, in [0, 1]

    @property
    def label(self) -> str:
        return f"knn_top1@k{self.k}_T{self.temperature:g}"


class KnnEvaluator:
    """Holds the two evaluation loaders (train split = memory bank, test split = queries)."""

    def __init__(self, eval_cfg, train_loader, test_loader, *, progress: bool = False):
        self.cfg = eval_cfg
        self.train_loader = train_loader
        self.test_loader = test_loader
        self.progress = progress

    def __call__(self, encoder: nn.Module, dtype: torch.dtype) -> list[KnnScore]:
        bank, bank_y = extract(encoder, self.train_loader, dtype, desc="kNN bank (train)" if self.progress else None)
        queries, query_y = extract(encoder, self.test_loader, dtype, desc="kNN queries (test)" if self.progress else None)
        num_classes = int(max(bank_y.max().item(), query_y.max().item())) + 1
        points = [(self.cfg.knn_k, self.cfg.knn_temperature)] + [(p.k, p.temperature) for p in self.cfg.knn_extra]
        return [
            KnnScore(k, t, knn_accuracy(bank, bank_y, queries, query_y, k=k, temperature=t, num_classes=num_classes))
            for k, t in points
        ]
