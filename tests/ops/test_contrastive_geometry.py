"""Launch geometry of the contrastive kernels on a 132-SM GPU (H100 SXM / H200), checked on CPU.

``fastssl.kernels.contrastive_tiles.geometry`` is the grid a CUDA launch gets (the launchers call
it with the device's SM count); here it is called with 132 for every shape of
``bench/contrastive.py --quick``: each kernel the op runs there gets at least one full wave of
programs (issue 21: 2N = 8192 with 128-row tiles was 64 programs; a rank's 512 rows against
gathered columns, 4). And the split covers the loop exactly, within the partial-memory cap.
"""
from __future__ import annotations

import pytest
import triton

import fastssl.kernels.contrastive_tiles as tiles

SMS = 132
# (case, anchor rows M, columns C) of ``bench/contrastive.py --quick`` and the kernels each runs:
# square = rows is cols (forward + the symmetric backward); dist = gathered columns with grad
# (dRows and dCols); M-MoCo's 8 query chunks and MoCo v2's queue: keys/queue without grad (dRows only).
QUICK = ([("square", m, m) for m in (4096, 8192, 16384, 65536)]
         + [("dist", r, c) for r in (512, 1024, 2048) for c in (8192, 32768, 65536)]
         + [("mmoco", 8 * 1024, 1024), ("queue", 256, 65536), ("queue", 1024, 65536)])
KERNELS = {"square": ("fwd", "bwd_sym"), "dist": ("fwd", "bwd_rows", "bwd_cols"),
           "mmoco": ("fwd", "bwd_rows"), "queue": ("fwd", "bwd_rows")}
LAUNCHES = [(case, m, c, k) for case, m, c in QUICK for k in KERNELS[case]]


def _loop(kernel: str, m: int, c: int) -> int:
    return m if kernel == "bwd_cols" else c


@pytest.mark.parametrize("dtype,d", [("bf16", 256), ("bf16", 128), ("fp32", 256)])
@pytest.mark.parametrize("case,m,c,kernel", LAUNCHES, ids=[f"{a}-{m}x{c}-{k}" for a, m, c, k in LAUNCHES])
def test_quick_shapes_fill_one_wave(case, m, c, kernel, dtype, d):
    g = tiles.geometry(kernel, dtype, d, m, c, SMS)
    assert g.programs >= SMS, g
    length = _loop(kernel, m, c)
    assert g.splits == g.grid[-1] and g.splits * g.chunk >= length > (g.splits - 1) * g.chunk  # no empty split
    if kernel != "fwd" and g.splits > 1:  # fp32 partials [splits, rows, D]
        out = c if kernel == "bwd_cols" else m
        assert g.splits * out * d <= tiles.MAX_PARTIAL_ELEMS
    own = g.block_n if kernel == "bwd_cols" else g.block_m
    assert g.grid[0] == triton.cdiv(c if kernel == "bwd_cols" else m, own)
    assert (g.block_m, g.block_n, g.warps, g.stages) == tiles.fixed_config(kernel, dtype, d)


@pytest.mark.parametrize("tiles_,length,block", [(4, 8192, 64), (64, 8192, 32), (8, 65536, 32), (2, 65536, 64),
                                                 (1, 100, 64), (3, 5000, 32), (200, 4096, 64), (7, 64, 64)])
def test_split_plan_covers_the_loop(tiles_, length, block):
    splits, chunk = tiles.split_plan(tiles_, length, block, SMS)
    assert 1 <= splits <= tiles.MAX_SPLITS
    assert splits * chunk >= length > (splits - 1) * chunk
    if tiles_ >= SMS or length <= block:
        assert splits == 1
    elif tiles_ * triton.cdiv(length, block) >= SMS:  # a full wave is possible: it is taken
        assert tiles_ * splits >= SMS


def test_split_plan_prefers_whole_waves():
    """64 row tiles over 8192 columns: 2 splits (128 programs) is not a wave, 3 (192) would leave a
    second wave 45 % busy for the same per-program work as 4 (256): the plan takes 4."""
    assert tiles.split_plan(64, 8192, 32, SMS) == (4, 2048)
    assert tiles.split_plan(4, 8192, 64, SMS)[0] == 33  # 132 programs: one exact wave


def test_interpreter_rule_splits_in_two():
    """sms=None (Triton interpreter): two splits whenever the loop has more than one tile, with a
    ragged chunk boundary (the CPU tests then exercise the merges)."""
    assert tiles.split_plan(5, 258, 64, None) == (2, 129)
    assert tiles.split_plan(5, 64, 64, None) == (1, 64)
    g = tiles.geometry("fwd", "fp32", 40, 258, 258, None)
    assert (g.block_m, g.block_n, g.grid) == (64, 64, (5, 2))
