"""Per-view results of one packed encoder call, and the unpacking that produces them.

Shapes use ``lead = (B,)`` for image and masked views and ``lead = (n, B)`` for chunked views
(chunk-major, the ``[n, N, D]`` query layout of ``fastssl.ops.info_nce``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fastssl.models.vit.layout import prefix_sums
from fastssl.models.vit.packing import PackInfo, ViewSlot


@dataclass(frozen=True, eq=False)
class Features:
    """One view at one depth.

    cls         ``[*lead, D]`` CLS token of every sequence, or None for a view without CLS
    mean        ``[*lead, D]`` mean of the patch tokens of every sequence (CLS excluded)
    tokens      ``[P, D]`` patch tokens of the view, packed (CLS excluded), sequence after sequence
    cu_seqlens  ``[S+1]`` int32 offsets of each sequence's patch tokens in ``tokens``
    seqlens     S host ints, patch tokens per sequence
    lead        ``(B,)`` or ``(n, B)``
    """

    cls: torch.Tensor | None
    mean: torch.Tensor
    tokens: torch.Tensor
    cu_seqlens: torch.Tensor
    seqlens: tuple[int, ...]
    lead: tuple[int, ...]

    def dense(self) -> torch.Tensor:
        """``tokens`` as ``[*lead, L, D]``; only when every sequence has the same length L (image and
        masked views always; chunked views when the chunks are equal)."""
        if len(set(self.seqlens)) != 1:
            raise ValueError(f"sequences of unequal lengths {sorted(set(self.seqlens))} have no dense form; use tokens + cu_seqlens")
        return self.tokens.view(*self.lead, self.seqlens[0], self.tokens.shape[-1])

    def split(self) -> list[torch.Tensor]:
        """``tokens`` as a list of ``[L_i, D]``, one per sequence (in sequence order)."""
        return list(torch.split(self.tokens, list(self.seqlens)))


@dataclass(frozen=True, eq=False)
class ViewOutput:
    """Everything the encoder returns for one input view.

    final       after the last block and the final norm (None if the call stopped early)
    taps        block index -> features after that block (before the final norm unless asked)
    patch_ids   ``[P]`` int64, grid index (row-major in the view's grid) of each packed patch token
    owner       ``[S]`` int64, image index in the view's batch of each sequence
    """

    final: Features | None
    taps: dict[int, Features]
    patch_ids: torch.Tensor
    owner: torch.Tensor
    slot: ViewSlot = field(repr=False)

    @property
    def cls(self) -> torch.Tensor | None:
        return self._final().cls

    @property
    def mean(self) -> torch.Tensor:
        return self._final().mean

    @property
    def tokens(self) -> torch.Tensor:
        return self._final().tokens

    def _final(self) -> Features:
        if self.final is None:
            raise ValueError("this call stopped before the last block (max_block); read .taps instead")
        return self.final


@dataclass(frozen=True, eq=False)
class Encoded:
    """Result of ``PackedViT.encode``: one ``ViewOutput`` per input view (same order), plus the
    packed final hidden states ``[T, D]`` (CLS included, after the final norm; None if stopped
    early) and the ``PackInfo`` for modules that work on the pack (class-attention blocks)."""

    views: tuple[ViewOutput, ...]
    hidden: torch.Tensor | None
    pack: PackInfo

    def __getitem__(self, i: int) -> ViewOutput:
        return self.views[i]

    def __len__(self) -> int:
        return len(self.views)


def unpack_view(x: torch.Tensor, slot: ViewSlot) -> Features:
    """Slice one view out of packed hidden states ``x [T, D]`` (no gather: segments are dense)."""
    d = x.shape[-1]
    cls, mean, toks, lens = [], [], [], []
    for s in slot.segments:
        blk = x[s.tok_start:s.tok_stop].view(s.count, s.seqlen, d)
        patches = blk[:, 1:] if s.has_cls else blk
        if s.has_cls:
            cls.append(blk[:, 0])
        mean.append(patches.mean(dim=1))
        toks.append(patches.reshape(-1, d))
        lens.extend([s.num_patches] * s.count)
    cat = lambda ts: ts[0] if len(ts) == 1 else torch.cat(ts)  # noqa: E731
    lead = slot.lead_shape
    return Features(
        cls=cat(cls).view(*lead, d) if cls else None,
        mean=cat(mean).view(*lead, d),
        tokens=cat(toks),
        cu_seqlens=prefix_sums(lens, x.device),
        seqlens=tuple(lens),
        lead=lead,
    )


def split_per_view(per_seq: torch.Tensor, pack: PackInfo) -> list[torch.Tensor]:
    """A per-sequence tensor ``[S, ...]`` (e.g. class-attention CLS outputs) -> one ``[*lead, ...]``
    tensor per view."""
    out = []
    for v in pack.views:
        out.append(per_seq[v.seq_start:v.seq_start + v.num_seqs].reshape(*v.lead_shape, *per_seq.shape[1:]))
    return out
