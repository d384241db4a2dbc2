"""Contrastive losses: SimCLR's NT-Xent, DCL/DCLW and InfoNCE (MoCo v3 in-batch, MoCo v2 with a queue).

Every op takes raw projector outputs (L2-normalised here), returns a scalar mean and is
differentiable w.r.t. every input that requires grad. Each one reduces to
``contrastive_rows(rows, cols, pos_idx, excl_idx, ...)`` (see ``fastssl.ops.reference``): local
anchor rows against (optionally all-gathered) candidate columns, so the same core serves one GPU
and many, the eager reference and the Triton kernel.

Normalisation is a pass of its own before the similarity kernels: it is O(N·D), a rounding error next
to the O(N²·D) similarity work. It runs in fp32 and casts the unit vectors back to the input dtype
(``_unit``; with the kernels, one launch each way, ``unit_rows``): the backward of a normalisation
subtracts the radial component, a cancellation that bf16 would turn into percent-level gradient error.

``gather_distributed=True``: negatives come from every rank; each rank's value is the mean over its
local anchors, so the engine's gradient averaging reproduces the single-process global-batch
gradient (see ``fastssl.ops.distributed``). On one rank it is the single-process loss (``_gathers``).

The kernels (``fastssl.kernels.contrastive``) enter as custom ops with eager doors
(``fastssl.ops.contrastive_doors``); eagerly, each loss on the kernels is one autograd node where it
can be (``fastssl.ops.contrastive_nodes``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastssl.ops import reference
from fastssl.ops.contrastive_doors import (  # noqa: F401  (OPTIONS, fused_unit_rows: re-exported)
    OPTIONS, fused_unit_rows, triton_contrastive_rows, triton_queue_rows, unit_rows)
from fastssl.ops.contrastive_nodes import query_node, query_node_applies, two_view_node, two_view_node_applies
from fastssl.ops.dispatch import Backend, auto_size_ok, use_triton
from fastssl.ops.distributed import check_equal_rows, gather_rows, world_info



def _kernel(backend: Backend, device: torch.device, size: int | None) -> bool:
    """Whether an op call runs the Triton kernels (``fastssl.ops.dispatch``: on CUDA under "auto"
    only from the size rule's threshold up), for a similarity matrix of ``size`` = rows × cols."""
    return use_triton(backend, device) and auto_size_ok("contrastive", backend, size)


def _core(backend: Backend, device: torch.device, size: int | None = None, *, kernel: bool | None = None):
    """The implementation of ``contrastive_rows`` that ``backend`` picks for ``device`` and a
    similarity matrix of ``size`` elements; ``kernel``: that decision, already taken by the caller."""
    if kernel if kernel is not None else _kernel(backend, device, size):
        return triton_contrastive_rows
    return reference.contrastive_rows


def _queue_core(backend: Backend, device: torch.device, size: int | None = None, *, kernel: bool | None = None):
    """The implementation of ``queue_rows`` (MoCo v2's queue InfoNCE) that ``backend`` picks for
    ``device`` and ``size`` = rows × queue length."""
    if kernel if kernel is not None else _kernel(backend, device, size):
        return triton_queue_rows
    return reference.queue_rows


def _mean_loss(core, *args, **kwargs) -> Tensor:
    """The mean over rows of ``core``'s per-row loss (what every loss here returns). The kernels'
    cores take the mean inside their one autograd node (``mean=True``): no ``MeanBackward`` node
    and no division launch per call (``fastssl.ops.dispatch.mean_door``)."""
    if core is triton_contrastive_rows or core is triton_queue_rows:
        return core(*args, mean=True, **kwargs)
    return core(*args, **kwargs).mean()


def _unit(z: torch.Tensor, fused: bool = False) -> torch.Tensor:
    """L2-normalise the last dim in fp32 (forward and backward), return in z's dtype.

    ``fused`` (the call runs the Triton kernels): one Triton launch each way (``unit_rows``) where
    it applies, the same maths.

    Without a gradient (momentum keys, MoCo v2's queue of 65,536 keys) the norm is still taken in
    fp32 and the division computed in fp32, but neither materialises an fp32 copy of z: two passes
    over z's own bytes instead of five over twice as many (the queue's normalisation cost more HBM
    traffic than the kernel that then reads it). Same values as the fp32 path to the last rounding.
    """
    if fused:
        y = unit_rows(z)
        if y is not None:
            return y
    if (torch.is_grad_enabled() and z.requires_grad) or z.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return F.normalize(z.float(), dim=-1).to(z.dtype)
    norm = torch.linalg.vector_norm(z, dim=-1, keepdim=True, dtype=torch.float32).clamp_min_(1e-12)
    return torch.div(z, norm, out=torch.empty_like(z, memory_format=torch.contiguous_format))


def _check_pair(z1: torch.Tensor, z2: torch.Tensor, temperature: float, gather_distributed: bool) -> None:
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must both be [N, D] with the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if z1.shape[0] < (1 if gather_distributed else 2):  # the global count is checked after the gather
        raise ValueError(f"a contrastive loss needs N >= 2 samples (negatives), got N={z1.shape[0]}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _gathers(gather_distributed: bool) -> bool:
    """Whether a two-view loss gathers its columns: ``gather_distributed`` on more than one rank. On
    one rank (a one-GPU DeepSpeed run initialises a process group of one; every method asks to
    gather by default) it is the single-process loss: the rows are the columns, so no concatenated
    copy of them, the one-pass symmetric backward and the one-node path instead of a backward per
    operand and autograd's add of the two gradients."""
    return gather_distributed and world_info()[1] > 1


def _pair_size(z1: torch.Tensor, gather_distributed: bool) -> int:
    """rows × cols of the two-view losses' similarity matrix: 2n local rows against 2n·world columns."""
    n = z1.shape[0]
    return 2 * n * 2 * n * (world_info()[1] if gather_distributed else 1)


def _two_view_rows(z1, z2, gather_distributed, fused=False):
    """Local rows [2n, D], gathered cols [2N, D], the index arrays of the two-view losses and, gathered,
    the global unit views as a [world, 2, n, D] view without gradient with our first sample's global
    index (what DCLW's weights read) — None in a single process, where they are rows as [1, 2, n, D].

    One process: row a < n is view 1 of sample i = a, positive col n + i, self col i; row a >= n is
    view 2 of sample i = a - n, positive col i, self col n + i (rows are the columns). Gathered: the
    columns are rank-major (rank r's rows [z1_r; z2_r] at 2n·r), so row a's own column is 2n·rank + a
    and its positive 2n·rank + (a + n) mod 2n.
    """
    n = z1.shape[0]
    # One normalisation of the concatenated views (row-wise: the same maths as two), so the rows
    # tensor comes out of it directly: 5 small launches instead of 9 in torch; with the kernels, one
    # launch that reads both views (no concatenation), host time a small loss pays.
    rows = None
    if fused:
        rows = unit_rows(z1, z2)
    if rows is None:
        rows = _unit(torch.cat([z1, z2], dim=0), fused)
    if not gather_distributed:
        # Single process: rows and cols hold the same vectors; pass one tensor twice (the kernels' one
        # backward pass for both, or autograd adds the two gradients) instead of concatenating a copy.
        pos_idx, self_idx = _two_view_index(n, n, 0, rows.device)
        return rows, rows, pos_idx, self_idx, None
    # One gather of both views (one size check and one all-gather per call instead of two, and no
    # concatenated copy): the columns are rank-major, rank r's block being its rows [z1_r; z2_r], so
    # our row a sits at column offset + a and its positive at offset + (a + n) mod 2n.
    cols, offset = gather_rows(rows)
    world = cols.shape[0] // (2 * n)
    if world * n < 2:
        raise ValueError(f"a contrastive loss needs N >= 2 samples (negatives) over all ranks, got N={world * n}")
    pos_idx, self_idx = _rank_major_index(n, offset, rows.device)
    return rows, cols, pos_idx, self_idx, (cols.detach().view(world, 2, n, -1), offset // 2)


def _two_view_node(z1, z2, temperature, exclude_pos, weight_sigma, gathered: bool) -> Tensor:
    """A two-view loss through its one-node door (``fastssl.ops.contrastive_nodes``): in one process,
    or gathered after the ranks' sizes are checked, with the index arrays each layout needs."""
    n = z1.shape[0]
    if gathered:
        check_equal_rows(z1)
        pos_idx, self_idx = _rank_major_index(n, world_info()[0] * 2 * n, z1.device)
    else:
        pos_idx, self_idx = _two_view_index(n, n, 0, z1.device)
    return two_view_node(z1, z2, pos_idx, self_idx, temperature, exclude_pos, weight_sigma, gathered)


def _cached_index(key: tuple, build):
    """The index arrays ``build()`` makes, reused per ``key`` by eager calls (``fastssl.kernels.launch.constant``):
    a few small launches per step that a training loop would repeat with the same values. The cached
    tensors are only ever read (indexing, kernel arguments, saved for backward). Under torch.compile
    they are built in the graph, as constants of the trace."""
    if torch.compiler.is_compiling():
        return build()
    from fastssl.kernels.launch import constant  # no Triton import: launch.py imports it lazily

    return constant(key, build)


def _two_view_index(n: int, total: int, offset: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(pos_idx, self_idx) int32 [2n] of the two-view losses (what the kernels read: ``prepare``'s
    cast is a no-op), cached (``_cached_index``)."""
    def build():
        g = torch.arange(offset, offset + n, device=device, dtype=torch.int32)
        pos_idx = torch.cat([g + total, g])
        return pos_idx, pos_idx.roll(n)  # self_idx = [g, total + g]

    return _cached_index(("two_view", n, total, offset, device), build)


def _rank_major_index(n: int, offset: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(pos_idx, self_idx) int32 [2n] of the gathered two-view losses, whose columns are every rank's
    rows [z1_r; z2_r] in rank order and ours start at column ``offset``: row a's own column is
    offset + a, its positive offset + (a + n) mod 2n. Cached (``_cached_index``)."""
    def build():
        self_idx = torch.arange(offset, offset + 2 * n, device=device, dtype=torch.int32)
        return self_idx.roll(n), self_idx

    return _cached_index(("rank_major", n, offset, device), build)


def _chunk_index(n: int, chunks: int, offset: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(pos_idx, no_excl) int32 [chunks·n] of InfoNCE: row a = (chunk j, sample i) has positive key
    offset + i; no excluded column (-1). Cached (``_cached_index``)."""
    def build():
        pos_idx = (offset + torch.arange(n, device=device, dtype=torch.int32)).repeat(chunks)
        return pos_idx, torch.full_like(pos_idx, -1)

    return _cached_index(("chunks", n, chunks, offset, device), build)


def nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.1,
    *,
    gather_distributed: bool = False,
    backend: Backend = "auto",
) -> torch.Tensor:
    """SimCLR's NT-Xent over 2N anchors (DCL paper eq. 1, averaged instead of summed).

    z1, z2: [N, D] projector outputs of the two views. Anchor z1[i] has positive z2[i] and the other
    2N-2 embeddings as negatives (itself excluded); likewise for z2[i]. Returns a scalar.
    """
    gather_distributed = _gathers(gather_distributed)
    _check_pair(z1, z2, temperature, gather_distributed)
    kernel = _kernel(backend, z1.device, _pair_size(z1, gather_distributed))
    if kernel and two_view_node_applies(z1, z2):  # one autograd node
        return _two_view_node(z1, z2, temperature, False, None, gather_distributed)
    rows, cols, pos_idx, self_idx, _ = _two_view_rows(z1, z2, gather_distributed, kernel)
    return _mean_loss(_core(backend, z1.device, kernel=kernel), rows, cols, pos_idx, self_idx, temperature)


def dcl(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.1,
    *,
    weight_sigma: float | None = None,
    gather_distributed: bool = False,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Decoupled contrastive loss (DCL eq. 5), mean over 2N anchors; DCLW (eq. 6) with ``weight_sigma``.

    The positive is removed from the denominator: loss = -<z_i^1, z_i^2>/τ + log Σ_{l, j≠i} exp(<z_i^k, z_j^l>/τ).
    DCLW scales the positive term by w_i = 2 - N·softmax_i(<z_i^1, z_i^2>/σ) (so E[w] = 1), computed
    over the (global) batch and carrying no gradient; the paper uses σ = 0.5.
    """
    gather_distributed = _gathers(gather_distributed)
    _check_pair(z1, z2, temperature, gather_distributed)
    kernel = _kernel(backend, z1.device, _pair_size(z1, gather_distributed))
    if weight_sigma is not None and not weight_sigma > 0:
        raise ValueError(f"weight_sigma must be > 0, got {weight_sigma}")
    if kernel and two_view_node_applies(z1, z2):  # one autograd node
        return _two_view_node(z1, z2, temperature, True, weight_sigma, gather_distributed)
    rows, cols, pos_idx, self_idx, gathered = _two_view_rows(z1, z2, gather_distributed, kernel)
    pos_weight = None
    if weight_sigma is not None:
        n = z1.shape[0]
        views, offset = gathered if gathered is not None else (rows.detach().view(1, 2, n, -1), 0)
        local = reference.dclw_weights(views, weight_sigma)[offset : offset + n]
        pos_weight = torch.cat([local, local])
    core = _core(backend, z1.device, kernel=kernel)
    return _mean_loss(core, rows, cols, pos_idx, self_idx, temperature, pos_weight, exclude_pos=True)


def info_nce(
    q: torch.Tensor,
    k: torch.Tensor,
    temperature: float = 0.2,
    *,
    queue: torch.Tensor | None = None,
    unit_queue: bool = False,
    gather_distributed: bool = False,
    backend: Backend = "auto",
) -> torch.Tensor:
    """InfoNCE: mean cross-entropy of every query row against the keys (MoCo v3) or a queue (MoCo v2).

    q: [N, D] or [n, N, D] (n query chunks per image, as M-MoCo); k: [N, D] (cast to q's dtype where
    they differ).
    Without ``queue`` (MoCo v3): row i of each chunk has positive k[i] and negatives k[j != i]
    (from every rank with ``gather_distributed``). MoCo v3's official code multiplies this by 2τ;
    that scale is the method's choice, not the op's.
    With ``queue`` [K, D] (MoCo v2; raw keys, normalised here like k, cast to q's dtype): row i's
    logits are [q·k[i], q·queue[0..K-1]] / τ with label 0, i.e. positive k[i] and the K queue keys
    as negatives; the batch's other keys are NOT negatives, as in MoCo v2's official code. The
    queue gets no gradient. ``unit_queue=True``: the queue's rows are unit vectors already (MoCo v2's
    ``KeyQueue``), so they are only cast, not renormalised. ``gather_distributed`` then changes
    nothing: the positives are local and the queue holds the same keys on every rank
    (``fastssl.models.queue.KeyQueue`` enqueues the keys of all ranks), so each rank's mean over its
    local rows, averaged by the engine, is the global-batch loss; N = 1 is allowed (the negatives
    come from the queue).
    When k needs no gradient (a momentum encoder's keys) the kernel does no dK work; with a queue
    the kernel never builds the [N, 1+K] logits (tiles over the queue, per-row online logsumexp).
    """
    if q.ndim == 2:
        q = q.unsqueeze(0)
    if q.ndim != 3 or k.ndim != 2 or q.shape[1:] != k.shape:
        raise ValueError(f"q must be [N, D] or [n, N, D] and k [N, D], got {tuple(q.shape)} and {tuple(k.shape)}")
    chunks, n, d = q.shape
    if queue is not None and (queue.ndim != 2 or queue.shape[1] != d or queue.shape[0] < 1):
        raise ValueError(f"queue must be [K, D] with K >= 1 and D = {d}, got {tuple(queue.shape)}")
    if n < (1 if gather_distributed or queue is not None else 2):
        raise ValueError(f"a contrastive loss needs N >= 2 samples (negatives), got N={n}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    width = queue.shape[0] if queue is not None else n * (world_info()[1] if gather_distributed else 1)
    kernel = _kernel(backend, q.device, chunks * n * width)
    q = q.reshape(chunks * n, d)
    one = kernel and query_node_applies(q, k)  # then normalisation, loss and mean are one autograd node
    rows = None if one else _unit(q, kernel)
    # One dtype for both operands (the kernels take one; so does the reference's matmul outside
    # autocast). Under CUDA autocast M-MoCo's keys are fp32 (its target projector ends in a LayerNorm,
    # which autocast runs in fp32) and its queries bf16 (a Linear): the unit keys are cast to the
    # queries' dtype, the one autocast's own matmul would use (normalised first, in their own dtype).
    cols = _unit(k, kernel).to(q.dtype)
    if queue is not None:
        # No gather: the negatives are the queue (identical on every rank), the positives local.
        # A queue of unit keys (MoCo v2 normalises keys before enqueueing them and starts the queue
        # normalised, as its official code does) is not renormalised on every call: that pass read and
        # wrote all 65,536 keys (a fused launch of 22 µs on the H200, five torch ops eagerly) to change
        # them by rounding only.
        queue = queue.detach()
        negatives = (queue if unit_queue else _unit(queue, kernel)).to(q.dtype)
        pos_idx, _ = _chunk_index(n, chunks, 0, q.device)
        if one:
            return query_node(q, cols, pos_idx, None, negatives, temperature)
        return _mean_loss(_queue_core(backend, q.device, kernel=kernel), rows, cols, pos_idx, negatives, temperature)
    offset = 0
    if gather_distributed:
        cols, offset = gather_rows(cols)
        if cols.shape[0] < 2:
            raise ValueError(f"a contrastive loss needs N >= 2 samples (negatives) over all ranks, got {cols.shape[0]}")
    pos_idx, no_excl = _chunk_index(n, chunks, offset, q.device)
    if one:
        return query_node(q, cols, pos_idx, no_excl, None, temperature)
    return _mean_loss(_core(backend, q.device, kernel=kernel), rows, cols, pos_idx, no_excl, temperature)


def spherical_mean(keys: torch.Tensor) -> torch.Tensor:
    """M-MoCo's target-masking key (masked_moco_byol §3.3, eq. 4): the spherical mean of m chunk keys.

    keys: [m, N, D], key features of the m target chunks of each of N images. Returns [N, D] unit
    vectors k̂ = Σ_j k_j / ||Σ_j k_j||, where the k_j are unit vectors: the paper normalises q and k
    before they enter the loss (§3.1), so each chunk key is L2-normalised first and no chunk can
    outweigh another by its norm. Summing or averaging is the same after the final normalisation.
    Computed in fp32 or wider (fp64 keys stay fp64), returned in the keys' dtype; differentiable
    (MoCo's keys carry no grad anyway).
    """
    if keys.ndim != 3:
        raise ValueError(f"keys must be [m, N, D] (m chunk keys per image), got {tuple(keys.shape)}")
    unit = F.normalize(keys.to(torch.promote_types(keys.dtype, torch.float32)), dim=-1)
    return F.normalize(unit.sum(dim=0), dim=-1).to(keys.dtype)
