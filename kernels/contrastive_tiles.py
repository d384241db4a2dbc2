"""Tile configurations of the contrastive kernels: which ones the autotuner may try, per (kernel, dtype, D).

Every kernel of ``fastssl.kernels.contrastive`` keeps one tile of its own ("own": the rows of the
forward and of dRows, the columns of dCols) for the whole loop and streams the other side
("stream") through ``num_stages`` pipelined shared-memory buffers. A config is written here as
(own, stream, warps, stages) and mapped onto BLOCK_M / BLOCK_N per kernel.

Rules, each from the sm_90 compile reports of ``tests/ops/_kernel_aot.py`` (table in
notes/contrastive.md):
- **own = 64 × warpgroups.** A Hopper warpgroup (4 warps) issues wgmma on 64-row slices of the
  first matmul (scores = own · streamᵀ). With 8 warps on a 64-row own tile both warpgroups compute
  the same scores (twice the wgmma of the forward); with 128 rows each computes its half.
- **Shared memory.** Triton stages the own tile once and ``stages`` buffers of the streamed tile:
  (own + stages·stream)·BLOCK_D elements; on the D-loop path (D > 256) both tiles are pipelined,
  stages·(own + stream)·BLOCK_D, and the backward adds one streamed tile of the output D-block. Per
  element 2 bytes for bf16/fp16 and, for fp32, 8: an upper bound of the 6–8 measured (tf32x3 stages
  split copies of the fp32 operands, and one-stage configs still get two buffers), plus layout-conversion scratch (measured up to 3.6 KB in dCols, 0.5 KB elsewhere).
  Configs over the sm_90 block limit (227 KB) are pruned, so fp32 at D = 256 and 512 still has
  configs that launch. tests/ops/test_kernel_aot.py checks this estimate against every compile.
- **No spills in the backward.** The backward's fp32 accumulator [own, BLOCK_D] takes own·BLOCK_D /
  (32·warps) = 128 registers per thread at BLOCK_D = 256, and the scores of the streamed tile,
  their mask and the per-row vectors come on top: at BLOCK_D = 256 both backward kernels stream
  32 (64 spilled 20–256 bytes in dRows and dCols, 128 more), and they never stream 128 (dCols
  spilled 300–480 bytes at every D). The symmetric pass (dS + dSᵀ, two sets of per-row vectors)
  takes 8 warps at 16 bits and 128 <= D <= 256: with one warpgroup it spilled 12–28 bytes at 255
  registers under Triton 3.6, the GPU machine's (3.7 did not). fp32 and the D-loop path (D > 256),
  which this rule does not cover (both spill), fit only 4-warp tiles in shared memory.
The first config that survives pruning is the one the launchers use (``fixed_config``): no
autotuner on the hot path (issue 21). ``FASTSSL_CONTRASTIVE_AUTOTUNE=1`` puts the autotuner back
over ``launch_configs``; ``FASTSSL_TRITON_AUTOTUNE=0`` narrows that list to the first config.

Launch geometry (``split_plan``, ``geometry``): pure functions of the shapes and the SM count, so the
CPU tests can check the grid a GPU launch would get (one full wave of programs at every benchmarked
shape) without a GPU.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import triton

from fastssl.kernels.launch import cdiv, next_pow2

SMEM_LIMIT = 232448  # bytes of shared memory per block on sm_90 (227 KB)
_SMEM_SCRATCH = {"bwd_cols": 4096, "bwd_sym": 4096}  # reductions and layout conversions; 1 KB for the other kernels
MAX_BLOCK_D = 256
KERNELS = ("fwd", "bwd_rows", "bwd_sym", "bwd_cols")  # bwd_sym: dRows + dCols of rows = cols in one pass

# (own, stream, warps, stages), best guess first. own = 64·warps/4 (one warpgroup per 64 own rows).
_SHAPES = {
    "fwd": ((128, 64, 8, 2), (64, 64, 4, 3), (128, 128, 8, 2), (64, 32, 4, 4)),
    "bwd": ((128, 64, 8, 2), (64, 64, 4, 3), (128, 32, 8, 3), (64, 32, 4, 4)),
}
# Used only where none of the above fits (fp32 at D >= 256): shallower pipelines of small tiles.
_FALLBACK = ((64, 32, 4, 2), (64, 32, 4, 1))


def block_d(d: int) -> int:
    """D-block: the whole (padded) D up to 256; tl.dot needs K >= 16."""
    return max(16, min(MAX_BLOCK_D, next_pow2(d)))


def element_bytes(dtype: str) -> int:
    """Shared-memory bytes per staged tile element (fp32: an upper bound for tf32x3's split operands)."""
    return 8 if dtype == "fp32" else 2


def smem_need(kernel: str, own: int, stream: int, stages: int, bd: int, one_d: bool, dtype: str) -> int:
    """Estimated dynamic shared memory (bytes) of one ``kernel`` program (see the module docstring)."""
    if one_d:
        elems = (own + stages * stream) * bd
    elif stages == 1:  # no pipelining: one buffer per operand (measured far below this)
        elems = (own + stream) * bd
    else:
        elems = (stages * (own + stream) + (stream if kernel != "fwd" else 0)) * bd
    return elems * element_bytes(dtype) + _SMEM_SCRATCH.get(kernel, 1024)


def _allowed(kernel: str, shape: tuple[int, int, int, int], dtype: str, d: int) -> bool:
    own, stream, warps, stages = shape
    bd = block_d(d)
    if smem_need(kernel, own, stream, stages, bd, d <= bd, dtype) > SMEM_LIMIT:
        return False
    if kernel != "fwd" and bd >= 256 and stream > 32:  # see "No spills" above
        return False
    if kernel == "bwd_sym" and dtype != "fp32" and 128 <= bd and d <= bd and warps < 8:  # ditto
        return False
    return True


def _shapes(kernel: str) -> tuple:
    return _SHAPES["fwd" if kernel == "fwd" else "bwd"]


def _config(kernel: str, shape: tuple[int, int, int, int]) -> triton.Config:
    own, stream, warps, stages = shape
    bm, bn = (stream, own) if kernel == "bwd_cols" else (own, stream)
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)


def launch_configs(kernel: str, dtype: str, d: int) -> list[triton.Config]:
    """The configs the autotuner may pick for ``kernel`` ('fwd', 'bwd_rows', 'bwd_cols') on a GPU,
    for tiles of ``dtype`` ('fp32', 'bf16', 'fp16') and feature size ``d``; never empty.
    One config (the first) when ``FASTSSL_TRITON_AUTOTUNE=0``."""
    configs = [_config(kernel, s) for s in _shapes(kernel) if _allowed(kernel, s, dtype, d)]
    configs = configs or [_config(kernel, s) for s in _FALLBACK if _allowed(kernel, s, dtype, d)][:1]
    if not configs:
        raise ValueError(f"no {kernel} tile fits for {dtype} at D={d}")
    return configs[:1] if os.environ.get("FASTSSL_TRITON_AUTOTUNE", "1") == "0" else configs


def all_configs(kernel: str) -> list[triton.Config]:
    """Every config of ``kernel`` before pruning: the autotuner's list, pruned per launch."""
    return [_config(kernel, s) for s in _shapes(kernel) + _FALLBACK]


_DTYPE_NAMES = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}


def pruner(kernel: str):
    """``early_config_prune`` for the autotuner of ``kernel``: keep the configs ``launch_configs`` names."""

    def prune(configs, named_args, **kwargs):
        dtype = _DTYPE_NAMES[str(named_args["rows_ptr"].dtype)]
        keep = {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)
                for c in launch_configs(kernel, dtype, named_args["D"])}
        return [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in keep]

    return prune


@functools.lru_cache(maxsize=None)
def fixed_config(kernel: str, dtype: str, d: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) the launchers use for ``kernel`` without autotuning:
    the first config of ``launch_configs`` (the best guess of ``_SHAPES`` that fits). One table
    look-up per (kernel, dtype, D) per process; the autotuner's per-call key hashing and its
    first-call benchmark of every config are gone from the hot path."""
    shapes = [s for s in _shapes(kernel) if _allowed(kernel, s, dtype, d)]
    shapes = shapes or [s for s in _FALLBACK if _allowed(kernel, s, dtype, d)][:1]
    if not shapes:
        raise ValueError(f"no {kernel} tile fits for {dtype} at D={d}")
    cfg = _config(kernel, shapes[0])
    return cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.num_warps, cfg.num_stages


# Reduction-loop splits. The forward's partials are O(splits·M) floats; the backward's are fp32
# [splits, rows, D], so their count is capped by bytes (2^24 floats = 64 MiB) as well.
MAX_SPLITS = 128
MAX_PARTIAL_ELEMS = 1 << 24


def split_plan(tiles: int, length: int, block: int, sms: int | None, max_splits: int = MAX_SPLITS) -> tuple[int, int]:
    """(splits, chunk) for ``tiles`` programs that each loop over ``length`` in steps of ``block``.

    One contrastive matrix has no batch or head axis: its programs are its row (or column) tiles,
    64 at 2N = 8192 with 128-row tiles, 4 to 16 for a rank's rows against gathered columns, fewer
    than the 132 SMs of an H100/H200. Splitting the loop into chunks multiplies the programs. The
    choice minimises the modelled time ``waves · (iterations per chunk + 1)`` (the +1: a program's
    prologue/epilogue, i.e. its own tile and its partial output), among the splits that give at
    least one full wave of programs when any does (one program per SM: the kernels' registers and
    shared memory allow no second one). ``chunk`` need not be a multiple of ``block``: the kernels
    mask the last tile of each chunk. ``sms=None`` (the interpreter): two splits whenever the loop
    has more than one tile, so the CPU tests exercise the merges with a ragged chunk boundary.
    """
    steps = cdiv(length, block)
    if sms is None:
        splits = 2 if steps > 1 else 1
        chunk = cdiv(length, splits)
        return cdiv(length, chunk), chunk
    if tiles >= sms or steps == 1:
        return 1, length
    best = None
    for want in range(1, min(max_splits, steps) + 1):
        chunk = cdiv(length, want)
        splits = cdiv(length, chunk)
        programs = tiles * splits
        cost = cdiv(programs, sms) * (cdiv(chunk, block) + 1)
        key = (programs < sms, cost, splits)  # a full wave first, then the modelled time, then fewer partials
        if best is None or key < best[0]:
            best = (key, splits, chunk)
    return best[1], best[2]


@dataclass(frozen=True)
class Launch:
    """One kernel launch: tile config, grid and the split of its reduction loop."""

    kernel: str
    block_m: int
    block_n: int
    warps: int
    stages: int
    grid: tuple[int, ...]
    splits: int
    chunk: int

    @property
    def programs(self) -> int:
        n = 1
        for g in self.grid:
            n *= g
        return n


@functools.lru_cache(maxsize=4096)
def geometry(kernel: str, dtype: str, d: int, m: int, c: int, sms: int | None) -> Launch:
    """The launch of ``kernel`` for rows [m, d] against cols [c, d] on a GPU with ``sms`` SMs
    (None: the interpreter, which runs 64x64 tiles). Pure: the CPU tests call it with sms=132.

    fwd: grid (row tiles, column splits). bwd_rows / bwd_sym: (row tiles, D-blocks, column
    splits). bwd_cols: (column tiles, D-blocks, row splits).
    """
    bm, bn, warps, stages = (64, 64, 4, 1) if sms is None else fixed_config(kernel, dtype, d)
    bd = block_d(d)
    d_blocks = 1 if kernel == "fwd" else cdiv(d, bd)
    if kernel == "bwd_cols":
        out, length, own, step = c, m, bn, bm
    else:
        out, length, own, step = m, c, bm, bn
    tiles = cdiv(out, own) * d_blocks
    max_splits = MAX_SPLITS
    if kernel != "fwd":
        max_splits = max(1, min(MAX_SPLITS, MAX_PARTIAL_ELEMS // (out * d)))
    splits, chunk = split_plan(tiles, length, step, sms, max_splits)
    grid = (cdiv(out, own), splits) if kernel == "fwd" else (cdiv(out, own), d_blocks, splits)
    return Launch(kernel, bm, bn, warps, stages, grid, splits, chunk)
