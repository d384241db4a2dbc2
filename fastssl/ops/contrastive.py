"""Contrastive losses: SimCLR's NT-Xent, DCL/DCLW and InfoNCE (MoCo v3 in-batch, MoCo v2 with a queue).

Every op takes raw projector outputs (L2-normalised here), returns a scalar mean and is
differentiable w.r.t. every input that requires grad. Each one reduces to
``contrastive_rows(rows, cols, pos_idx, excl_idx, ...)`` (see ``fastssl.ops.reference``): local
anchor rows against (optionally all-gathered) candidate columns, so the same core serves one GPU
and many, the eager reference and the Triton kernel.

Normalisation stays a separate eager pass: it is O(N·D), a rounding error next to the O(N²·D)
similarity work, and autograd gets its backward right for free. It runs in fp32 and casts the unit
vectors back to the input dtype (``_unit``): the backward of a normalisation subtracts the radial
component, a cancellation that bf16 would turn into percent-level gradient error.

``gather_distributed=True``: negatives come from every rank; each rank's value is the mean over its
local anchors, so the engine's gradient averaging reproduces the single-process global-batch
gradient (see ``fastssl.ops.distributed``).

The kernels (``fastssl.kernels.contrastive``) enter as the custom ops at the end of this file,
each with its fake function and its autograd registered once: ``fastssl::contrastive_rows`` (and
``_self`` for rows is cols), ``fastssl::queue_rows`` (MoCo v2) and ``fastssl::unit_rows`` (the
fused normalisation), each with a ``_bwd`` op. Eager calls take the ops' eager doors
(``fastssl.ops.dispatch.eager_door``, the reason and the measured cost there).
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fastssl.ops import reference
from fastssl.ops.dispatch import (Backend, auto_size_ok, backward_impl, eager_door, empty_flag, grad_scale, mean_door,
                                  use_triton)
from fastssl.ops.distributed import gather_rows, world_info

OPTIONS = {
    # Outside torch.compile the kernels enter through the custom ops' eager doors (False: through the
    # custom ops, as main did before issue 21; bench/contrastive.py's triton[old] variant).
    "direct_eager": True,
    # The ops' L2 normalisation of kernel-bound operands as one Triton launch forward and one
    # backward (``unit_rows``) instead of ~5 + ~7 small torch launches: the first H200 run showed the
    # call host-bound (1.5 ms to issue vs 0.43 ms of kernels at 2N = 8192, tens of µs per launch).
    # FASTSSL_CONTRASTIVE_FUSED_UNIT=0 (or bench's triton[unfused]) goes back to torch.
    "fused_unit": os.environ.get("FASTSSL_CONTRASTIVE_FUSED_UNIT", "1") != "0",
    # NT-Xent / DCL in one process, eagerly: normalisation, loss and mean as one autograd node
    # (``_TwoViewDoor``) instead of three; False (bench's triton[nodes]) keeps the three.
    "one_node": True,
}


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
    """Local rows [2n, D], gathered cols [2N, D], the index arrays of the two-view losses and the
    gathered unit views (g1, g2, offset) — None in a single process, where they are rows[:n] and rows[n:]
    (two slicing ops per call that only DCLW's weights read).

    Row a < n is view 1 of local sample i = a (global g = offset + i): positive col N + g, self col g.
    Row a >= n is view 2 of local sample i = a - n: positive col g, self col N + g.
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
    g1, offset = gather_rows(rows[:n])
    g2, _ = gather_rows(rows[n:])
    total = g1.shape[0]
    if total < 2:
        raise ValueError(f"a contrastive loss needs N >= 2 samples (negatives) over all ranks, got N={total}")
    pos_idx, self_idx = _two_view_index(n, total, offset, rows.device)
    return rows, torch.cat([g1, g2], dim=0), pos_idx, self_idx, (g1, g2, offset)


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
    if kernel and not gather_distributed and (loss := _one_node(z1, z2, temperature, False)) is not None:
        return loss
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
    if (kernel and not gather_distributed and weight_sigma is None
            and (loss := _one_node(z1, z2, temperature, True)) is not None):
        return loss
    rows, cols, pos_idx, self_idx, gathered = _two_view_rows(z1, z2, gather_distributed, kernel)
    pos_weight = None
    if weight_sigma is not None:
        if not weight_sigma > 0:
            raise ValueError(f"weight_sigma must be > 0, got {weight_sigma}")
        n = z1.shape[0]
        g1, g2, offset = gathered if gathered is not None else (rows[:n], rows[n:], 0)
        with torch.no_grad():
            cos = (g1.float() * g2.float()).sum(dim=1)  # global positives, [N]
            w = 2.0 - cos.shape[0] * torch.softmax(cos / weight_sigma, dim=0)
            local = w[offset : offset + z1.shape[0]]
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

    q: [N, D] or [n, N, D] (n query chunks per image, as M-MoCo); k: [N, D].
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
    one = kernel and _query_node_applies(q, k)  # then normalisation, loss and mean are one autograd node
    rows = None if one else _unit(q, kernel)
    cols = _unit(k, kernel)
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
            return _query_node(q, cols, pos_idx, None, negatives, temperature)
        return _mean_loss(_queue_core(backend, q.device, kernel=kernel), rows, cols, pos_idx, negatives, temperature)
    offset = 0
    if gather_distributed:
        cols, offset = gather_rows(cols)
        if cols.shape[0] < 2:
            raise ValueError(f"a contrastive loss needs N >= 2 samples (negatives) over all ranks, got {cols.shape[0]}")
    pos_idx, no_excl = _chunk_index(n, chunks, offset, q.device)
    if one:
        return _query_node(q, cols, pos_idx, no_excl, None, temperature)
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


# =============================================================================================
# The kernels as custom ops: bodies (they call ``fastssl.kernels.contrastive``'s launchers, imported
# lazily so that CPU-only use never imports Triton), fake functions, autograd, eager doors, wrappers.
# =============================================================================================


def _door_open() -> bool:
    """Eager calls enter through the doors, compiled ones through the custom ops (``OPTIONS``)."""
    return OPTIONS["direct_eager"] and not torch.compiler.is_compiling()


def _loss_lse_fake(rows, *_):
    m = rows.shape[0]
    return rows.new_empty(m, dtype=torch.float32), rows.new_empty(m, dtype=torch.float32)


# --- contrastive rows: loss[a] = -w·s[a, pos] + LSE over allowed columns -----------------------
def _rows_body(rows: Tensor, cols: Tensor, pos_idx: Tensor, excl_idx: Tensor, pos_weight: Optional[Tensor],
               temperature: float, exclude_pos: bool) -> tuple[Tensor, Tensor]:
    """-> (loss [M] fp32, LSE₂ [M] fp32); indices int32, pos_weight fp32 (``kernels.contrastive.prepare``)."""
    from fastssl.kernels.contrastive import forward

    return forward(rows, cols, pos_idx, excl_idx, pos_weight, temperature, exclude_pos)


def _rows_self_body(rows: Tensor, pos_idx: Tensor, excl_idx: Tensor, pos_weight: Optional[Tensor],
                    temperature: float, exclude_pos: bool) -> tuple[Tensor, Tensor]:
    """``_rows_body`` with cols = rows (single-process NT-Xent/DCL). A separate op because the
    backward's one pass for both operands needs to know the two are one tensor, and an op's inputs
    do not say so (the wrapper decides with ``rows is cols``, which Dynamo resolves while tracing)."""
    return _rows_body(rows, rows, pos_idx, excl_idx, pos_weight, temperature, exclude_pos)


def _rows_bwd_body(rows: Tensor, cols: Tensor, pos_idx: Tensor, excl_idx: Tensor, pos_weight: Optional[Tensor],
                   lse2: Tensor, dloss: Tensor, temperature: float, exclude_pos: bool, need_rows: bool,
                   need_cols: bool, same: bool, grad_scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """-> (dRows [M, D], dCols [C, D]) of grad_scale·Σ dloss·loss, empty where not needed; ``same``: the
    whole gradient in the dRows slot. dloss may be a mean's expanded (stride-0) gradient: the kernels
    read it with its stride."""
    from fastssl.kernels.contrastive import backward

    drows, dcols = backward(rows, cols, pos_idx, excl_idx, pos_weight, lse2, dloss, temperature, exclude_pos,
                            need_rows, need_cols, same, grad_scale)
    return (drows if drows is not None else empty_flag(rows)), (dcols if dcols is not None else empty_flag(cols))


_rows_op = torch.library.custom_op("fastssl::contrastive_rows", _rows_body, mutates_args=())
_rows_self_op = torch.library.custom_op("fastssl::contrastive_rows_self", _rows_self_body, mutates_args=())
_rows_bwd_op = torch.library.custom_op("fastssl::contrastive_rows_bwd", _rows_bwd_body, mutates_args=())
_rows_op.register_fake(_loss_lse_fake)
_rows_self_op.register_fake(_loss_lse_fake)


@_rows_bwd_op.register_fake
def _(rows, cols, pos_idx, excl_idx, pos_weight, lse2, dloss, temperature, exclude_pos, need_rows, need_cols, same,
      grad_scale=1.0):
    drows = rows.new_empty(rows.shape) if (need_rows or same) else empty_flag(rows)
    dcols = cols.new_empty(cols.shape) if (need_cols and not same) else empty_flag(cols)
    return drows, dcols


def _rows_setup(ctx, inputs, output):
    rows, cols, pos_idx, excl_idx, pos_weight, temperature, exclude_pos = inputs
    ctx.save_for_backward(rows, cols, pos_idx, excl_idx, pos_weight, output[1])
    ctx.temperature, ctx.exclude_pos = temperature, exclude_pos


def _rows_backward(ctx, dloss, _dlse2):
    rows, cols, pos_idx, excl_idx, pos_weight, lse2 = ctx.saved_tensors
    need_rows, need_cols = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (need_rows or need_cols):
        return None, None, None, None, None, None, None
    bwd = backward_impl(ctx, _rows_bwd_op, _rows_bwd_body)
    drows, dcols = bwd(rows, cols, pos_idx, excl_idx, pos_weight, lse2, dloss, ctx.temperature, ctx.exclude_pos,
                       need_rows, need_cols, False, grad_scale(ctx))  # no dK work for momentum keys (need_cols False)
    return (drows if need_rows else None), (dcols if need_cols else None), None, None, None, None, None


def _rows_self_setup(ctx, inputs, output):
    rows, pos_idx, excl_idx, pos_weight, temperature, exclude_pos = inputs
    ctx.save_for_backward(rows, pos_idx, excl_idx, pos_weight, output[1])
    ctx.temperature, ctx.exclude_pos = temperature, exclude_pos


def _rows_self_backward(ctx, dloss, _dlse2):
    """rows is cols: the gradient as rows and as cols, summed, returns through the one input (the
    kernels' symmetric pass, or dCols added onto dRows: no autograd add of two [M, D] tensors)."""
    rows, pos_idx, excl_idx, pos_weight, lse2 = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None, None, None, None, None
    bwd = backward_impl(ctx, _rows_bwd_op, _rows_bwd_body)
    drows, _ = bwd(rows, rows, pos_idx, excl_idx, pos_weight, lse2, dloss, ctx.temperature, ctx.exclude_pos,
                   True, True, True, grad_scale(ctx))
    return drows, None, None, None, None, None


_rows_op.register_autograd(_rows_backward, setup_context=_rows_setup)
_rows_self_op.register_autograd(_rows_self_backward, setup_context=_rows_self_setup)
_RowsDoor = eager_door(_rows_body, _rows_setup, _rows_backward)
_RowsSelfDoor = eager_door(_rows_self_body, _rows_self_setup, _rows_self_backward)
_RowsMeanDoor = mean_door(_rows_body, _rows_setup, _rows_backward)
_RowsSelfMeanDoor = mean_door(_rows_self_body, _rows_self_setup, _rows_self_backward)


class _TwoViewDoor(torch.autograd.Function):
    """NT-Xent / DCL in one process, eagerly, as one autograd node: [z1; z2] normalised by the unit
    kernel, the loss of those rows against themselves, its mean. The ops' path makes three nodes of it
    (unit rows, the loss, its mean door), and each node is host time a small loss pays per call
    (notes/host_path.md). The same bodies and launchers as the ops, in the same order; under
    torch.compile, with gathered columns or DCLW's weights the ops' path runs."""

    @staticmethod
    def forward(ctx, z1, z2, pos_idx, excl_idx, temperature, exclude_pos):
        rows, rn = _unit_body(z1, z2)
        loss, lse2 = _rows_self_body(rows, pos_idx, excl_idx, None, temperature, exclude_pos)
        ctx.save_for_backward(z1, z2, rn, rows, pos_idx, excl_idx, lse2)
        ctx.temperature, ctx.exclude_pos = temperature, exclude_pos
        return loss.mean()

    @staticmethod
    def backward(ctx, dmean):
        from fastssl.kernels.contrastive import backward, unit_bwd

        z1, z2, rn, rows, pos_idx, excl_idx, lse2 = ctx.saved_tensors
        m = rows.shape[0]
        drows, _ = backward(rows, rows, pos_idx, excl_idx, None, lse2, dmean.expand(m), ctx.temperature,
                            ctx.exclude_pos, True, True, True, 1.0 / m)  # mean_door's scale: no division launch
        dz1, dz2 = unit_bwd(z1, z2, rn, drows)
        return (dz1 if ctx.needs_input_grad[0] else None), (dz2 if ctx.needs_input_grad[1] else None), None, None, None, None


def _one_node(z1: Tensor, z2: Tensor, temperature: float, exclude_pos: bool) -> Tensor | None:
    """The two-view loss's mean through ``_TwoViewDoor`` where it applies (the caller checked: kernels,
    one process, no weights): eager, both switches on, the unit kernel taking both views; else None."""
    if not (OPTIONS["one_node"] and OPTIONS["fused_unit"] and _door_open()):
        return None
    from fastssl.kernels.contrastive import unit_takes

    if not unit_takes(z1, z2) or z1.stride(1) != 1 or z2.stride(1) != 1:
        return None
    n = z1.shape[0]
    pos_idx, self_idx = _two_view_index(n, n, 0, z1.device)
    return _TwoViewDoor.apply(z1, z2, pos_idx, self_idx, float(temperature), exclude_pos)


class _QueryDoor(torch.autograd.Function):
    """InfoNCE eagerly as one autograd node when only the queries need a gradient (MoCo's momentum
    keys): the query rows normalised by the unit kernel, their loss against the unit key columns
    (MoCo v3, M-MoCo) or against the queue with the keys as outside positives (MoCo v2), the mean.
    Two nodes on the ops' path (unit rows, the loss's mean door); same bodies and launchers."""

    @staticmethod
    def forward(ctx, q, cols, pos_idx, excl_idx, queue, temperature):
        rows, rn = _unit_body(q, None)
        if queue is None:
            loss, lse2 = _rows_body(rows, cols, pos_idx, excl_idx, None, temperature, False)
        else:
            loss, lse2 = _queue_body(rows, cols, pos_idx, queue, temperature)
        ctx.save_for_backward(q, rn, rows, cols, pos_idx, excl_idx, queue, loss if queue is not None else None, lse2)
        ctx.temperature = temperature
        return loss.mean()

    @staticmethod
    def backward(ctx, dmean):
        from fastssl.kernels.contrastive import backward, queue_backward, unit_bwd

        q, rn, rows, cols, pos_idx, excl_idx, queue, loss, lse2 = ctx.saved_tensors
        m, t = rows.shape[0], ctx.temperature
        dloss = dmean.expand(m)  # with the mean's 1/M as the kernels' scale (mean_door)
        if queue is None:
            drows, _ = backward(rows, cols, pos_idx, excl_idx, None, lse2, dloss, t, False, True, False, False, 1.0 / m)
        else:
            drows = queue_backward(rows, cols, pos_idx, queue, loss, lse2, dloss, t, 1.0 / m)
        return unit_bwd(q, None, rn, drows)[0], None, None, None, None, None


def _query_node_applies(q: Tensor, k: Tensor) -> bool:
    """Whether InfoNCE on the kernels takes ``_QueryDoor``: eager, both switches on, the queries [M, D]
    needing a gradient and the keys none, the unit kernel taking the queries."""
    if not (OPTIONS["one_node"] and OPTIONS["fused_unit"] and _door_open()):
        return False
    if not (torch.is_grad_enabled() and q.requires_grad) or k.requires_grad or q.stride(1) != 1:
        return False
    from fastssl.kernels.contrastive import unit_takes

    return unit_takes(q)


def _query_node(q: Tensor, cols: Tensor, pos_idx: Tensor, excl_idx: Tensor | None, queue: Tensor | None,
                temperature: float) -> Tensor:
    """``_QueryDoor`` after the checks the ops' path makes (``prepare`` / ``check_queue`` on the queries,
    which the unit rows match in shape, dtype and device)."""
    from fastssl.kernels.contrastive import check_queue, prepare

    if queue is None:
        pos_idx, excl_idx, _ = prepare(q, cols, pos_idx, excl_idx, temperature, None)
    else:
        check_queue(q, cols, pos_idx, queue, temperature)
    return _QueryDoor.apply(q, cols, pos_idx, excl_idx, queue, float(temperature))


def _enter(door, mean_door_, op, args: tuple, mean: bool) -> Tensor:
    """Run a loss op through its eager door (``mean``: the door that returns the mean, one autograd
    node for loss and mean) or, under torch.compile, through the custom op (the compiler fuses the
    mean): the per-row loss [M] fp32, or its mean."""
    if _door_open():
        return mean_door_.apply(*args) if mean else door.apply(*args)[0]
    loss = op(*args)[0]
    return loss.mean() if mean else loss


def triton_contrastive_rows(rows: Tensor, cols: Tensor, pos_idx: Tensor, excl_idx: Tensor, temperature: float,
                            pos_weight: Tensor | None = None, exclude_pos: bool = False, *, mean: bool = False) -> Tensor:
    """The kernels' twin of ``fastssl.ops.reference.contrastive_rows`` (same contract, same maths):
    loss [M] fp32, or its mean with ``mean=True`` (what every loss of this module returns; see
    ``fastssl.ops.dispatch.mean_door``). rows [M, D], cols [C, D]: one dtype of fp32/bf16/fp16 and
    one device, any strides."""
    from fastssl.kernels.contrastive import prepare

    pos_idx, excl_idx, pos_weight = prepare(rows, cols, pos_idx, excl_idx, temperature, pos_weight)
    t, excl = float(temperature), bool(exclude_pos)
    if rows is cols:
        return _enter(_RowsSelfDoor, _RowsSelfMeanDoor, _rows_self_op, (rows, pos_idx, excl_idx, pos_weight, t, excl), mean)
    return _enter(_RowsDoor, _RowsMeanDoor, _rows_op, (rows, cols, pos_idx, excl_idx, pos_weight, t, excl), mean)


# --- queue rows (MoCo v2): loss[a] = LSE(t_pos, rows·queueᵀ/τ) − t_pos, t_pos = <rows[a], keys[pos[a]]>/τ ---
def _queue_body(rows: Tensor, keys: Tensor, pos_idx: Tensor, queue: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """-> (loss [M] fp32, LSE₂ [M] fp32); pos_idx int32 [M], row a's positive keys[pos_idx[a]]."""
    from fastssl.kernels.contrastive import queue_forward

    return queue_forward(rows, keys, pos_idx, queue, temperature)


def _queue_bwd_body(rows: Tensor, keys: Tensor, pos_idx: Tensor, queue: Tensor, loss: Tensor, lse2: Tensor,
                    dloss: Tensor, temperature: float, grad_scale: float = 1.0) -> Tensor:
    """-> dRows [M, D] of grad_scale·Σ dloss·loss, the positive's term included (the queue never gets a
    gradient: no column pass)."""
    from fastssl.kernels.contrastive import queue_backward

    return queue_backward(rows, keys, pos_idx, queue, loss, lse2, dloss, temperature, grad_scale)


_queue_op = torch.library.custom_op("fastssl::queue_rows", _queue_body, mutates_args=())
_queue_bwd_op = torch.library.custom_op("fastssl::queue_rows_bwd", _queue_bwd_body, mutates_args=())
_queue_op.register_fake(_loss_lse_fake)
_queue_bwd_op.register_fake(lambda rows, *_: rows.new_empty(rows.shape))


def _queue_setup(ctx, inputs, output):
    rows, keys, pos_idx, queue, temperature = inputs
    ctx.save_for_backward(rows, keys, pos_idx, queue, output[0], output[1])
    ctx.temperature = temperature


def _queue_backward(ctx, dloss, _dlse2):
    """dRows (the positive's term included) from the kernels. The keys' gradient, O(M·D), only when
    they need one (MoCo's momentum keys never do): d loss[a] / d keys[pos[a]] = g·(P_pos[a] − 1)·rows[a]/τ,
    P_pos = 2^(t_pos₂ − LSE₂) = e^(−loss[a]), summed per key."""
    rows, keys, pos_idx, queue, loss, lse2 = ctx.saved_tensors
    dloss, tau, scale = dloss.float(), ctx.temperature, grad_scale(ctx)
    drows = dkeys = None
    if ctx.needs_input_grad[0]:
        drows = backward_impl(ctx, _queue_bwd_op, _queue_bwd_body)(rows, keys, pos_idx, queue, loss, lse2, dloss, tau,
                                                                    scale)
    if ctx.needs_input_grad[1]:
        idx = pos_idx.long()
        coef = dloss * (torch.exp(-loss) - 1.0) * (scale / tau)
        dkeys = torch.zeros(keys.shape, device=keys.device, dtype=torch.float32)
        dkeys = dkeys.index_add_(0, idx, coef[:, None] * rows.float()).to(keys.dtype)
    return drows, dkeys, None, None, None


_queue_op.register_autograd(_queue_backward, setup_context=_queue_setup)
_QueueDoor = eager_door(_queue_body, _queue_setup, _queue_backward)
_QueueMeanDoor = mean_door(_queue_body, _queue_setup, _queue_backward)


def triton_queue_rows(rows: Tensor, keys: Tensor, pos_idx: Tensor, queue: Tensor, temperature: float, *,
                      mean: bool = False) -> Tensor:
    """The kernels' twin of ``fastssl.ops.reference.queue_rows`` (MoCo v2: positive keys[pos_idx[a]], the
    queue as negatives), without the [M, 1+K] logits: the forward streams the queue in tiles with the
    positive seeded into the running logsumexp, dRows recomputes the tiles from LSE₂.

    rows [M, D] and queue [K, D] share one dtype (fp32, bf16 or fp16) and device; keys [N, D] any
    float dtype on that device; pos_idx int [M]. The positives run in the kernels (an fp32 row-wise dot
    in the forward; dRows' epilogue adds their gradient from the saved loss, P_pos = e^(−loss)): no
    eager ops or autograd nodes for them. Returns loss [M] fp32 (its mean with ``mean=True``); no
    gradient into the queue.
    """
    from fastssl.kernels.contrastive import _as_index, check_queue

    check_queue(rows, keys, pos_idx, queue, temperature)
    args = (rows, keys, _as_index(pos_idx, rows.device), queue.detach(), float(temperature))
    return _enter(_QueueDoor, _QueueMeanDoor, _queue_op, args, mean)


# --- unit rows: [x1; x2] / max(‖row‖, 1e-12), the ops' ``_unit`` in one launch each way ----------
def _unit_body(x1: Tensor, x2: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """-> (y [n1 + n2, D] in x1's dtype, 1/‖row‖ [n1 + n2] fp32)."""
    from fastssl.kernels.contrastive import unit_fwd

    return unit_fwd(x1, x2)


def _unit_bwd_body(x1: Tensor, x2: Optional[Tensor], rn: Tensor, dy: Tensor) -> tuple[Tensor, Tensor]:
    """-> (dx1, dx2), dx2 empty without x2."""
    from fastssl.kernels.contrastive import unit_bwd

    dx1, dx2 = unit_bwd(x1, x2, rn, dy)
    return dx1, (dx2 if dx2 is not None else empty_flag(x1))


_unit_op = torch.library.custom_op("fastssl::unit_rows", _unit_body, mutates_args=())
_unit_bwd_op = torch.library.custom_op("fastssl::unit_rows_bwd", _unit_bwd_body, mutates_args=())


@_unit_op.register_fake
def _(x1, x2):
    n = x1.shape[0] + (x2.shape[0] if x2 is not None else 0)
    return x1.new_empty((n, x1.shape[1])), x1.new_empty(n, dtype=torch.float32)


@_unit_bwd_op.register_fake
def _(x1, x2, rn, dy):
    return torch.empty_like(x1), (torch.empty_like(x2) if x2 is not None else empty_flag(x1))


def _unit_setup(ctx, inputs, output):
    x1, x2 = inputs
    ctx.save_for_backward(x1, x2, output[1])


def _unit_backward(ctx, dy, _drn):
    x1, x2, rn = ctx.saved_tensors
    dx1, dx2 = backward_impl(ctx, _unit_bwd_op, _unit_bwd_body)(x1, x2, rn, dy)
    return (dx1 if ctx.needs_input_grad[0] else None), (dx2 if ctx.needs_input_grad[1] else None)


_unit_op.register_autograd(_unit_backward, setup_context=_unit_setup)
_UnitDoor = eager_door(_unit_body, _unit_setup, _unit_backward)


def fused_unit_rows(x1: Tensor, x2: Tensor | None = None) -> Tensor:
    """[x1; x2] (x2 may be None; [n_i, D], one dtype of fp32/bf16/fp16, unit stride along D) -> the
    rows / max(‖row‖, 1e-12) as one [n1 + n2, D] tensor in that dtype, the norm and the backward
    in fp32, as ``F.normalize(torch.cat([x1, x2]).float()).to(dtype)``, without the concatenation."""
    return (_UnitDoor.apply(x1, x2) if _door_open() else _unit_op(x1, x2))[0]


def unit_rows(x: Tensor, x2: Tensor | None = None) -> Tensor | None:
    """``fused_unit_rows`` of a 2-D operand (or of two, concatenated) when it applies (``OPTIONS["fused_unit"]``,
    the kernels take the operands, not under torch.compile, which fuses the eager normalisation
    itself); None otherwise, and the caller normalises in torch."""
    if not OPTIONS["fused_unit"] or torch.compiler.is_compiling():
        return None
    from fastssl.kernels.contrastive import unit_fwd, unit_takes

    if not unit_takes(x, x2):
        return None
    if x.stride(1) != 1:
        x = x.contiguous()
    if x2 is not None and x2.stride(1) != 1:
        x2 = x2.contiguous()
    if not (torch.is_grad_enabled() and (x.requires_grad or (x2 is not None and x2.requires_grad))):
        return unit_fwd(x, x2)[0]  # nothing to differentiate (momentum keys, the queue): no autograd node
    return fused_unit_rows(x, x2)
