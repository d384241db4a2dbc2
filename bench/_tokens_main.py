"""FROZEN COPY of main's kernels/tokens.py (commit 5561cb6), the "before" of issue 22.

Used only by ``bench/tokens.py`` (provider ``triton_main``) to time the old and the new token
kernels side by side in one run. Not imported by the package; do not edit or fix it.
(Called through its own autograd.Functions, so without main's custom-op overhead: the "before"
timings are, if anything, flattering to it.)

Original docstring follows.
Triton kernels for MAE's token gather (encoder side) and scatter (decoder side).

Notation: x tokens, B batch, L patches, K kept, D width, ids = ids_keep [B, K] (distinct per row),
pos = positional embedding [L, D], mt = mask token [D], g = incoming gradient.
``slot[b, l]`` = k if ids[b, k] == l else -1: the inverse of ids, built once per call with one
small torch scatter (B·L int32, ~1% of the token traffic) so that every kernel below reads and
writes each big tensor exactly once.

gather   fwd  out[b, k] = x[b, ids[b, k]] + pos[ids[b, k]]              grid over output rows
         bwd  dx[b, l]  = g[b, slot[b, l]] if slot >= 0 else 0           grid over (l, D-block, B-chunk)
              dpos[l]   = Σ_b [slot[b, l] >= 0] g[b, slot[b, l]]
scatter  fwd  out[b, l] = (x[b, slot] if slot >= 0 else mt) + pos[l]    grid over output rows
         bwd  dx[b, k]  = g[b, ids[b, k]]                                grid over (l, D-block, B-chunk)
              dpos[l]   = Σ_b g[b, l];   dmt = Σ_{b, l: slot < 0} g[b, l]

Determinism: the batch reductions (dpos, dmt) use no atomics. Each (l, D-block, B-chunk) program
sums its chunk in fp32 registers in a fixed order and writes a partial [chunks, L, D]; torch sums
the partials over the chunk axis (also fixed order). Chunks exist only to give the GPU enough
programs when B·L is small relative to the machine; the partial buffer is ~L·D·4 bytes per chunk,
a few % of the token traffic at the sizes that matter, and buys bit-reproducible gradients (fp32
atomics would save that traffic but make runs differ in the last bits).

All arithmetic is fp32 (loads are cast up, stores cast down), which is also what the interpreter
needs for bf16. Offsets are int64: B·L·D passes 2^31 for large batches of wide tokens.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

def _block_d(d: int) -> int:
    """Power-of-two D tile that wastes the fewest lanes (768 -> 256, 512 -> 512, 7 -> 16)."""
    if d <= 128:
        return max(16, triton.next_power_of_2(d))
    best = min((triton.cdiv(d, b) * b, -b) for b in (128, 256, 512, 1024))
    return -best[1]


def _row_tile(block_d: int) -> tuple[int, int]:
    """(rows per tile, warps): ~4K elements per tile, enough bytes in flight per program."""
    rows = max(1, 4096 // block_d)
    return rows, 4


def _rows_per_program(b: int, l: int, n_dblocks: int, block_r: int) -> int:
    """Batch rows per reduction program: 64, halved while the grid has < 2048 programs."""
    rows = 64
    while rows > block_r and l * n_dblocks * triton.cdiv(b, rows) < 2048:
        rows //= 2
    return max(rows, block_r)


def _reduction_plan(b: int, l: int, d: int, rows_per_program: int | None):
    """Tiling of the backward kernels that sum over the batch: (BLOCK_D, BLOCK_R, warps, D-blocks,
    batch rows per program, batch chunks). Rows per program is a whole number of row tiles, so a
    chunk never spills into the next."""
    block_d = _block_d(d)
    block_r, warps = _row_tile(block_d)
    n_d = triton.cdiv(d, block_d)
    rpp = rows_per_program or _rows_per_program(b, l, n_d, block_r)
    rpp = triton.cdiv(rpp, block_r) * block_r
    return block_d, block_r, warps, n_d, rpp, triton.cdiv(b, rpp)


def _slots(ids: torch.Tensor, num_patches: int) -> torch.Tensor:
    """slot[b, l] = k where ids[b, k] == l, else -1 (int32 [B, L])."""
    b, k = ids.shape
    slot = torch.full((b, num_patches), -1, dtype=torch.int32, device=ids.device)
    ks = torch.arange(k, dtype=torch.int32, device=ids.device).expand(b, k)
    return slot.scatter_(1, ids.long(), ks)


# ---------------------------------------------------------------------------------------------
# gather
# ---------------------------------------------------------------------------------------------


@triton.jit
def _gather_fwd_kernel(
    x_ptr, ids_ptr, pos_ptr, out_ptr,
    n_rows, K, L, D,
    HAS_POS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # rows r = b·K + k of the output; src = b·L + ids[r]
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
def _gather_bwd_kernel(
    g_ptr, slot_ptr, dx_ptr, dpos_part_ptr,
    B, K, L, D, rows_per_prog,
    NEED_DX: tl.constexpr, NEED_DPOS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # program (l, D-block, chunk) walks batch rows b in [chunk·rows_per_prog, +rows_per_prog)
    l = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    chunk = tl.program_id(2)
    cmask = cols < D
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    b_start = chunk * rows_per_prog
    for off in range(0, rows_per_prog, BLOCK_R):
        b = (b_start + off + tl.arange(0, BLOCK_R)).to(tl.int64)
        bmask = b < B
        s = tl.load(slot_ptr + b * L + l, mask=bmask, other=-1).to(tl.int64)
        kept = s >= 0
        m_g = (bmask & kept)[:, None] & cmask[None, :]
        v = tl.load(g_ptr + (b * K + s)[:, None] * D + cols[None, :], mask=m_g, other=0.0).to(tl.float32)
        if NEED_DX:  # removed positions get the 0.0 the masked load left in v
            m_dx = bmask[:, None] & cmask[None, :]
            tl.store(dx_ptr + (b * L + l)[:, None] * D + cols[None, :], v.to(dx_ptr.dtype.element_ty), mask=m_dx)
        if NEED_DPOS:
            acc += tl.sum(v, axis=0)
    if NEED_DPOS:
        tl.store(dpos_part_ptr + (chunk * L + l) * D + cols, acc, mask=cmask)


def gather_fwd(x: torch.Tensor, ids: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    """x [B, L, D] contiguous, ids [B, K], pos [L, D] or None -> [B, K, D]."""
    b, l, d = x.shape
    k = ids.shape[1]
    dtype = x.dtype if pos is None else torch.promote_types(x.dtype, pos.dtype)
    out = torch.empty(b, k, d, dtype=dtype, device=x.device)
    if out.numel() == 0:
        return out
    block_d = _block_d(d)
    block_r, warps = _row_tile(block_d)
    grid = (triton.cdiv(b * k, block_r), triton.cdiv(d, block_d))
    _gather_fwd_kernel[grid](
        x, ids, pos if pos is not None else x, out, b * k, k, l, d,
        HAS_POS=pos is not None, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=warps,
    )
    return out


def gather_bwd(g, ids, x_shape, x_dtype, pos_dtype, need_dx: bool, need_dpos: bool, rows_per_program: int | None = None):
    """g [B, K, D] -> (dx [B, L, D] or None, dpos [L, D] or None).

    ``rows_per_program`` overrides the batch chunking heuristic (tests use it to cover the loop).
    """
    b, l, d = x_shape
    k = ids.shape[1]
    g = g.contiguous()
    slot = _slots(ids, l)
    block_d, block_r, warps, n_d, rpp, chunks = _reduction_plan(b, l, d, rows_per_program)
    dx = torch.empty(x_shape, dtype=x_dtype, device=g.device) if need_dx else None
    part = torch.empty(chunks, l, d, dtype=torch.float32, device=g.device) if need_dpos else None
    _gather_bwd_kernel[(l, n_d, chunks)](
        g, slot, dx if need_dx else g, part if need_dpos else g, b, k, l, d, rpp,
        NEED_DX=need_dx, NEED_DPOS=need_dpos, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=warps,
    )
    dpos = part.sum(0).to(pos_dtype) if need_dpos else None
    return dx, dpos


class GatherTokens(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, ids, pos):
        x = x.contiguous()
        ids = ids.contiguous()
        posc = pos.contiguous() if pos is not None else None
        ctx.save_for_backward(ids)
        ctx.x_meta = (tuple(x.shape), x.dtype)
        ctx.pos_dtype = pos.dtype if pos is not None else None
        return gather_fwd(x, ids, posc)

    @staticmethod
    def backward(ctx, g):
        (ids,) = ctx.saved_tensors
        need_dx, _, need_dpos = ctx.needs_input_grad
        if not (need_dx or need_dpos):
            return None, None, None
        dx, dpos = gather_bwd(g, ids, *ctx.x_meta, ctx.pos_dtype, need_dx, bool(need_dpos))
        return dx, None, dpos


def gather_tokens(x: torch.Tensor, ids_keep: torch.Tensor, pos_embed: torch.Tensor | None = None) -> torch.Tensor:
    """Triton ``fastssl.ops.gather_tokens`` (shapes and maths in the module docstring)."""
    return GatherTokens.apply(x, ids_keep, pos_embed)


# ---------------------------------------------------------------------------------------------
# scatter
# ---------------------------------------------------------------------------------------------


@triton.jit
def _scatter_fwd_kernel(
    x_ptr, slot_ptr, mt_ptr, pos_ptr, out_ptr,
    n_rows, K, L, D,
    HAS_POS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # rows r = b·L + l of the output
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask = rows < n_rows
    cmask = cols < D
    m = rmask[:, None] & cmask[None, :]
    s = tl.load(slot_ptr + rows, mask=rmask, other=-1).to(tl.int64)
    kept = (s >= 0)[:, None]
    src = (rows // L) * K + s
    v = tl.load(x_ptr + src[:, None] * D + cols[None, :], mask=m & kept, other=0.0).to(tl.float32)
    mt = tl.load(mt_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    v = tl.where(kept, v, mt[None, :])
    if HAS_POS:
        l = rows % L
        v += tl.load(pos_ptr + l[:, None] * D + cols[None, :], mask=m, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows[:, None] * D + cols[None, :], v.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _scatter_bwd_kernel(
    g_ptr, slot_ptr, dx_ptr, dpos_part_ptr, dmt_part_ptr,
    B, K, L, D, rows_per_prog,
    NEED_DX: tl.constexpr, NEED_DPOS: tl.constexpr, NEED_DMT: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # program (l, D-block, chunk) reads g[b, l] once for b in its chunk and routes it:
    # kept -> dx[b, slot]; removed -> mask-token sum; always -> pos sum.
    l = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    chunk = tl.program_id(2)
    cmask = cols < D
    acc_pos = tl.zeros((BLOCK_D,), dtype=tl.float32)
    acc_mt = tl.zeros((BLOCK_D,), dtype=tl.float32)
    b_start = chunk * rows_per_prog
    for off in range(0, rows_per_prog, BLOCK_R):
        b = (b_start + off + tl.arange(0, BLOCK_R)).to(tl.int64)
        bmask = b < B
        m = bmask[:, None] & cmask[None, :]
        s = tl.load(slot_ptr + b * L + l, mask=bmask, other=-1).to(tl.int64)
        kept = s >= 0
        v = tl.load(g_ptr + (b * L + l)[:, None] * D + cols[None, :], mask=m, other=0.0).to(tl.float32)
        if NEED_DX:
            tl.store(dx_ptr + (b * K + s)[:, None] * D + cols[None, :], v.to(dx_ptr.dtype.element_ty), mask=m & kept[:, None])
        if NEED_DPOS:
            acc_pos += tl.sum(v, axis=0)
        if NEED_DMT:
            acc_mt += tl.sum(tl.where(kept[:, None], 0.0, v), axis=0)
    out = (chunk * L + l) * D + cols
    if NEED_DPOS:
        tl.store(dpos_part_ptr + out, acc_pos, mask=cmask)
    if NEED_DMT:
        tl.store(dmt_part_ptr + out, acc_mt, mask=cmask)


def scatter_fwd(x, ids, num_patches, mt, pos):
    """x [B, K, D], ids [B, K], mt [D], pos [L, D] or None -> (out [B, L, D], slot [B, L])."""
    b, k, d = x.shape
    dtype = torch.promote_types(x.dtype, mt.dtype)
    if pos is not None:
        dtype = torch.promote_types(dtype, pos.dtype)
    slot = _slots(ids, num_patches)
    out = torch.empty(b, num_patches, d, dtype=dtype, device=x.device)
    block_d = _block_d(d)
    block_r, warps = _row_tile(block_d)
    grid = (triton.cdiv(b * num_patches, block_r), triton.cdiv(d, block_d))
    _scatter_fwd_kernel[grid](
        x, slot, mt, pos if pos is not None else mt, out, b * num_patches, k, num_patches, d,
        HAS_POS=pos is not None, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=warps,
    )
    return out, slot


def scatter_bwd(g, slot, k, x_dtype, need_dx, need_dmt, need_dpos, rows_per_program: int | None = None):
    """g [B, L, D] -> (dx [B, K, D] or None, dmt fp32 [D] or None, dpos fp32 [L, D] or None).

    ``rows_per_program`` overrides the batch chunking heuristic (tests use it to cover the loop).
    """
    b, l, d = g.shape
    g = g.contiguous()
    block_d, block_r, warps, n_d, rpp, chunks = _reduction_plan(b, l, d, rows_per_program)
    dx = torch.empty(b, k, d, dtype=x_dtype, device=g.device) if need_dx else None
    part_pos = torch.empty(chunks, l, d, dtype=torch.float32, device=g.device) if need_dpos else None
    part_mt = torch.empty(chunks, l, d, dtype=torch.float32, device=g.device) if need_dmt else None
    _scatter_bwd_kernel[(l, n_d, chunks)](
        g, slot, dx if need_dx else g, part_pos if need_dpos else g, part_mt if need_dmt else g,
        b, k, l, d, rpp,
        NEED_DX=need_dx, NEED_DPOS=need_dpos, NEED_DMT=need_dmt, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=warps,
    )
    dpos = part_pos.sum(0) if need_dpos else None
    dmt = part_mt.sum((0, 1)) if need_dmt else None
    return dx, dmt, dpos


class ScatterTokens(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, ids, num_patches, mt, pos):
        x = x.contiguous()
        out, slot = scatter_fwd(
            x, ids.contiguous(), num_patches, mt.reshape(-1).contiguous(), pos.contiguous() if pos is not None else None
        )
        ctx.save_for_backward(slot)
        ctx.meta = (x.shape[1], x.dtype, mt.shape, mt.dtype, pos.dtype if pos is not None else None)
        return out

    @staticmethod
    def backward(ctx, g):
        (slot,) = ctx.saved_tensors
        k, x_dtype, mt_shape, mt_dtype, pos_dtype = ctx.meta
        need_dx, _, _, need_dmt, need_dpos = ctx.needs_input_grad
        if not (need_dx or need_dmt or need_dpos):
            return None, None, None, None, None
        dx, dmt, dpos = scatter_bwd(g, slot, k, x_dtype, need_dx, need_dmt, bool(need_dpos))
        dmt = dmt.reshape(mt_shape).to(mt_dtype) if dmt is not None else None
        dpos = dpos.to(pos_dtype) if dpos is not None else None
        return dx, None, None, dmt, dpos


def scatter_tokens(
    x: torch.Tensor, ids_keep: torch.Tensor, num_patches: int, mask_token: torch.Tensor, pos_embed: torch.Tensor | None = None
) -> torch.Tensor:
    """Triton ``fastssl.ops.scatter_tokens`` (shapes and maths in the module docstring)."""
    return ScatterTokens.apply(x, ids_keep, num_patches, mask_token, pos_embed)
