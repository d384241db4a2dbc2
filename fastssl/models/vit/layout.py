"""Where every sequence sits in a packed (batch-free) token tensor, as attention needs it.

A packed tensor holds S sequences back to back along one token axis, ``[T, ...]`` with
``T = Σ lengths``; nothing is padded. Attention only needs, for queries and keys separately,
the per-sequence lengths and their prefix sums. Self-attention has the same layout for both;
the class-attention blocks of M-MoCo have one query (the CLS) per sequence and the whole
sequence as keys, hence separate ``q_lens`` / ``k_lens``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch


@dataclass(frozen=True)
class Run:
    """``count`` consecutive sequences, each with ``q_len`` queries and ``k_len`` keys, starting at
    token ``q_start`` (queries) / ``k_start`` (keys). A run is a dense ``[count, len, ...]`` block
    of the packed tensor: one batched attention call covers it without gathering or padding."""

    q_start: int
    k_start: int
    count: int
    q_len: int
    k_len: int


@dataclass(frozen=True, eq=False)
class AttnLayout:
    """Host-side lengths (no device sync is ever needed to read them) plus their device prefix sums.

    ``q_lens``/``k_lens``: S ints each. ``cu_q``/``cu_k``: ``[S+1]`` int32 on the tokens' device,
    ``cu[0] = 0``, ``cu[i+1] - cu[i] = len[i]`` (flash-attention's varlen convention). Every device
    tensor here is *computed on the device* from host ints (``torch.arange`` per run of equal
    lengths), never copied from host memory: no pinned buffer, no pageable copy (which syncs the
    stream), so building a layout is legal and sync-free inside a ``torch.compile`` region.
    """

    q_lens: tuple[int, ...]
    k_lens: tuple[int, ...]
    cu_q: torch.Tensor
    cu_k: torch.Tensor
    # sums and maxima of the lengths, computed once: read per block and per call on the host
    total_q: int
    total_k: int
    max_q: int
    max_k: int
    runs: tuple[Run, ...] = field(repr=False)
    # FlexAttention's block mask for this layout, set by ``AttentionDispatch.prepare`` before the
    # (possibly compiled) blocks run, so that no block builds it inside its graph.
    flex_mask: object = field(default=None, repr=False)
    # The backend ``auto`` picked for this layout (host decision made once in ``prepare``): a compiled
    # block then reads one string instead of tracing the rule over every sequence length.
    backend: str | None = field(default=None, repr=False)

    @staticmethod
    def build(q_lens: tuple[int, ...], k_lens: tuple[int, ...] | None, device: torch.device) -> "AttnLayout":
        """Layout for queries of lengths ``q_lens`` attending to keys of lengths ``k_lens``
        (``None``: self-attention, the same lengths)."""
        q_lens = tuple(int(n) for n in q_lens)
        k_lens = q_lens if k_lens is None else tuple(int(n) for n in k_lens)
        if len(q_lens) != len(k_lens) or not q_lens:
            raise ValueError(f"need as many query as key sequences (>0), got {len(q_lens)} and {len(k_lens)}")
        if min(q_lens) < 1 or min(k_lens) < 1:
            raise ValueError("every sequence needs at least one query and one key")
        cu_q = prefix_sums(q_lens, device)
        cu_k = cu_q if k_lens is q_lens else prefix_sums(k_lens, device)
        return AttnLayout(q_lens, k_lens, cu_q, cu_k, sum(q_lens), sum(k_lens), max(q_lens), max(k_lens),
                          _runs(q_lens, k_lens))

    @property
    def num_seqs(self) -> int:
        return len(self.q_lens)

    @property
    def device(self) -> torch.device:
        return self.cu_q.device

    @cached_property
    def block_mask(self) -> torch.Tensor:
        """``[Tq, Tk]`` bool, True where query i and key j belong to the same sequence.
        O(T²) memory: only for the CPU path and for tests."""
        sq = seq_ids(self.q_lens, self.device)
        sk = sq if self.k_lens is self.q_lens else seq_ids(self.k_lens, self.device)
        return sq.unsqueeze(1) == sk.unsqueeze(0)

    @cached_property
    def xformers_bias(self):
        """xformers ``BlockDiagonalMask`` for this layout (built once per layout; imports xformers)."""
        from xformers.ops.fmha.attn_bias import BlockDiagonalMask

        kv = None if self.k_lens is self.q_lens else list(self.k_lens)
        return BlockDiagonalMask.from_seqlens(list(self.q_lens), kv, device=self.device)


def length_groups(lens: tuple[int, ...] | list[int]) -> list[tuple[int, int]]:
    """Consecutive equal lengths as ``(length, count)`` pairs: packs of views have a handful."""
    groups: list[tuple[int, int]] = []
    for n in lens:
        if groups and groups[-1][0] == n:
            groups[-1] = (n, groups[-1][1] + 1)
        else:
            groups.append((n, 1))
    return groups


def prefix_sums(lens: list[int] | tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``[0, l0, l0+l1, ...]`` as int32 on ``device`` (varlen's cu_seqlens), computed there: one
    strided ``arange`` per group of equal lengths, so no host memory is copied (a pageable copy
    syncs the stream; a pinned one is not traceable: ``aten._pin_memory`` has no fake kernel)."""
    parts = [torch.zeros(1, dtype=torch.int32, device=device)]
    start = 0
    for n, count in length_groups(lens):
        parts.append(torch.arange(start + n, start + n * count + 1, n, dtype=torch.int32, device=device))
        start += n * count
    return torch.cat(parts)


def seq_ids(lens: list[int] | tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``[Σ lens]`` int64: the index of the sequence each token belongs to, computed on ``device``
    (``repeat_interleave`` by a host int per group: the output size is known, nothing syncs)."""
    parts, seq = [], 0
    for n, count in length_groups(lens):
        parts.append(torch.arange(seq, seq + count, device=device).repeat_interleave(n))
        seq += count
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _runs(q_lens: tuple[int, ...], k_lens: tuple[int, ...]) -> tuple[Run, ...]:
    """Maximal stretches of consecutive sequences with equal (q_len, k_len)."""
    runs: list[Run] = []
    qs = ks = 0
    for lq, lk in zip(q_lens, k_lens):
        last = runs[-1] if runs else None
        if last is not None and last.q_len == lq and last.k_len == lk:
            runs[-1] = Run(last.q_start, last.k_start, last.count + 1, lq, lk)
        else:
            runs.append(Run(qs, ks, 1, lq, lk))
        qs += lq
        ks += lk
    return tuple(runs)
