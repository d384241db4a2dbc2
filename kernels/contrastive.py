"""Fused contrastive rows (NT-Xent, DCL/DCLW, InfoNCE) without materialising the M×C logits.

The core every contrastive op in ``fastssl.ops.contrastive`` reduces to (eager twin:
``fastssl.ops.reference.contrastive_rows``):

    s[a, c]  = <rows[a], cols[c]> / τ                       rows [M, D], cols [C, D]
    loss[a]  = -w[a] · s[a, pos[a]] + LSE[a],   LSE[a] = log Σ_{c ∈ A(a)} exp(s[a, c])
    A(a)     = {0..C-1} minus excl[a] (when >= 0) minus pos[a] (when ``exclude_pos``, DCL)
    w        = pos_weight (a constant, DCLW) or 1

FlashAttention-2 layout. Everything is computed in base 2 (exp2/log2 are the native
instructions): t = s·log2(e), so ``qk_scale = log2(e)/τ`` and LSE = LSE₂·ln 2.

Forward (``_contrastive_fwd_kernel``, one program per BLOCK_M rows): stream the columns in
BLOCK_N tiles, keep per row a running max m and a running sum l = Σ exp2(t - m) (rescaled by
exp2(m_old - m_new) when the max grows); the positive logit is one row-wise dot with cols[pos[a]].
Stores loss [M] and LSE₂ [M] (fp32), nothing of size M×C: O(M) extra memory.

Backward, with g[a] = dloss[a] the per-row upstream gradient:
    P[a, c]  = exp2(t[a, c] - LSE₂[a]) for c ∈ A(a), else 0      (softmax, recomputed per tile)
    dS[a, c] = ∂(Σ g·loss)/∂s[a, c] = g[a] · (P[a, c] - w[a]·[c = pos[a]])
    dRows[a] = (1/τ) Σ_c dS[a, c] · cols[c]        (``_contrastive_bwd_rows_kernel``, row-parallel)
    dCols[c] = (1/τ) Σ_a dS[a, c] · rows[a]        (``_contrastive_bwd_cols_kernel``, column-parallel)
There is no "delta" term (FlashAttention's rowsum(dO·O)) because the loss is the LSE itself.
dCols gets its own column-parallel pass that recomputes P from the saved LSE instead of atomics
into dCols from the row pass: deterministic, idempotent under autotuning, and skipped entirely
when cols needs no grad (MoCo's momentum keys: no dK work).

Occupancy: one contrastive matrix has no batch/head axis to spread over the SMs, so each kernel
may also split its reduction loop (columns for the forward and dRows, rows for dCols) into
``splits`` chunks, the last grid axis, chosen by ``contrastive_tiles.split_plan`` so that a launch
has at least one full wave of programs (issue 21). The forward's partial (max, sum) pairs are
merged by ``_contrastive_lse_merge_kernel``; the backward's fp32 partial gradients are summed in a
fixed order and cast by ``_sum_cast_kernel`` (one pass): deterministic. Extra memory stays O(M)
in the forward and at most 64 MiB of partials in the backward.

Symmetric backward (``SYM``, rows is cols: single-process NT-Xent/DCL): dZ = (1/τ)(dS + dSᵀ)·Z in
one row-parallel pass, each score tile computed once for both of its terms (two matmuls per tile
instead of the four of dRows + dCols).

Launch path (issue 21): no autotuner on the hot path (one config per (kernel, dtype, D) from
``contrastive_tiles.fixed_config``; ``OPTIONS["autotune"]`` puts it back), grids as tuples from the
cached ``contrastive_tiles.geometry``, dloss read with its stride (no copy of ``.mean()``'s
expanded gradient), and ``unit_fwd`` / ``unit_bwd``: the ops' L2 normalisation in one launch each
way (``fastssl.ops.contrastive.OPTIONS["fused_unit"]``).

Queue mode (MoCo v2, ``queue_forward`` / ``queue_backward``, ``QUEUE``): cols is the queue [K, D] and
the positive of row a is keys[pos[a]], not among them. The forward takes t_pos from the same
row-wise fp32 dot it takes with cols[pos[a]] otherwise (keys_ptr is cols_ptr outside queue mode),
seeds split 0's running (max, sum) with (t_pos, 1) and streams the queue; excl is -1. dRows is the
row kernel with pos = -1 (P from the LSE₂ that includes the positive) plus, in its epilogue, the
positive's term g·(P_pos − 1)·keys[pos[a]] with P_pos = e^(−loss[a]) from the forward's loss; dCols
never runs (no gradient into the queue). No eager op or autograd node per call for the positives. M is small there (a GPU's share of the batch), so the column loop
is split like any other loop (``split_plan``: 2 row tiles × 66 splits at M = 256, K = 65,536).

Bytes: when rows and cols are one tensor the symmetric pass writes the whole gradient; with it
off (``OPTIONS["sym_bwd"]``) dCols is added onto dRows by the dCols kernel itself
(``ACCUMULATE``) or by the sum-and-cast pass: no autograd add of two [M, D] gradients.

Tiles: ``fastssl.kernels.contrastive_tiles`` lists the configs that fit sm_90's shared memory and
do not spill, per (dtype, D); tests/ops/test_kernel_aot.py compiles each for sm_90 and checks it.

D handling: BLOCK_D = next power of two of D, clamped to [16, 256]. When D <= BLOCK_D
(``ONE_D``) the program's own tile (rows for the forward and dRows, cols for dCols) is loaded once
and kept on chip for the whole column/row loop (Triton stages it in shared memory for wgmma), as
FlashAttention keeps Q. For D > 256 the
logits are accumulated over a loop of D-blocks, and the backward grids get a second axis over
D-blocks of the output, each output block recomputing the full logits: compute grows from 4 to
2 + 2·ceil(D/256) matmul-equivalents in the backward, which is the price of an fp32 accumulator
that fits in registers for any D (tested up to D = 1024).

Precision: products accumulate in fp32; bf16/fp16 tiles go to the tensor cores as they are and
dS is cast to the input dtype for the second matmul of each backward pass (as FlashAttention does
with P and dS); fp32 inputs use "tf32x3" (three TF32 passes, close to fp32 accuracy, still on
tensor cores). Under ``TRITON_INTERPRET=1`` (CPU tests) every tile is upcast to fp32 after the
load, because the interpreter's bf16 arithmetic is not faithful; outputs are cast on store; and
dS is rounded to the storage dtype explicitly (``_as_operand``, ``ROUND_TILES``) so that the CPU
tests check the rounding the tensor cores see.
Index arithmetic is int32 (pos/excl included): M·D and C·D must stay below 2³¹ elements.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os

import torch
import triton
import triton.language as tl

from fastssl.kernels import contrastive_tiles as tiles
from fastssl.kernels.launch import cdiv, constant, launch, next_pow2

# Read once, like ``triton.jit`` itself: TRITON_INTERPRET must be set before this import.
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_LN2 = math.log(2.0)
_LOG2E = 1.0 / _LN2
_SPLIT_GRAIN = 128  # the legacy split rule's chunks are multiples of this (``_legacy_split``)


OPTIONS = {
    # The autotuner over ``contrastive_tiles.launch_configs`` instead of the fixed table (one
    # config per (kernel, dtype, D)): FASTSSL_CONTRASTIVE_AUTOTUNE=1. Off by default: on the hot path it
    # hashes a key per call and benchmarks every config on the first call of each shape.
    "autotune": os.environ.get("FASTSSL_CONTRASTIVE_AUTOTUNE", "0") == "1",
    # Reduction-loop splits: "wave" (``contrastive_tiles.split_plan``: at least one full wave of
    # programs), "legacy" (main before issue 21: ~2 programs per SM in the forward, 1 in the
    # backward, at most 8 splits, counted on 64-row tiles) or "none".
    "split": os.environ.get("FASTSSL_CONTRASTIVE_SPLIT", "wave"),
    # rows is cols (single-process NT-Xent/DCL): one symmetric backward pass (``SYM``) instead of
    # dRows + dCols. FASTSSL_CONTRASTIVE_SYM=0 turns it off (before/after timing, bench --variants).
    "sym_bwd": os.environ.get("FASTSSL_CONTRASTIVE_SYM", "1") != "0",
    # Every score tile through the masked update, as main before mask-free tiles (``MASK_ALL``):
    # FASTSSL_CONTRASTIVE_MASK_ALL=1 (before/after timing, bench's triton[masked]).
    "mask_all": os.environ.get("FASTSSL_CONTRASTIVE_MASK_ALL", "0") == "1",
}


@functools.lru_cache(maxsize=None)
def _autotuned(kernel: str):
    """The autotuner of ``kernel`` (``OPTIONS["autotune"]`` only): the configs of
    ``fastssl.kernels.contrastive_tiles``, pruned per (dtype, D) at launch to those that fit sm_90's
    shared memory and do not spill. ``restore``: arguments the kernel reads and writes (dCols adds
    onto dRows), put back after each timed trial so that autotuning cannot change the result."""
    jit = {"fwd": _contrastive_fwd_kernel, "bwd_rows": _contrastive_bwd_rows_kernel,
           "bwd_sym": _contrastive_bwd_rows_kernel, "bwd_cols": _contrastive_bwd_cols_kernel}[kernel]
    restore = ["dcols_ptr"] if kernel == "bwd_cols" else None
    return triton.autotune(configs=tiles.all_configs(kernel), key=["M", "C", "D"], restore_value=restore,
                           prune_configs_by={"early_config_prune": tiles.pruner(kernel)})(jit)


# --------------------------------------------------------------------------------------------
# Tile helpers
# --------------------------------------------------------------------------------------------
@triton.jit
def _load_tile(ptr, offs, ok, stride, stride_d, d0, D, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr):
    """x[offs, d0:d0+BLOCK_D] as a [len(offs), BLOCK_D] tile, zero outside (rows past the end, D tail)."""
    offs_d = d0 + tl.arange(0, BLOCK_D)
    x = tl.load(ptr + offs[:, None] * stride + offs_d[None, :] * stride_d,
                mask=ok[:, None] & (offs_d < D)[None, :], other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _load_tile_t(ptr, offs, ok, stride, stride_d, d0, D, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr):
    """The same tile transposed, [BLOCK_D, len(offs)], loaded straight through the pointers."""
    offs_d = d0 + tl.arange(0, BLOCK_D)
    x = tl.load(ptr + offs[None, :] * stride + offs_d[:, None] * stride_d,
                mask=ok[None, :] & (offs_d < D)[:, None], other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _as_operand(x, ELEM: tl.constexpr, UPCAST: tl.constexpr, ROUND: tl.constexpr):
    """An fp32 tile (dS) as the operand of a second matmul, in the storage dtype ``ELEM``.

    On a GPU: a cast, the rounding the tensor cores see. In the interpreter the tiles were upcast, so
    the cast would be skipped and the bf16/fp16 rounding of dS never exercised; ``ROUND`` applies
    it explicitly and keeps fp32 (round-to-nearest-even: the interpreter's own bf16 cast truncates).
    """
    if UPCAST:
        y = x
        if ROUND:
            if ELEM == tl.bfloat16:
                b = x.to(tl.uint32, bitcast=True)
                y = ((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
            elif ELEM == tl.float16:
                y = x.to(tl.float16).to(tl.float32)
    else:
        y = x.to(ELEM)
    return y


@triton.jit
def _span(idx):
    """(lo, hi) of the non-negative entries of an index vector; (2³⁰, -1) when there are none: a
    range no tile meets. -1 marks "no column" (and the rows past the end load as -1)."""
    lo = tl.min(tl.where(idx >= 0, idx, 1 << 30), axis=0)
    hi = tl.max(idx, axis=0)
    return lo, hi


@triton.jit
def _meets(start, BLOCK: tl.constexpr, lo, hi):
    """Whether the tile [start, start + BLOCK) meets the range [lo, hi]."""
    return (start <= hi) & (start + BLOCK > lo)


@triton.jit
def _dot_loop(a_ptr, b_ptr, offs_a, offs_b, a_ok, b_ok, stride_a, stride_ad, stride_b, stride_bd, D,
              BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
              UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """<a[offs_a], b[offs_b]> as an fp32 [BLOCK_A, BLOCK_B] tile, accumulated over D-blocks (D > BLOCK_D)."""
    acc = tl.zeros([BLOCK_A, BLOCK_B], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        a = _load_tile(a_ptr, offs_a, a_ok, stride_a, stride_ad, d0, D, BLOCK_D, UPCAST)
        bt = _load_tile_t(b_ptr, offs_b, b_ok, stride_b, stride_bd, d0, D, BLOCK_D, UPCAST)
        acc = tl.dot(a, bt, acc, input_precision=PRECISION)
    return acc


# --------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------
@triton.jit
def _mask_scores(t, offs_n, col_ok, excl, excl_b):
    """The score tile with excluded columns and columns past the end set to -inf."""
    c = offs_n[None, :]
    allowed = col_ok[None, :] & (c != excl[:, None]) & (c != excl_b[:, None])
    return tl.where(allowed, t, float("-inf"))


@triton.jit
def _contrastive_fwd_kernel(
    rows_ptr, cols_ptr, keys_ptr, pos_ptr, excl_ptr, w_ptr, loss_ptr, lse_ptr, part_ptr,
    M, C, D, chunk, n_splits,
    stride_rm, stride_rd, stride_cm, stride_cd, stride_km, stride_kd,
    qk_scale,  # log2(e) / τ
    HAS_W: tl.constexpr, EXCLUDE_POS: tl.constexpr, ONE_D: tl.constexpr, SPLIT: tl.constexpr,
    QUEUE: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, MASK_ALL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Grid (row blocks, column splits). Program (i, s) covers columns [s·chunk, (s+1)·chunk).

    One split: stores loss and LSE₂. Several (``SPLIT``): stores its partial (m, l) in
    part[0, s], part[1, s] and, from split 0, the weighted positive w·t_pos in loss_ptr; the
    launcher merges them (LSE₂ = max_s m_s + log2 Σ_s l_s·2^(m_s - max)).
    The positive of row a is keys[pos[a]]: the columns themselves (keys_ptr = cols_ptr) except in
    ``QUEUE`` mode (MoCo v2): there the positive is a key outside the columns (the queue), and its
    logit enters the LSE as one extra term, seeded into split 0's running (max, sum) before the
    column loop; excl is all -1 then (pos is not masked: EXCLUDE_POS is off).
    """
    pid = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < M
    pos = tl.load(pos_ptr + offs_m, mask=row_ok, other=-1)
    excl = tl.load(excl_ptr + offs_m, mask=row_ok, other=-1)
    if EXCLUDE_POS:
        excl_b = pos
    else:
        excl_b = excl
    if ONE_D:
        r = _load_tile(rows_ptr, offs_m, row_ok, stride_rm, stride_rd, 0, D, BLOCK_D, UPCAST)
    # The positive logit t[a, pos[a]], as an O(BLOCK_M·D) row-wise dot with the gathered keys[pos[a]]
    # rather than a compare-select-sum over every tile of the main loop.
    if ONE_D:
        cp = _load_tile(keys_ptr, pos, row_ok, stride_km, stride_kd, 0, D, BLOCK_D, UPCAST)
        t_pos = tl.sum(r.to(tl.float32) * cp.to(tl.float32), axis=1)
    else:
        t_pos = tl.zeros([BLOCK_M], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            rd = _load_tile(rows_ptr, offs_m, row_ok, stride_rm, stride_rd, d0, D, BLOCK_D, UPCAST)
            cp = _load_tile(keys_ptr, pos, row_ok, stride_km, stride_kd, d0, D, BLOCK_D, UPCAST)
            t_pos += tl.sum(rd.to(tl.float32) * cp.to(tl.float32), axis=1)
    t_pos = t_pos * qk_scale

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max of t = s·log2(e)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running Σ exp2(t - m_i)
    if QUEUE:  # the positive's term exp2(t_pos - m) = 1 at m = t_pos, counted once (split 0)
        first = (offs_m * 0 + pid_s) == 0
        m_i = tl.where(first, t_pos, m_i)
        l_i = tl.where(first, 1.0, l_i)
    c_lo = pid_s * chunk
    c_hi = tl.minimum(C, c_lo + chunk)
    # Only the tiles that meet this row block's excluded columns, or the ragged end of the chunk,
    # need the masked update; the others take the plain one (``MASK_ALL``: every tile masked).
    e_lo, e_hi = _span(excl)
    b_lo, b_hi = _span(excl_b)
    for start_n in range(c_lo, c_hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < c_hi
        if ONE_D:
            ct = _load_tile_t(cols_ptr, offs_n, col_ok, stride_cm, stride_cd, 0, D, BLOCK_D, UPCAST)
            t = tl.dot(r, ct, input_precision=PRECISION)
        else:
            t = _dot_loop(rows_ptr, cols_ptr, offs_m, offs_n, row_ok, col_ok, stride_rm, stride_rd,
                          stride_cm, stride_cd, D, BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, PRECISION)
        # The branch yields the masked tile, not the (m, l) update: with the update in both branches
        # Triton 3.6's software pipeliner fails on this loop for 16-bit tiles (the GPU machine's
        # Triton; 3.7 compiles both). The plain path's SASS is the same either way (265 vs 264
        # instructions per tile under 3.7, bench/kernel_mix.py).
        if MASK_ALL or ((start_n + BLOCK_N > c_hi) | _meets(start_n, BLOCK_N, e_lo, e_hi)
                        | _meets(start_n, BLOCK_N, b_lo, b_hi)):
            t = _mask_scores(t, offs_n, col_ok, excl, excl_b)
        # The scale folds into the exponent's FMA; max(t)·scale = max(t·scale) exactly (scale > 0).
        m_new = tl.maximum(m_i, tl.max(t, axis=1) * qk_scale)
        # A row whose columns so far are all excluded keeps m = -inf; its shift must stay finite
        # (-inf - -inf is NaN). max with -FLT_MAX is m_new for any finite m_new: one FMNMX per row, no select.
        m_safe = tl.maximum(m_new, -3.4028234663852886e38)
        l_i = l_i * tl.exp2(m_i - m_safe) + tl.sum(tl.exp2(t * qk_scale - m_safe[:, None]), axis=1)
        m_i = m_new

    if HAS_W:
        w = tl.load(w_ptr + offs_m, mask=row_ok, other=0.0)
        t_pos = w * t_pos
    if SPLIT:
        tl.store(part_ptr + pid_s * M + offs_m, m_i, mask=row_ok)
        tl.store(part_ptr + (n_splits + pid_s) * M + offs_m, l_i, mask=row_ok)
        tl.store(loss_ptr + offs_m, t_pos, mask=row_ok & (pid_s == 0))
    else:
        lse2 = m_i + tl.log2(l_i)  # -inf only for a row with no allowed column at all
        tl.store(lse_ptr + offs_m, lse2, mask=row_ok)
        tl.store(loss_ptr + offs_m, (lse2 - t_pos) * 0.6931471805599453, mask=row_ok)


@triton.jit
def _contrastive_lse_merge_kernel(part_ptr, loss_ptr, lse_ptr, M, n_splits, BLOCK: tl.constexpr):
    """Merge the forward's split partials: LSE₂ = max_s m_s + log2 Σ_s l_s·2^(m_s - max).

    loss_ptr holds w·t_pos on entry and the loss on exit. One launch instead of a chain of eager ops.
    """
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < M
    m_i = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK], dtype=tl.float32)
    for sp in range(0, n_splits):
        m_s = tl.load(part_ptr + sp * M + offs, mask=ok, other=0.0)  # rows past M: a harmless (0, 1)
        l_s = tl.load(part_ptr + (n_splits + sp) * M + offs, mask=ok, other=1.0)
        m_new = tl.maximum(m_i, m_s)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # all -inf so far: no NaN
        l_i = l_i * tl.exp2(m_i - m_safe) + l_s * tl.exp2(m_s - m_safe)
        m_i = m_new
    lse2 = m_i + tl.log2(l_i)
    t_pos = tl.load(loss_ptr + offs, mask=ok, other=0.0)
    tl.store(lse_ptr + offs, lse2, mask=ok)
    tl.store(loss_ptr + offs, (lse2 - t_pos) * 0.6931471805599453, mask=ok)


# --------------------------------------------------------------------------------------------
# Backward: row-parallel dRows
# --------------------------------------------------------------------------------------------
@triton.jit
def _contrastive_bwd_rows_kernel(
    rows_ptr, cols_ptr, keys_ptr, pos_ptr, kpos_ptr, excl_ptr, w_ptr, lse_ptr, loss_ptr, dloss_ptr, drows_ptr,
    M, C, D, chunk,
    stride_rm, stride_rd, stride_cm, stride_cd, stride_km, stride_kd, stride_gs, stride_gm, stride_gd, stride_dl,
    qk_scale, inv_temp,
    HAS_W: tl.constexpr, EXCLUDE_POS: tl.constexpr, ONE_D: tl.constexpr, QUEUE: tl.constexpr,
    UPCAST: tl.constexpr, ROUND: tl.constexpr, PRECISION: tl.constexpr, SYM: tl.constexpr,
    MASK_ALL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dRows[a, d-block] = (1/τ) Σ_c dS[a, c] cols[c, d-block].

    Grid (row blocks, output D-blocks, column splits); split s sums columns [s·chunk, (s+1)·chunk)
    into drows[s] (fp32 partials summed by the launcher when there are several splits).

    ``SYM`` (rows and cols are one tensor Z, M = C: single-process NT-Xent/DCL): the whole
    gradient dZ = (1/τ)(dS + dSᵀ)·Z in this one pass. t[a, c] = t[c, a], so each score tile, computed
    once, gives both dS[a, c] (row a's softmax, LSE[a]) and dS[c, a] (row c's softmax, LSE[c],
    c's own pos/excl/g read as column vectors); their sum is the operand of the second matmul.
    Two matmuls per tile instead of the four of the dRows + dCols passes.
    ``stride_dl``: dloss's stride (0 for the expanded gradient of ``.mean()``: no copy).
    ``QUEUE`` (MoCo v2): pos is all -1 (no positive among the columns); the positive keys[kpos[a]]
    adds g·(P_pos − 1)·keys[kpos[a]] (split 0 only), with P_pos = 2^(t_pos − LSE₂) = e^(−loss[a]) read
    from the forward's loss (no second dot product, and no row tile held beside the accumulator).
    """
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < M
    pos = tl.load(pos_ptr + offs_m, mask=row_ok, other=-1)
    excl = tl.load(excl_ptr + offs_m, mask=row_ok, other=-1)
    if EXCLUDE_POS:
        excl_b = pos
    else:
        excl_b = excl
    lse2 = tl.load(lse_ptr + offs_m, mask=row_ok, other=0.0)
    g = tl.load(dloss_ptr + offs_m * stride_dl, mask=row_ok, other=0.0)  # upstream gradient per row
    gw = g
    if HAS_W:
        gw = g * tl.load(w_ptr + offs_m, mask=row_ok, other=0.0)
    d0_out = pid_d * BLOCK_D
    if ONE_D:
        r = _load_tile(rows_ptr, offs_m, row_ok, stride_rm, stride_rd, 0, D, BLOCK_D, UPCAST)

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    c_lo = pid_s * chunk
    c_hi = tl.minimum(C, c_lo + chunk)
    # Mask-free tiles, as in the forward: only tiles that meet this row block's excluded or positive
    # columns, or the chunk's ragged end, take the masked dS (``MASK_ALL``: every tile). The ragged
    # end: a column past it has a zero operand, but its unmasked P = 2^(-LSE₂) overflows for a row
    # with LSE₂ < -128 (τ below ~0.011 with unit rows, or no allowed column) and inf·0 is NaN.
    e_lo, e_hi = _span(excl)
    p_lo, p_hi = _span(pos)
    a0 = pid_m * BLOCK_M
    for start_n in range(c_lo, c_hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < c_hi
        ct = _load_tile_t(cols_ptr, offs_n, col_ok, stride_cm, stride_cd, d0_out, D, BLOCK_D, UPCAST)
        if ONE_D:
            t = tl.dot(r, ct, input_precision=PRECISION)
        else:
            t = _dot_loop(rows_ptr, cols_ptr, offs_m, offs_n, row_ok, col_ok, stride_rm, stride_rd,
                          stride_cm, stride_cd, D, BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, PRECISION)
        t = t * qk_scale
        special = ((start_n + BLOCK_N > c_hi) | _meets(start_n, BLOCK_N, e_lo, e_hi)
                   | _meets(start_n, BLOCK_N, p_lo, p_hi))
        if MASK_ALL or special:
            c = offs_n[None, :]
            allowed = col_ok[None, :] & (c != excl[:, None]) & (c != excl_b[:, None])
            p = tl.where(allowed, tl.exp2(t - lse2[:, None]), 0.0)
            ds = g[:, None] * p - tl.where(c == pos[:, None], gw[:, None], 0.0)
        else:
            ds = g[:, None] * tl.exp2(t - lse2[:, None])
        if SYM:  # + dS[c, a]: column c as an anchor row (its LSE, g, pos, excl), row a as its column
            pos_c = tl.load(pos_ptr + offs_n, mask=col_ok, other=-1)
            excl_c = tl.load(excl_ptr + offs_n, mask=col_ok, other=-1)
            lse_c = tl.load(lse_ptr + offs_n, mask=col_ok, other=0.0)
            g_c = tl.load(dloss_ptr + offs_n * stride_dl, mask=col_ok, other=0.0)
            # Masked where a column's excluded or positive row lies in this row block (the index
            # maps need not be involutions). Rows past M need no mask: their dZ is never stored.
            ec_lo, ec_hi = _span(excl_c)
            pc_lo, pc_hi = _span(pos_c)
            special_t = special | _meets(a0, BLOCK_M, ec_lo, ec_hi) | _meets(a0, BLOCK_M, pc_lo, pc_hi)
            if MASK_ALL or special_t:
                if EXCLUDE_POS:
                    excl_bc = pos_c
                else:
                    excl_bc = excl_c
                gw_c = g_c
                if HAS_W:
                    gw_c = g_c * tl.load(w_ptr + offs_n, mask=col_ok, other=0.0)
                a = offs_m[:, None]
                allowed_t = (col_ok[None, :] & row_ok[:, None] & (a != excl_c[None, :])
                             & (a != excl_bc[None, :]))
                p_t = tl.where(allowed_t, tl.exp2(t - lse_c[None, :]), 0.0)
                ds += g_c[None, :] * p_t - tl.where(a == pos_c[None, :], gw_c[None, :], 0.0)
            else:
                ds += g_c[None, :] * tl.exp2(t - lse_c[None, :])
        ds = _as_operand(ds, rows_ptr.dtype.element_ty, UPCAST, ROUND)
        acc = tl.dot(ds, tl.trans(ct), acc, input_precision=PRECISION)

    if QUEUE:  # the positive key, outside the columns: once per row (split 0), in fp32 before the cast
        kpos = tl.load(kpos_ptr + offs_m, mask=row_ok, other=0)
        p_pos = tl.exp(-tl.load(loss_ptr + offs_m, mask=row_ok, other=0.0))
        coef = tl.where(row_ok & (pid_s == 0), g * (p_pos - 1.0), 0.0)
        kp = _load_tile(keys_ptr, kpos, row_ok, stride_km, stride_kd, d0_out, D, BLOCK_D, UPCAST)
        acc += coef[:, None] * kp.to(tl.float32)

    offs_d = d0_out + tl.arange(0, BLOCK_D)
    tl.store(drows_ptr + pid_s * stride_gs + offs_m[:, None] * stride_gm + offs_d[None, :] * stride_gd,
             (acc * inv_temp).to(drows_ptr.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d < D)[None, :])


# --------------------------------------------------------------------------------------------
# Backward: column-parallel dCols (deterministic, no atomics)
# --------------------------------------------------------------------------------------------
@triton.jit
def _contrastive_bwd_cols_kernel(
    rows_ptr, cols_ptr, pos_ptr, excl_ptr, w_ptr, lse_ptr, dloss_ptr, dcols_ptr,
    M, C, D, chunk,
    stride_rm, stride_rd, stride_cm, stride_cd, stride_gs, stride_gm, stride_gd, stride_dl,
    qk_scale, inv_temp,
    HAS_W: tl.constexpr, EXCLUDE_POS: tl.constexpr, ONE_D: tl.constexpr,
    UPCAST: tl.constexpr, ROUND: tl.constexpr, PRECISION: tl.constexpr, ACCUMULATE: tl.constexpr,
    MASK_ALL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dCols[c, d-block] = (1/τ) Σ_a dS[a, c] rows[a, d-block].

    Grid (column blocks, output D-blocks, row splits); split s sums rows [s·chunk, (s+1)·chunk)
    into dcols[s]. ``ACCUMULATE`` (one split, rows and cols the same tensor): add onto what dcols
    already holds (dRows), so the two gradients leave the GPU as one tensor, without an extra add. Works on the transposed tile tᵀ[c, a] so that the per-row quantities (LSE, g,
    pos, excl) broadcast along axis 0 and the second matmul needs no transpose of dS.
    """
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_s = tl.program_id(2)
    n0 = pid_n * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    col_ok = offs_n < C
    d0_out = pid_d * BLOCK_D
    if ONE_D:
        cb = _load_tile(cols_ptr, offs_n, col_ok, stride_cm, stride_cd, 0, D, BLOCK_D, UPCAST)

    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    a_lo = pid_s * chunk
    a_hi = tl.minimum(M, a_lo + chunk)
    for start_m in range(a_lo, a_hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < a_hi
        pos = tl.load(pos_ptr + offs_m, mask=row_ok, other=-1)
        excl = tl.load(excl_ptr + offs_m, mask=row_ok, other=-1)
        if EXCLUDE_POS:
            excl_b = pos
        else:
            excl_b = excl
        lse2 = tl.load(lse_ptr + offs_m, mask=row_ok, other=0.0)
        g = tl.load(dloss_ptr + offs_m * stride_dl, mask=row_ok, other=0.0)
        gw = g
        if HAS_W:
            gw = g * tl.load(w_ptr + offs_m, mask=row_ok, other=0.0)
        rt = _load_tile_t(rows_ptr, offs_m, row_ok, stride_rm, stride_rd, d0_out, D, BLOCK_D, UPCAST)
        if ONE_D:
            tt = tl.dot(cb, rt, input_precision=PRECISION)  # [BLOCK_N, BLOCK_M]
        else:
            tt = _dot_loop(cols_ptr, rows_ptr, offs_n, offs_m, col_ok, row_ok, stride_cm, stride_cd,
                           stride_rm, stride_rd, D, BLOCK_N, BLOCK_M, BLOCK_D, UPCAST, PRECISION)
        tt = tt * qk_scale
        # Mask-free tiles: masked only where a row of this tile excludes or has its positive in this
        # column block, and in the ragged last column block (its columns past C are never stored,
        # but their unmasked 2^(-LSE₂) can overflow: no inf into the tensor cores). Rows past the
        # chunk need no mask: g = 0 and a zero operand.
        e_lo, e_hi = _span(excl)
        p_lo, p_hi = _span(pos)
        special = (n0 + BLOCK_N > C) | _meets(n0, BLOCK_N, e_lo, e_hi) | _meets(n0, BLOCK_N, p_lo, p_hi)
        if MASK_ALL or special:
            c = offs_n[:, None]
            allowed = col_ok[:, None] & (c != excl[None, :]) & (c != excl_b[None, :])
            pt = tl.where(allowed, tl.exp2(tt - lse2[None, :]), 0.0)
            dst = g[None, :] * pt - tl.where(c == pos[None, :], gw[None, :], 0.0)
        else:
            dst = g[None, :] * tl.exp2(tt - lse2[None, :])
        dst = _as_operand(dst, rows_ptr.dtype.element_ty, UPCAST, ROUND)
        acc = tl.dot(dst, tl.trans(rt), acc, input_precision=PRECISION)

    offs_d = d0_out + tl.arange(0, BLOCK_D)
    out_ptrs = dcols_ptr + pid_s * stride_gs + offs_n[:, None] * stride_gm + offs_d[None, :] * stride_gd
    out_ok = col_ok[:, None] & (offs_d < D)[None, :]
    acc = acc * inv_temp
    if ACCUMULATE:
        acc += tl.load(out_ptrs, mask=out_ok, other=0.0).to(tl.float32)
    tl.store(out_ptrs, acc.to(dcols_ptr.dtype.element_ty), mask=out_ok)


@triton.jit
def _sum_cast_kernel(part_ptr, out_ptr, n, n_splits, ACCUMULATE: tl.constexpr, BLOCK: tl.constexpr):
    """out[i] = cast(Σ_s part[s, i] (+ out[i] when ``ACCUMULATE``)), over the flat [splits, n] fp32 partials.

    The backward's split partials summed in a fixed order (deterministic), cast to the gradient's
    dtype and, for dCols of the tensor that was also the rows, added onto dRows: one read of the
    partials and one write, where torch needed a sum, a cast and autograd's add (three passes).
    """
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for sp in range(0, n_splits):
        acc += tl.load(part_ptr + sp * n + offs, mask=ok, other=0.0)
    if ACCUMULATE:
        acc += tl.load(out_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=ok)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------
# Interpreter only: round dS to the storage dtype before the second matmul as the GPU does
# (``_as_operand``). On by default; FASTSSL_INTERPRET_ROUND=0 turns it off (tests flip this attribute).
ROUND_TILES = os.environ.get("FASTSSL_INTERPRET_ROUND", "1") != "0"
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@functools.lru_cache(maxsize=None)
def launch_flags(dtype: str, d: int, *, has_w: bool, exclude_pos: bool) -> dict:
    """The constexpr flags a launch uses for tiles of ``dtype`` ('fp32'/'bf16'/'fp16') and feature size d.
    Cached (one dict per combination): callers unpack it, never mutate it."""
    block_d = tiles.block_d(d)
    return dict(
        HAS_W=has_w, EXCLUDE_POS=bool(exclude_pos), ONE_D=d <= block_d, UPCAST=_INTERPRET,
        PRECISION="tf32x3" if dtype == "fp32" else "tf32", BLOCK_D=block_d,
    )


def on_kernel_device(t: torch.Tensor) -> bool:
    """Whether the kernels can take ``t``: a CUDA tensor, or any under the interpreter. (The one
    device test of the launchers; ``bench/host_driver.py`` widens it to CPU tensors to time the host
    path without a GPU.)"""
    return t.is_cuda or _INTERPRET


def _device_guard(t: torch.Tensor):
    """Launch on ``t``'s GPU; a no-op (no device switch) when it is already the current one."""
    if t.is_cuda and t.device.index is not None and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _sms(device: torch.device) -> int | None:
    """SMs of ``device``; None in the interpreter (``contrastive_tiles.split_plan``'s CPU rule)."""
    if _INTERPRET or device.type != "cuda":
        return None
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def _legacy_split(sms: int, kernel: str, out: int, d_blocks: int, length: int, queue: bool) -> tuple[int, int]:
    """main before issue 21 (``OPTIONS["split"] = "legacy"``, for before/after timing only): ~2
    programs per SM in the forward and 1 in the backward counted on 64-row tiles, chunks multiples
    of 128, at most 8 splits (64 for MoCo v2's queue)."""
    per_sm = 2 if kernel == "fwd" else 1
    max_splits = 64 if queue and kernel in ("fwd", "bwd_rows") else 8
    grains = cdiv(length, _SPLIT_GRAIN)
    want = max(1, (per_sm * sms) // (cdiv(out, 64) * d_blocks))
    splits = max(1, min(max_splits, grains, want))
    chunk = cdiv(cdiv(length, splits), _SPLIT_GRAIN) * _SPLIT_GRAIN
    return cdiv(length, chunk), chunk


def plan(kernel: str, rows: torch.Tensor, m: int, c: int, d: int, queue: bool = False) -> tiles.Launch:
    """The launch of ``kernel`` ('fwd', 'bwd_rows', 'bwd_sym', 'bwd_cols') for these operands:
    ``contrastive_tiles.geometry`` (cached per shape), or the split rule ``OPTIONS["split"]`` names."""
    sms = _sms(rows.device)
    geo = tiles.geometry(kernel, _DTYPE_NAMES[rows.dtype], d, m, c, sms)
    mode = OPTIONS["split"]
    if mode == "wave" or sms is None:
        return geo
    length = m if kernel == "bwd_cols" else c
    if mode == "none":
        splits, chunk = 1, length
    else:
        out = c if kernel == "bwd_cols" else m
        splits, chunk = _legacy_split(sms, kernel, out, 1 if kernel == "fwd" else geo.grid[1], length, queue)
    return dataclasses.replace(geo, grid=geo.grid[:-1] + (splits,), splits=splits, chunk=chunk)


def _launch(kernel: str, geo: tiles.Launch, out_rows: int, args: tuple, consts: dict) -> None:
    """Launch ``kernel`` with the fixed tile of ``geo`` (or through its autotuner, whose grid then
    follows the config it picks; the split of the loop stays ``geo``'s)."""
    jit = _KERNELS[kernel]
    own = "BLOCK_N" if kernel == "bwd_cols" else "BLOCK_M"
    if OPTIONS["autotune"] and not _INTERPRET:
        rest = geo.grid[1:]
        _autotuned(kernel)[lambda meta: (cdiv(out_rows, meta[own]),) + rest](*args, **consts, MASK_ALL=OPTIONS["mask_all"])
        return
    launch(jit, geo.grid, *args, **consts, MASK_ALL=OPTIONS["mask_all"], BLOCK_M=geo.block_m, BLOCK_N=geo.block_n,
           num_warps=geo.warps, num_stages=geo.stages)


def forward(rows, cols, pos_idx, excl_idx, w, temperature, exclude_pos, keys=None):
    """loss [M] fp32 and LSE₂ [M] fp32. ``keys`` (queue mode): row a's positive is keys[pos_idx[a]],
    outside the columns; otherwise it is cols[pos_idx[a]]."""
    m, d = rows.shape
    c = cols.shape[0]
    queue = keys is not None
    keys = keys if queue else cols
    flags = launch_flags(_DTYPE_NAMES[rows.dtype], d, has_w=w is not None, exclude_pos=bool(exclude_pos))
    geo = plan("fwd", rows, m, c, d, queue=queue)
    splits = geo.splits
    loss = torch.empty(m, device=rows.device, dtype=torch.float32)  # holds w·t_pos when split
    lse2 = torch.empty(m, device=rows.device, dtype=torch.float32)
    part = torch.empty((2, splits, m), device=rows.device, dtype=torch.float32) if splits > 1 else lse2
    args = (rows, cols, keys, pos_idx, excl_idx, w if w is not None else loss,
            loss, lse2, part, m, c, d, geo.chunk, splits, rows.stride(0), rows.stride(1), cols.stride(0),
            cols.stride(1), keys.stride(0), keys.stride(1), _LOG2E / temperature)
    with _device_guard(rows):
        _launch("fwd", geo, m, args, dict(SPLIT=splits > 1, QUEUE=queue, **flags))
        if splits > 1:
            launch(_contrastive_lse_merge_kernel, (cdiv(m, 1024),), part, loss, lse2, m, splits, BLOCK=1024)
    return loss, lse2


def _bwd(kernel, rows, cols, pos_idx, excl_idx, w, lse2, dloss, temperature, exclude_pos, *,
         onto: torch.Tensor | None = None, keys: torch.Tensor | None = None, kpos: torch.Tensor | None = None,
         loss: torch.Tensor | None = None, grad_scale: float = 1.0):
    """One backward pass, in the input dtype: ``kernel`` 'bwd_rows' (dRows [M, D], row-parallel),
    'bwd_sym' (rows is cols: the whole dZ [M, D]) or 'bwd_cols' (dCols [C, D], column-parallel).

    ``onto`` (dCols only; rows and cols are one tensor): add dCols onto this dRows in place and
    return it. One split: the kernel writes (or adds onto) the gradient itself. Several: fp32
    partials [splits, rows, D], then one ``_sum_cast_kernel`` pass sums, casts (and adds).
    ``dloss`` [M] fp32, any stride: the gradient of a mean arrives as its scalar expanded (stride 0)
    with ``grad_scale`` = 1/M, which the kernels fold into their final 1/τ (no division launch).
    ``keys``, ``kpos``, ``loss`` (dRows of the queue mode): row a's positive keys[kpos[a]], outside the
    columns, and the forward's loss (P_pos = e^(−loss)).
    """
    m, d = rows.shape
    c = cols.shape[0]
    for_cols = kernel == "bwd_cols"
    queue = keys is not None
    flags = launch_flags(_DTYPE_NAMES[rows.dtype], d, has_w=w is not None, exclude_pos=bool(exclude_pos))
    geo = plan(kernel, rows, m, c, d, queue=queue)
    splits = geo.splits
    out_rows = c if for_cols else m
    out = onto if onto is not None else torch.empty((out_rows, d), device=rows.device, dtype=(cols if for_cols else rows).dtype)
    dest = out if splits == 1 else torch.empty((splits, out_rows, d), device=rows.device, dtype=torch.float32)
    stride_s = dest.stride(0) if splits > 1 else 0
    if dloss.dtype != torch.float32:
        dloss = dloss.float()
    w = w if w is not None else lse2
    tail = (stride_s, dest.stride(-2), dest.stride(-1), dloss.stride(0), _LOG2E / temperature, grad_scale / temperature)
    if for_cols:
        extra = dict(ACCUMULATE=onto is not None and splits == 1)
        args = (rows, cols, pos_idx, excl_idx, w, lse2, dloss, dest, m, c, d, geo.chunk,
                rows.stride(0), rows.stride(1), cols.stride(0), cols.stride(1), *tail)
    else:
        extra = dict(SYM=kernel == "bwd_sym", QUEUE=queue)
        keys, kpos, loss = (keys, kpos, loss) if queue else (cols, pos_idx, lse2)
        args = (rows, cols, keys, pos_idx, kpos, excl_idx, w, lse2, loss, dloss, dest, m, c, d, geo.chunk,
                rows.stride(0), rows.stride(1), cols.stride(0), cols.stride(1), keys.stride(0), keys.stride(1), *tail)
    with _device_guard(rows):
        _launch(kernel, geo, out_rows, args, dict(ROUND=_INTERPRET and ROUND_TILES, **extra, **flags))
        if splits > 1:
            n = out_rows * d
            launch(_sum_cast_kernel, (cdiv(n, 1024),), dest, out, n, splits, ACCUMULATE=onto is not None,
                   BLOCK=1024)
    return out


def _bwd_rows(*args, keys=None, kpos=None, loss=None, grad_scale=1.0):
    return _bwd("bwd_rows", *args, keys=keys, kpos=kpos, loss=loss, grad_scale=grad_scale)


def _bwd_cols(*args, onto=None, grad_scale=1.0):
    return _bwd("bwd_cols", *args, onto=onto, grad_scale=grad_scale)


def backward(rows, cols, pos_idx, excl_idx, w, lse2, dloss, temperature, exclude_pos,
             need_rows: bool, need_cols: bool, same: bool, grad_scale: float = 1.0):
    """(dRows or None, dCols or None) of grad_scale·Σ_a dloss[a]·loss[a]. ``same`` (rows is cols): the
    whole gradient in the dRows slot, from the symmetric pass (``OPTIONS["sym_bwd"]``) or from dCols
    added onto dRows. The launcher behind the ``fastssl::contrastive_rows_bwd`` op (``fastssl.ops.contrastive``)."""
    args = (rows, cols, pos_idx, excl_idx, w, lse2, dloss, temperature, exclude_pos)
    if same:
        if OPTIONS["sym_bwd"]:
            return _bwd("bwd_sym", *args, grad_scale=grad_scale), None
        return _bwd_cols(*args, onto=_bwd_rows(*args, grad_scale=grad_scale), grad_scale=grad_scale), None
    drows = _bwd_rows(*args, grad_scale=grad_scale) if need_rows else None
    dcols = _bwd_cols(*args, grad_scale=grad_scale) if need_cols else None  # no dK work for momentum keys
    return drows, dcols


# --------------------------------------------------------------------------------------------
# Row L2-normalisation (the ops' ``_unit``) in one launch each way
# --------------------------------------------------------------------------------------------
_UNIT_EPS = 1e-12  # F.normalize's default
_UNIT_MAX_D = 4096


@triton.jit
def _to_storage(x, ptr, RNE: tl.constexpr):
    """An fp32 tile in ``ptr``'s element type, rounded to nearest even. ``RNE`` (the interpreter,
    whose bf16 cast truncates): round explicitly first (``_as_operand``), so the cast is exact."""
    if RNE:
        x = _as_operand(x, ptr.dtype.element_ty, True, True)
    return x.to(ptr.dtype.element_ty)


@triton.jit
def _unit_fwd_kernel(x1_ptr, x2_ptr, y_ptr, rn_ptr, N1, N, D, stride_x1, stride_x2, stride_y, EPS: tl.constexpr,
                     RNE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """y = x / max(‖x‖, EPS) per row, computed in fp32, stored in y's dtype; rn = 1 / max(‖x‖, EPS).
    x = [x1; x2] (rows < N1 from x1, the rest from x2): the two views' concatenation without a copy."""
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    ok = (offs_r < N)[:, None] & (offs_d < D)[None, :]
    first = (offs_r < N1)[:, None]
    x = tl.load(x1_ptr + offs_r[:, None] * stride_x1 + offs_d[None, :], mask=ok & first, other=0.0).to(tl.float32)
    x += tl.load(x2_ptr + (offs_r - N1)[:, None] * stride_x2 + offs_d[None, :], mask=ok & ~first, other=0.0).to(tl.float32)
    denom = tl.maximum(tl.sqrt(tl.sum(x * x, axis=1)), EPS)
    tl.store(y_ptr + offs_r[:, None] * stride_y + offs_d[None, :], _to_storage(x / denom[:, None], y_ptr, RNE),
             mask=ok)
    tl.store(rn_ptr + offs_r, 1.0 / denom, mask=offs_r < N)


@triton.jit
def _unit_bwd_kernel(x1_ptr, x2_ptr, dy_ptr, rn_ptr, dx1_ptr, dx2_ptr, N1, N, D, stride_x1, stride_x2, stride_dy,
                     stride_dx1, stride_dx2, EPS: tl.constexpr, RNE: tl.constexpr, BLOCK_R: tl.constexpr,
                     BLOCK_D: tl.constexpr):
    """dx of y = x / max(‖x‖, EPS): (dy − u·(u·dy)) / ‖x‖ with u = x / ‖x‖; dy / EPS where clamped.
    Rows < N1 belong to x1 (gradient into dx1), the rest to x2 (into dx2)."""
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    ok = (offs_r < N)[:, None] & (offs_d < D)[None, :]
    first = (offs_r < N1)[:, None]
    x = tl.load(x1_ptr + offs_r[:, None] * stride_x1 + offs_d[None, :], mask=ok & first, other=0.0).to(tl.float32)
    x += tl.load(x2_ptr + (offs_r - N1)[:, None] * stride_x2 + offs_d[None, :], mask=ok & ~first, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offs_r[:, None] * stride_dy + offs_d[None, :], mask=ok, other=0.0).to(tl.float32)
    rn = tl.load(rn_ptr + offs_r, mask=offs_r < N, other=0.0)
    u = x * rn[:, None]
    proj = tl.sum(u * dy, axis=1)
    clamped = tl.sqrt(tl.sum(x * x, axis=1)) < EPS
    dx = tl.where(clamped[:, None], dy, dy - u * proj[:, None]) * rn[:, None]
    tl.store(dx1_ptr + offs_r[:, None] * stride_dx1 + offs_d[None, :], _to_storage(dx, dx1_ptr, RNE), mask=ok & first)
    tl.store(dx2_ptr + (offs_r - N1)[:, None] * stride_dx2 + offs_d[None, :], _to_storage(dx, dx2_ptr, RNE),
             mask=ok & ~first)


def _unit_tile(d: int) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_D): whole rows, ~4096 elements per program (16 rows at D = 256)."""
    block_d = next_pow2(d)
    return max(1, min(64, 4096 // block_d)), block_d


def unit_takes(x: torch.Tensor, x2: torch.Tensor | None = None) -> bool:
    """Whether ``unit_fwd`` takes these operands: x [n, D] (and x2 [n2, D]) with 0 < D <= 4096, n > 0,
    one dtype of fp32/bf16/fp16 on one device, and a GPU or the interpreter."""
    if x.ndim != 2 or x.shape[0] == 0 or not 0 < x.shape[1] <= _UNIT_MAX_D:
        return False
    if x.dtype not in _DTYPE_NAMES or not on_kernel_device(x):
        return False
    return x2 is None or (x2.shape[1:] == x.shape[1:] and x2.dtype == x.dtype and x2.device == x.device)


def unit_fwd(x1: torch.Tensor, x2: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """[x1; x2] (x2 may be None; unit stride along D, ``unit_takes``) -> (y [n1 + n2, D] in their dtype,
    1/max(‖row‖, 1e-12) [n1 + n2] fp32): ``F.normalize(torch.cat([x1, x2]).float()).to(dtype)``
    without the concatenation's copy and its own launch."""
    n1, d = x1.shape
    second = x2 if x2 is not None else x1
    n = n1 + (x2.shape[0] if x2 is not None else 0)
    block_r, block_d = _unit_tile(d)
    y = torch.empty((n, d), device=x1.device, dtype=x1.dtype)
    rn = torch.empty(n, device=x1.device, dtype=torch.float32)
    with _device_guard(x1):
        launch(_unit_fwd_kernel, (cdiv(n, block_r),), x1, second, y, rn, n1, n, d, x1.stride(0),
               second.stride(0), y.stride(0), EPS=_UNIT_EPS, RNE=_INTERPRET, BLOCK_R=block_r, BLOCK_D=block_d)
    return y, rn


def unit_bwd(x1: torch.Tensor, x2: torch.Tensor | None, rn: torch.Tensor,
             dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(dx1, dx2 or None) of ``unit_fwd`` from dy [n1 + n2, D] and its saved inputs and ``rn``."""
    n1, d = x1.shape
    second = x2 if x2 is not None else x1
    n = rn.shape[0]
    block_r, block_d = _unit_tile(d)
    if dy.stride(-1) != 1:
        dy = dy.contiguous()
    dx1 = torch.empty_like(x1, memory_format=torch.contiguous_format)
    dx2 = torch.empty_like(second, memory_format=torch.contiguous_format) if x2 is not None else dx1
    with _device_guard(x1):
        launch(_unit_bwd_kernel, (cdiv(n, block_r),), x1, second, dy, rn, dx1, dx2, n1, n, d, x1.stride(0),
               second.stride(0), dy.stride(0), dx1.stride(0), dx2.stride(0), EPS=_UNIT_EPS, RNE=_INTERPRET,
               BLOCK_R=block_r, BLOCK_D=block_d)
    return dx1, (dx2 if x2 is not None else None)


_KERNELS = {"fwd": _contrastive_fwd_kernel, "bwd_rows": _contrastive_bwd_rows_kernel,
            "bwd_sym": _contrastive_bwd_rows_kernel, "bwd_cols": _contrastive_bwd_cols_kernel}


def _check_operands(rows: torch.Tensor, cols: torch.Tensor, name: str) -> None:
    """What every launcher needs of rows [M, D] and its column operand (``name``: cols or queue):
    non-empty, one dtype of fp32/bf16/fp16, one device, and CUDA unless the interpreter runs."""
    if rows.shape[0] == 0 or cols.shape[0] == 0 or rows.shape[1] == 0:
        raise ValueError(f"empty input: rows {tuple(rows.shape)}, {name} {tuple(cols.shape)}")
    if rows.dtype != cols.dtype or rows.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"rows and {name} must share one dtype of fp32/bf16/fp16, got {rows.dtype} and {cols.dtype}")
    if rows.device != cols.device:
        raise ValueError(f"rows and {name} are on different devices: {rows.device} and {cols.device}")
    if not on_kernel_device(rows):
        raise ValueError("the Triton backend needs CUDA tensors (on CPU set TRITON_INTERPRET=1 before importing "
                         "fastssl.kernels, or use backend='reference')")


def _as_index(idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    if idx.dtype == torch.int32 and idx.device == device and idx.is_contiguous():
        return idx
    return idx.to(device=device, dtype=torch.int32).contiguous()


def prepare(rows, cols, pos_idx, excl_idx, temperature, pos_weight):
    """Checks of the contrastive-rows contract (``fastssl.ops.reference.contrastive_rows``: rows [M, D],
    cols [C, D] of one dtype of fp32/bf16/fp16 and one device, any strides; int indices [M], excl -1 =
    none, trusted, not range-checked, to avoid a device sync; pos_weight [M] or None, a constant).
    Returns (pos_idx, excl_idx int32, pos_weight fp32 or None) as ``forward`` and ``backward`` read them."""
    if rows.ndim != 2 or cols.ndim != 2 or rows.shape[1] != cols.shape[1]:
        raise ValueError(f"rows must be [M, D] and cols [C, D], got {tuple(rows.shape)} and {tuple(cols.shape)}")
    _check_operands(rows, cols, "cols")
    m = rows.shape[0]
    if pos_idx.shape != (m,) or excl_idx.shape != (m,):
        raise ValueError(f"pos_idx and excl_idx must be [{m}], got {tuple(pos_idx.shape)} and {tuple(excl_idx.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    # int32: the kernels compare every column index of a tile with these; 64-bit compares cost two
    # instructions each in the innermost loop (index arithmetic is int32 anyway, see the docstring).
    # Already-int32 contiguous indices on the device (the ops build them so) skip the calls: each
    # is host time a small loss pays.
    pos_idx, excl_idx = _as_index(pos_idx, rows.device), _as_index(excl_idx, rows.device)
    if pos_weight is not None:
        pos_weight = pos_weight.detach().to(device=rows.device, dtype=torch.float32).reshape(m).contiguous()
    return pos_idx, excl_idx, pos_weight


def check_queue(rows: torch.Tensor, keys: torch.Tensor, pos_idx: torch.Tensor, queue: torch.Tensor,
                temperature: float) -> None:
    """Checks of the queue-rows contract (``fastssl.ops.reference.queue_rows``): rows [M, D] and queue
    [K, D] of one dtype of fp32/bf16/fp16 and one device, keys [N, D] any float dtype, pos_idx int [M]."""
    if rows.ndim != 2 or queue.ndim != 2 or keys.ndim != 2 or not rows.shape[1] == queue.shape[1] == keys.shape[1]:
        raise ValueError(f"rows [M, D], keys [N, D] and queue [K, D] must share D, got {tuple(rows.shape)}, "
                         f"{tuple(keys.shape)} and {tuple(queue.shape)}")
    _check_operands(rows, queue, "queue")
    if keys.device != rows.device or not keys.is_floating_point():
        raise ValueError(f"keys must be a float tensor on the rows' device {rows.device}, got {keys.dtype} on {keys.device}")
    if pos_idx.shape != (rows.shape[0],):
        raise ValueError(f"pos_idx must be [{rows.shape[0]}], got {tuple(pos_idx.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _no_index(rows: torch.Tensor) -> torch.Tensor:
    """int32 [M] of -1 (no positive / excluded column), made once per (M, device): a fill launch less
    per call; read only."""
    m, device = rows.shape[0], rows.device
    return constant(("no_index", m, device), lambda: torch.full((m,), -1, device=device, dtype=torch.int32))


def queue_forward(rows: torch.Tensor, keys: torch.Tensor, pos_idx: torch.Tensor, queue: torch.Tensor,
                  temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss [M] fp32, LSE₂ [M] fp32) with loss[a] = LSE(t_pos, rows·queueᵀ/τ) − t_pos,
    t_pos = <rows[a], keys[pos_idx[a]]>/τ (an fp32 row-wise dot in the kernel): the forward in queue
    mode (``QUEUE``). pos_idx int32 [M]."""
    return forward(rows, queue, pos_idx, _no_index(rows), None, temperature, False, keys=keys)


def queue_backward(rows: torch.Tensor, keys: torch.Tensor, pos_idx: torch.Tensor, queue: torch.Tensor,
                   loss: torch.Tensor, lse2: torch.Tensor, dloss: torch.Tensor, temperature: float,
                   grad_scale: float = 1.0) -> torch.Tensor:
    """dRows of grad_scale·Σ_a dloss[a]·loss[a]: the row kernel over the queue (P from the LSE₂ that includes
    the positive; no positive among the columns) plus, in its epilogue, the positive's term
    g·(P_pos − 1)·keys[pos_idx[a]]/τ, P_pos = e^(−loss[a]) (``loss``: the forward's). The queue gets
    no gradient; the keys' (O(M·D)) is the op's."""
    none = _no_index(rows)
    return _bwd_rows(rows, queue, none, none, None, lse2, dloss, temperature, False, keys=keys, kpos=pos_idx, loss=loss,
                     grad_scale=grad_scale)
