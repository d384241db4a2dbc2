"""Triton kernels for MAE's token gather (encoder side) and scatter (decoder side).

Notation: x tokens, B batch, L patches, K kept, D width, ids = ids_keep [B, K] (distinct per row),
pos = positional embedding [L, D], mt = mask token [D], g = incoming gradient, k(b, l) = the k with
ids[b, k] == l (undefined when l was removed).

gather   fwd  out[b, k] = x[b, ids[b, k]] + pos[ids[b, k]]             _rows_kernel      (over [B·K] rows)
         bwd  dx[b, l]  = g[b, k(b, l)], 0 where removed               _expand_kernel    (over [B·L] rows)
              dpos[l]   = Σ_b dx[b, l]                                  same pass + _reduce_kernel
scatter  fwd  out[b, l] = (x[b, k(b, l)] if kept else mt) + pos[l]     _expand_kernel
         bwd  dx[b, k]  = g[b, ids[b, k]]                              _rows_kernel (dx only)
              dpos[l] = Σ_b g[b, l], dmt = Σ_{removed (b, l)} g[b, l]  _compress_kernel + _reduce_kernel

Why this shape (issue 22):
- ids is a permutation prefix, so every direction is a conflict-free gather: an output row is written
  exactly once, removed rows get their zero / mask token from the same store, no memset, no atomics.
- No inverse map tensor. A program owns a block of positions l of one batch row at a time and finds
  k(b, l) by comparing its l's with the K ids of that row ([BLOCK_L, next_pow2(K)] compares, the
  ids row is ~K·8 bytes from L2). That replaces the former torch scatter (three launches) per call.
- Batch reductions (dpos, dmt) without atomics: an _expand / _compress program walks a chunk of
  batch rows for its (l-block, D-block), accumulates in fp32 registers in a fixed order and writes
  one fp32 partial per chunk; _reduce_kernel sums the partials in a fixed order and casts. When one
  chunk suffices the partial *is* the result (written in its dtype, no second launch). Bit-
  reproducible run to run; the partials cost chunks·L·D·4 bytes each way, a few % of the traffic.
- Launch configuration from a table (``plan``): tiles of ~8K elements, rows of the whole D in
  128-bit pieces where D allows, the batch split sized to the SM count. No autotune, no .item(),
  no host sync; the only allocations are the outputs (and the partials).
All arithmetic is fp32 (loads cast up, stores cast down). Offsets are int64 (B·L·D passes 2^31).
Kernels and launchers only: the custom ops, their autograd and the dispatch are ``fastssl.ops.tokens``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from fastssl.kernels.launch import cdiv, launch, next_pow2

# ---------------------------------------------------------------------------------------------
# launch table
# ---------------------------------------------------------------------------------------------

FOLD = True  # the last program of a tile sums the batch partials (no _reduce_kernel launch)
STAGES = 1  # software-pipeline depth of the batch walk (3: ~33 KB of shared memory per program)
TILE_ELEMS = 8192  # elements per program per step: 16 KB of bf16 in flight, 32 fp32 per thread at 8 warps
SUM_WAVES = 4  # reducing kernels: aim for this many programs per SM (more programs = more partials)
_OVERRIDE: dict = {}  # bench/tests: {"tile", "waves", "warps", "stages", "fold"}: replace the table's values


def _block_d(d: int) -> int:
    """Power-of-two D tile that wastes the fewest lanes (768 -> 256, 512 -> 512, 7 -> 16)."""
    if d <= 128:
        return max(16, next_pow2(d))
    best = min((cdiv(d, b) * b, -b) for b in (128, 256, 512, 1024))
    return -best[1]


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter: a small grid keeps CPU tests quick


@dataclass(frozen=True)
class Plan:
    block_r: int  # output rows per tile (_rows_kernel)
    block_l: int  # positions l per tile (_expand / _compress: block_r capped by L)
    block_d: int
    warps: int
    n_d: int  # D-blocks
    n_l: int  # l-blocks (_expand / _compress)
    rpp: int  # batch rows walked by one program (_expand / _compress)
    chunks: int  # batch chunks = partials per position
    stages: int  # pipeline depth of the batch walk


@functools.lru_cache(maxsize=1024)
def _plan(b: int, l: int, d: int, reduce: bool, sms: int, rpp: int | None, tile: int, waves: int, warps: int | None,
          stages: int = STAGES) -> Plan:
    block_d = _block_d(d)
    block_r = max(1, tile // block_d)
    block_l = min(block_r, next_pow2(l))
    w = warps or (8 if block_r * block_d >= 8192 else 4)
    n_d = cdiv(d, block_d)
    n_l = cdiv(l, block_l)
    if rpp is None:
        if reduce:  # enough programs to fill the machine, as few partials as that allows
            chunks = max(1, min(b, cdiv(waves * sms, n_l * n_d)))
            rpp = cdiv(b, chunks)
        else:  # no partials: short walks, many programs (the pos / mt tile is reused rpp times)
            rpp = 4
    return Plan(block_r, block_l, block_d, w, n_d, n_l, rpp, cdiv(b, rpp), stages)


def plan(b: int, l: int, d: int, device: torch.device, reduce: bool, rpp: int | None = None) -> Plan:
    """Tiling for a [B, L, D] problem; ``reduce``: the kernel also sums over the batch."""
    o = _OVERRIDE
    return _plan(b, l, d, reduce, _sm_count(device), rpp, o.get("tile", TILE_ELEMS), o.get("waves", SUM_WAVES), o.get("warps"),
                 o.get("stages", STAGES))


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _rows_kernel(
    x_ptr, ids_ptr, pos_ptr, out_ptr, n_rows, K, L, D,
    HAS_POS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # out[r] = x[b, ids[r]] (+ pos[ids[r]]) for rows r = b·K + k: gather fwd, scatter bwd's dx
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask = rows < n_rows
    m = rmask[:, None] & (cols < D)[None, :]
    idx = tl.load(ids_ptr + rows, mask=rmask, other=0).to(tl.int64)
    src = (rows // K) * L + idx
    v = tl.load(x_ptr + src[:, None] * D + cols[None, :], mask=m, other=0.0).to(tl.float32)
    if HAS_POS:
        v += tl.load(pos_ptr + idx[:, None] * D + cols[None, :], mask=m, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows[:, None] * D + cols[None, :], v.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _ids_row(ids_ptr, b, valid, K, KP: tl.constexpr):
    """ids[b, :] as [KP] int64, -1 past K (or when not ``valid``): ~K·8 bytes, an L2 hit after the first."""
    kk = tl.arange(0, KP)
    return tl.load(ids_ptr + b * K + kk, mask=(kk < K) & valid, other=-1).to(tl.int64)


@triton.jit
def _match(row, l, KP: tl.constexpr):
    """(found [BLOCK_L], k [BLOCK_L] int64): the k with row[k] == l, by [BLOCK_L, KP] compares."""
    eq = row[None, :] == l[:, None]
    found = tl.max(eq.to(tl.int32), axis=1) > 0
    k = tl.sum(tl.where(eq, tl.arange(0, KP)[None, :], 0), axis=1).to(tl.int64)
    return found, k


@triton.jit
def _arrive(cnt_ptr, idx, expected):
    """Count this program in at counter ``idx``; True for the program that arrives last.

    The barrier orders every thread's partial store before the count; the acq_rel atomic (one
    thread; Triton broadcasts its result) publishes them and, for the last program, makes the
    other programs' partials visible to it (they are then read with .cg loads, past L1)."""
    tl.debug_barrier()
    prev = tl.atomic_add(cnt_ptr + idx, 1, sem="acq_rel", scope="gpu")
    return prev == expected - 1


@triton.jit
def _expand_kernel(
    x_ptr, ids_ptr, mt_ptr, pos_ptr, out_ptr, part_ptr, sum_ptr, cnt_ptr, B, K, L, D, rows_per_prog,
    HAS_MT: tl.constexpr, HAS_POS: tl.constexpr, NEED_SUM: tl.constexpr, FOLD: tl.constexpr,
    KP: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, STAGES: tl.constexpr,
):
    # out[b, l] = (x[b, k(b, l)] if kept else mt | 0) (+ pos[l]), b over this program's chunk;
    # NEED_SUM: part[chunk, l] = Σ_b out[b, l] (gather bwd: dpos = Σ_b dx); FOLD: the last program
    # of each (l-block, D-block) to finish sums the chunks' partials in chunk order into sum[l]
    # (no second launch; the order, hence the bits, do not depend on which program is last).
    l = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    chunk = tl.program_id(2)
    lmask = l < L
    m = lmask[:, None] & (cols < D)[None, :]
    l64 = l.to(tl.int64)
    if HAS_POS:
        p = tl.load(pos_ptr + l64[:, None] * D + cols[None, :], mask=m, other=0.0).to(tl.float32)
    if HAS_MT:
        fill = tl.load(mt_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
    acc = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
    b0 = chunk.to(tl.int64) * rows_per_prog
    row = _ids_row(ids_ptr, b0, b0 < B, K, KP)
    for i in tl.range(0, rows_per_prog, num_stages=STAGES):  # STAGES > 1: cp.async pipelining of the row loads
        b = b0 + i
        bvalid = b < B
        # the next batch row's ids are requested before this row's data: the ids -> data chain of
        # dependent loads then costs one memory latency per step, not two
        nxt = _ids_row(ids_ptr, b + 1, (b + 1 < B) & (i + 1 < rows_per_prog), K, KP)
        found, k = _match(row, l64, KP)
        mb = m & bvalid
        v = tl.load(x_ptr + (b * K + k)[:, None] * D + cols[None, :], mask=mb & found[:, None], other=0.0).to(tl.float32)
        if HAS_MT:
            v = tl.where(found[:, None], v, fill[None, :])
        if HAS_POS:
            v += p
        tl.store(out_ptr + (b * L + l64)[:, None] * D + cols[None, :], v.to(out_ptr.dtype.element_ty), mask=mb)
        if NEED_SUM:  # v is 0 outside mb (no fill, no pos in the gather backward)
            acc += v
        row = nxt
    if NEED_SUM:
        tl.store(part_ptr + (chunk * L + l64)[:, None] * D + cols[None, :], acc.to(part_ptr.dtype.element_ty), mask=m)
        if FOLD:
            n_chunks = tl.num_programs(2)
            tile = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
            if _arrive(cnt_ptr, tile, n_chunks):
                tot = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
                for c in range(0, n_chunks):
                    tot += tl.load(part_ptr + (c * L + l64)[:, None] * D + cols[None, :], mask=m, other=0.0,
                                   cache_modifier=".cg")
                tl.store(sum_ptr + l64[:, None] * D + cols[None, :], tot.to(sum_ptr.dtype.element_ty), mask=m)
                tl.atomic_xchg(cnt_ptr + tile, 0)  # reset for the next launch


@triton.jit
def _compress_kernel(
    g_ptr, ids_ptr, dx_ptr, pos_part_ptr, mt_part_ptr, pos_ptr, mt_ptr, cnt_ptr, B, K, L, D, rows_per_prog,
    NEED_DX: tl.constexpr, NEED_DPOS: tl.constexpr, NEED_DMT: tl.constexpr, FOLD: tl.constexpr,
    KP: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, STAGES: tl.constexpr,
):
    # scatter bwd: read g[b, l] once and route it: kept -> dx[b, k(b, l)]; always -> Σ_b (dpos);
    # removed -> Σ_{b, l} (dmt, partial per (chunk, l-block)). FOLD: the last program of each
    # (l-block, D-block) sums the dpos partials in chunk order, the last of each D-block the dmt
    # partials in (chunk, l-block) order (see _expand_kernel).
    lb = tl.program_id(0)
    l = lb * BLOCK_L + tl.arange(0, BLOCK_L)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    chunk = tl.program_id(2)
    cmask = cols < D
    m = (l < L)[:, None] & cmask[None, :]
    l64 = l.to(tl.int64)
    acc_pos = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
    acc_mt = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
    b0 = chunk.to(tl.int64) * rows_per_prog
    for i in tl.range(0, rows_per_prog, num_stages=STAGES):  # STAGES > 1: cp.async pipelining of the row loads
        b = b0 + i
        bvalid = b < B
        # g's address does not depend on ids: both loads are in flight together
        found, k = _match(_ids_row(ids_ptr, b, bvalid, K, KP), l64, KP)
        mb = m & bvalid
        v = tl.load(g_ptr + (b * L + l64)[:, None] * D + cols[None, :], mask=mb, other=0.0).to(tl.float32)
        if NEED_DX:
            tl.store(dx_ptr + (b * K + k)[:, None] * D + cols[None, :], v.to(dx_ptr.dtype.element_ty), mask=mb & found[:, None])
        if NEED_DPOS:
            acc_pos += v
        if NEED_DMT:
            acc_mt += tl.where(found[:, None], 0.0, v)
    n_l = tl.num_programs(0)
    if NEED_DPOS:
        tl.store(pos_part_ptr + (chunk * L + l64)[:, None] * D + cols[None, :], acc_pos.to(pos_part_ptr.dtype.element_ty), mask=m)
    if NEED_DMT:
        tl.store(mt_part_ptr + (chunk * n_l + lb).to(tl.int64) * D + cols, tl.sum(acc_mt, axis=0), mask=cmask)
    if FOLD:
        n_chunks = tl.num_programs(2)
        n_d = tl.num_programs(1)
        db = tl.program_id(1)
        if NEED_DPOS:
            tile = lb * n_d + db
            if _arrive(cnt_ptr, tile, n_chunks):
                tot = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
                for c in range(0, n_chunks):
                    tot += tl.load(pos_part_ptr + (c * L + l64)[:, None] * D + cols[None, :], mask=m, other=0.0,
                                   cache_modifier=".cg")
                tl.store(pos_ptr + l64[:, None] * D + cols[None, :], tot.to(pos_ptr.dtype.element_ty), mask=m)
                tl.atomic_xchg(cnt_ptr + tile, 0)
        if NEED_DMT:
            slot = n_l * n_d + db  # counters after the dpos tiles
            if _arrive(cnt_ptr, slot, n_chunks * n_l):
                tot_mt = tl.zeros((BLOCK_D,), dtype=tl.float32)
                for r in range(0, n_chunks * n_l):
                    tot_mt += tl.load(mt_part_ptr + r * D + cols, mask=cmask, other=0.0, cache_modifier=".cg")  # < 2^31
                tl.store(mt_ptr + cols, tot_mt.to(mt_ptr.dtype.element_ty), mask=cmask)
                tl.atomic_xchg(cnt_ptr + slot, 0)


@triton.jit
def _reduce_kernel(
    pos_part_ptr, pos_ptr, n_pos, mt_part_ptr, mt_ptr, n_mt, L_pos, D,
    BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # programs r < L_pos: pos[r] = Σ_c pos_part[c, r] (c < n_pos); program L_pos: mt = Σ_c mt_part[c]
    # (c < n_mt). L_pos = 0 when only dmt is reduced. Fixed order (tiles of BLOCK_C partials, a tree
    # within a tile, tiles in sequence): the same bits every run.
    r = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    c = tl.arange(0, BLOCK_C)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if r < L_pos:
        for c0 in range(0, n_pos, BLOCK_C):
            cc = (c0 + c).to(tl.int64)
            t = tl.load(pos_part_ptr + (cc * L_pos + r)[:, None] * D + cols[None, :], mask=(cc < n_pos)[:, None] & cmask[None, :], other=0.0)
            acc += tl.sum(t, axis=0)
        tl.store(pos_ptr + r.to(tl.int64) * D + cols, acc.to(pos_ptr.dtype.element_ty), mask=cmask)
    else:
        for c0 in range(0, n_mt, BLOCK_C):
            cc = (c0 + c).to(tl.int64)
            t = tl.load(mt_part_ptr + cc[:, None] * D + cols[None, :], mask=(cc < n_mt)[:, None] & cmask[None, :], other=0.0)
            acc += tl.sum(t, axis=0)
        tl.store(mt_ptr + cols, acc.to(mt_ptr.dtype.element_ty), mask=cmask)


# ---------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------

_REDUCE_BLOCK_C, _REDUCE_BLOCK_D = 8, 256
_COUNTERS: dict = {}


def _fold() -> bool:
    return _OVERRIDE.get("fold", FOLD)


def _counters(device: torch.device, kind: str, n: int) -> torch.Tensor:
    """Zeroed int32 arrival counters for the folded reductions, one buffer per (device, kernel),
    allocated once: each launch's last programs reset the counters they used, so no memset per call.
    (Two launches of the same kernel running at once on different streams would share them; the
    token ops run on the autograd stream, one after the other.)"""
    buf = _COUNTERS.get((device, kind))
    if buf is None or buf.numel() < n:
        buf = torch.zeros(max(n, 1024), dtype=torch.int32, device=device)
        _COUNTERS[(device, kind)] = buf
    return buf


def _reduce(pos_part, pos_out, mt_part, mt_out, d: int) -> None:
    """Sum partials [n, L, D] -> pos_out [L, D] and / or [n, D] -> mt_out [D] in one launch."""
    has_pos, has_mt = pos_part is not None, mt_part is not None
    l = pos_part.shape[1] if has_pos else 0
    dummy = pos_part if has_pos else mt_part
    grid = (l + int(has_mt), cdiv(d, _REDUCE_BLOCK_D))
    launch(_reduce_kernel, grid,
        pos_part if has_pos else dummy, pos_out if has_pos else dummy, pos_part.shape[0] if has_pos else 0,
        mt_part if has_mt else dummy, mt_out if has_mt else dummy, mt_part.shape[0] if has_mt else 0, l, d,
        BLOCK_C=_REDUCE_BLOCK_C, BLOCK_D=_REDUCE_BLOCK_D, num_warps=4,
    )


def gather_rows(x: torch.Tensor, ids: torch.Tensor, pos: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """x [B, L, D], ids [B, K], pos [L, D] or None (contiguous) -> x[b, ids] (+ pos[ids]) [B, K, D]."""
    b, l, d = x.shape
    ids = ids.contiguous()  # a slice of ids_shuffle is not: a no-op check when it is
    k = ids.shape[1]
    out = torch.empty(b, k, d, dtype=out_dtype, device=x.device)
    if out.numel() == 0:
        return out
    p = plan(b * k, 1, d, x.device, reduce=False)
    grid = (cdiv(b * k, p.block_r), p.n_d)
    launch(_rows_kernel, grid,
        x, ids, pos if pos is not None else x, out, b * k, k, l, d,
        HAS_POS=pos is not None, BLOCK_R=p.block_r, BLOCK_D=p.block_d, num_warps=p.warps,
    )
    return out


def gather_fwd(x: torch.Tensor, ids: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    """x [B, L, D] contiguous, ids [B, K], pos [L, D] or None -> [B, K, D] in promote(x, pos)."""
    dtype = x.dtype if pos is None else torch.promote_types(x.dtype, pos.dtype)
    return gather_rows(x, ids, pos, dtype)


def gather_bwd(g, ids, x_shape, x_dtype, pos_dtype, need_dx: bool, need_dpos: bool, rows_per_program: int | None = None):
    """g [B, K, D] -> (dx [B, L, D] or None, dpos [L, D] or None): one pass over dx, + a small reduce.

    ``rows_per_program`` overrides the batch split (tests use it to cover the loop and the partials).
    """
    b, l, d = x_shape
    k = ids.shape[1]
    g, ids = g.contiguous(), ids.contiguous()
    dpos = torch.empty(l, d, dtype=pos_dtype, device=g.device) if need_dpos else None
    if not need_dx and not need_dpos:
        return None, None
    p = plan(b, l, d, g.device, reduce=need_dpos, rpp=rows_per_program)
    # dx is the full output either way (its zeros are the gradient); without dx there is no
    # cheaper dpos than this pass, so a scratch dx is written (never the case in MAE).
    dx = torch.empty(x_shape, dtype=x_dtype, device=g.device)
    part = None
    if need_dpos:
        part = dpos if p.chunks == 1 else torch.empty(p.chunks, l, d, dtype=torch.float32, device=g.device)
    fold = need_dpos and p.chunks > 1 and _fold()
    cnt = _counters(g.device, "expand", p.n_l * p.n_d) if fold else g
    launch(_expand_kernel, (p.n_l, p.n_d, p.chunks),
        g, ids, g, g, dx, part if part is not None else g, dpos if fold else g, cnt, b, k, l, d, p.rpp,
        HAS_MT=False, HAS_POS=False, NEED_SUM=need_dpos, FOLD=fold,
        KP=next_pow2(k), BLOCK_L=p.block_l, BLOCK_D=p.block_d, STAGES=p.stages, num_warps=p.warps,
    )
    if need_dpos and p.chunks > 1 and not fold:
        _reduce(part, dpos, None, None, d)
    return (dx if need_dx else None), dpos


def scatter_fwd(x, ids, num_patches, mt, pos):
    """x [B, K, D], ids [B, K], mt [D], pos [L, D] or None (contiguous) -> out [B, L, D]."""
    b, k, d = x.shape
    ids = ids.contiguous()
    dtype = torch.promote_types(x.dtype, mt.dtype)
    if pos is not None:
        dtype = torch.promote_types(dtype, pos.dtype)
    out = torch.empty(b, num_patches, d, dtype=dtype, device=x.device)
    if out.numel() == 0:
        return out
    p = plan(b, num_patches, d, x.device, reduce=False)
    launch(_expand_kernel, (p.n_l, p.n_d, p.chunks),
        x, ids, mt, pos if pos is not None else mt, out, out, out, out, b, k, num_patches, d, p.rpp,
        HAS_MT=True, HAS_POS=pos is not None, NEED_SUM=False, FOLD=False,
        KP=next_pow2(k), BLOCK_L=p.block_l, BLOCK_D=p.block_d, STAGES=p.stages, num_warps=p.warps,
    )
    return out


def scatter_bwd(g, ids, x_dtype, mt_dtype, pos_dtype, need_dx, need_dmt, need_dpos, rows_per_program: int | None = None):
    """g [B, L, D] -> (dx [B, K, D] | None, dmt [D] | None, dpos [L, D] | None) in the given dtypes.

    dx alone is a plain gather of the kept rows (reads only B·K rows of g); with dpos or dmt, g
    is read in full once and routed (``_compress_kernel``), its last programs folding the partials
    (or, with FOLD off, one small reduce launch).
    """
    b, l, d = g.shape
    k = ids.shape[1]
    g, ids = g.contiguous(), ids.contiguous()
    dx = dmt = dpos = None
    if not (need_dmt or need_dpos):
        return (gather_rows(g, ids, None, x_dtype) if need_dx else None), None, None
    p = plan(b, l, d, g.device, reduce=True, rpp=rows_per_program)
    dx = torch.empty(b, k, d, dtype=x_dtype, device=g.device) if need_dx else None
    dpos = torch.empty(l, d, dtype=pos_dtype, device=g.device) if need_dpos else None
    dmt = torch.empty(d, dtype=mt_dtype, device=g.device) if need_dmt else None
    # dmt always needs a reduction (over l-blocks), so fold whenever it is on; except without dx (a
    # rare case: the decoder input needs no gradient), whose folded variant spills 8 bytes at
    # D = 768 on sm_90: it keeps the reduce launch.
    fold = _fold() and need_dx
    direct = p.chunks == 1 and not fold  # one chunk: the dpos partial is dpos itself
    part_pos = (dpos if direct else torch.empty(p.chunks, l, d, dtype=torch.float32, device=g.device)) if need_dpos else None
    part_mt = torch.empty(p.chunks * p.n_l, d, dtype=torch.float32, device=g.device) if need_dmt else None
    cnt = _counters(g.device, "compress", p.n_l * p.n_d + p.n_d) if fold else g
    launch(_compress_kernel, (p.n_l, p.n_d, p.chunks),
        g, ids, dx if need_dx else g, part_pos if need_dpos else g, part_mt if need_dmt else g,
        dpos if need_dpos else g, dmt if need_dmt else g, cnt, b, k, l, d, p.rpp,
        NEED_DX=need_dx, NEED_DPOS=need_dpos, NEED_DMT=need_dmt, FOLD=fold,
        KP=next_pow2(k), BLOCK_L=p.block_l, BLOCK_D=p.block_d, STAGES=p.stages, num_warps=p.warps,
    )
    pos_left = need_dpos and not direct
    if not fold and (pos_left or need_dmt):
        _reduce(part_pos if pos_left else None, dpos, part_mt, dmt, d)
    return dx, dmt, dpos
