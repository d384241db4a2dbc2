"""Typed description of a packed batch: which tokens belong to which sequence, view and image.

Token order in the packed tensor ``[T, D]``: views in the order given; inside a view its segments
(dense blocks of equal-length sequences, e.g. the two chunk sizes of a ``ChunkedView``); inside a
segment sequence after sequence; inside a sequence ``[CLS, patch tokens...]`` (no CLS when the
view says ``cls=False``). Chunked views are chunk-major: sequence ``j * B + b`` is chunk j of
image b, so per-sequence outputs reshape to ``[n, B, D]`` without a gather.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from fastssl.models.vit.layout import AttnLayout, seq_ids


@dataclass(frozen=True)
class Segment:
    """``count`` consecutive sequences from view ``view``, each with ``num_patches`` patch tokens
    (plus a CLS in front when ``has_cls``), starting at sequence ``seq_start`` / token ``tok_start``."""

    view: int
    seq_start: int
    tok_start: int
    count: int
    num_patches: int
    has_cls: bool

    @property
    def seqlen(self) -> int:
        return self.num_patches + int(self.has_cls)

    @property
    def tok_stop(self) -> int:
        return self.tok_start + self.count * self.seqlen


@dataclass(frozen=True)
class ViewSlot:
    """Where one view landed in the pack. ``lead_shape`` is the shape per-sequence outputs of the
    view take: ``(B,)``, or ``(n, B)`` for a chunked view."""

    kind: str
    batch: int
    n_chunks: int
    has_cls: bool
    grid: tuple[int, int]
    segments: tuple[Segment, ...]

    @property
    def lead_shape(self) -> tuple[int, ...]:
        return (self.n_chunks, self.batch) if self.kind == "chunked" else (self.batch,)

    @property
    def seq_start(self) -> int:
        return self.segments[0].seq_start

    @property
    def num_seqs(self) -> int:
        return sum(s.count for s in self.segments)

    @property
    def tok_start(self) -> int:
        return self.segments[0].tok_start

    @property
    def tok_stop(self) -> int:
        return self.segments[-1].tok_stop


@dataclass(frozen=True, eq=False)
class PackInfo:
    """The packed batch.

    seqlens      S host ints, tokens per sequence (CLS included)
    cu_seqlens   ``[S+1]`` int32 on the tokens' device (varlen convention)
    layout       self-attention ``AttnLayout`` (shares ``cu_seqlens``)
    views        one ``ViewSlot`` per input view, in input order
    owner        ``[S]`` int64, index of the image (within its view's batch) a sequence comes from
    """

    views: tuple[ViewSlot, ...]
    layout: AttnLayout

    @staticmethod
    def build(views: tuple[ViewSlot, ...], device: torch.device) -> "PackInfo":
        seqlens: list[int] = []
        for v in views:
            for s in v.segments:
                seqlens.extend([s.seqlen] * s.count)
        return PackInfo(views, AttnLayout.build(tuple(seqlens), None, device))

    @property
    def seqlens(self) -> tuple[int, ...]:
        return self.layout.q_lens

    @property
    def cu_seqlens(self) -> torch.Tensor:
        return self.layout.cu_q

    @property
    def num_seqs(self) -> int:
        return self.layout.num_seqs

    @property
    def num_tokens(self) -> int:
        return self.layout.total_q

    @property
    def max_seqlen(self) -> int:
        return self.layout.max_q

    @property
    def device(self) -> torch.device:
        return self.layout.device

    @cached_property
    def owner(self) -> torch.Tensor:
        parts = [torch.arange(v.batch, device=self.device).repeat(s.count // v.batch) for v in self.views for s in v.segments]
        return torch.cat(parts)

    @cached_property
    def token_seq(self) -> torch.Tensor:
        """``[T]`` int64: the sequence each token belongs to."""
        return seq_ids(self.seqlens, self.device)

    @property
    def all_have_cls(self) -> bool:
        return all(v.has_cls for v in self.views)

    @cached_property
    def cls_index(self) -> torch.Tensor:
        """``[S]`` int64: token index of each sequence's CLS (every view must have one)."""
        if not self.all_have_cls:
            raise ValueError("cls_index needs a CLS in every sequence")
        return self.cu_seqlens[:-1].long()

    @cached_property
    def cls_layout(self) -> AttnLayout:
        """One query (the CLS) per sequence attending to its whole sequence (class attention)."""
        if not self.all_have_cls:
            raise ValueError("class attention needs a CLS in every sequence")
        return AttnLayout.build((1,) * self.num_seqs, self.seqlens, self.device)
