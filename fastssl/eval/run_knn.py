"""The trainer's evaluation of an encoder: weighted kNN and a linear probe on the same cached features."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fastssl.eval.features import extract
from fastssl.eval.knn import knn_accuracy
from fastssl.eval.linear_probe import ProbeScore, linear_probe_accuracy


@dataclass(frozen=True)
class KnnScore:
    k: int
    temperature: float
    accuracy: float  # top-1, in [0, 1]

    @property
    def label(self) -> str:
        return f"knn_top1@k{self.k}_T{self.temperature:g}"


Score = KnnScore | ProbeScore


class Evaluator:
    """Holds the two evaluation loaders (train split = memory bank / probe training set, test split =
    queries). One feature extraction per call serves every kNN point and the linear probe."""

    def __init__(self, eval_cfg, train_loader, test_loader, *, progress: bool = False):
        self.cfg = eval_cfg
        self.train_loader = train_loader
        self.test_loader = test_loader
        self.progress = progress

    def __call__(self, encoder: nn.Module, dtype: torch.dtype) -> list[Score]:
        bank, bank_y = extract(encoder, self.train_loader, dtype, desc="eval features (train)" if self.progress else None)
        queries, query_y = extract(encoder, self.test_loader, dtype, desc="eval features (test)" if self.progress else None)
        num_classes = int(max(bank_y.max().item(), query_y.max().item())) + 1
        points = [(self.cfg.knn_k, self.cfg.knn_temperature)] + [(p.k, p.temperature) for p in self.cfg.knn_extra]
        scores: list[Score] = [
            KnnScore(k, t, knn_accuracy(bank, bank_y, queries, query_y, k=k, temperature=t, num_classes=num_classes))
            for k, t in points
        ]
        if self.cfg.linear_probe:
            wd = self.cfg.probe_weight_decay
            scores.append(ProbeScore(wd, linear_probe_accuracy(bank, bank_y, queries, query_y, num_classes=num_classes, weight_decay=wd)))
        return scores


def score_from_dict(d: dict) -> Score:
    """Inverse of ``dataclasses.asdict`` for the two score kinds (knn_init.json)."""
    return KnnScore(**d) if "k" in d else ProbeScore(**d)
