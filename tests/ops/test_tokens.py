"""random_masking, gather_tokens and scatter_tokens against float64 loop references.

Both backends: "reference" (eager torch) and "triton" (the kernels; on CPU they run in the Triton
interpreter, TRITON_INTERPRET=1 set by tests/conftest.py). Inputs are fresh random every run.
"""
from __future__ import annotations

import itertools
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _token_loops import (  # noqa: E402
    gather_grads_loop,
    gather_loop,
    mae_decoder_tokens,
    mae_encoder_tokens,
    scatter_grads_loop,
    scatter_loop,
)
from _helpers import backend_device as _device, ulp as _ulp  # noqa: E402

from fastssl.ops import gather_tokens, random_masking, scatter_tokens  # noqa: E402

BACKENDS = ["reference", "triton"]
# (B, L, D, mask_ratio): B = 1, odd L, odd D, D spanning several kernel D-blocks, a round case.
SHAPES = [(1, 7, 5, 0.5), (3, 9, 33, 0.75), (2, 49, 300, 0.75), (4, 16, 64, 0.5), (5, 13, 129, 0.25)]


def _ids(b, l, ratio):
    ids_keep, ids_restore, _ = random_masking(b, l, ratio)
    return ids_keep, ids_restore


def _leaf(t: torch.Tensor, dev: torch.device) -> torch.Tensor:
    return t.detach().to(dev).requires_grad_()


# ------------------------------------------------------------------------------------ masking


@pytest.mark.parametrize("b,l,ratio", [(1, 196, 0.75), (7, 196, 0.5), (3, 49, 0.75), (5, 9, 0.3), (2, 1, 0.0)])
def test_masking_shapes_and_consistency(b, l, ratio):
    ids_keep, ids_restore, mask = random_masking(b, l, ratio)
    k = int(l * (1 - ratio))
    assert ids_keep.shape == (b, k) and ids_restore.shape == (b, l) and mask.shape == (b, l)
    for row in range(b):
        keep = ids_keep[row].tolist()
        assert len(set(keep)) == k and all(0 <= i < l for i in keep)
        # ids_restore inverts the shuffle: kept patch ids_keep[k] sits at position k of the shuffle
        assert [int(ids_restore[row, i]) for i in keep] == list(range(k))
        assert sorted(ids_restore[row].tolist()) == list(range(l))
        # mask: 0 exactly at the kept positions
        expect = [0.0 if i in set(keep) else 1.0 for i in range(l)]
        assert mask[row].tolist() == expect


def test_masking_every_position_equally_often():
    b, l, ratio = 20000, 10, 0.7
    k = int(l * (1 - ratio))
    ids_keep, _, mask = random_masking(b, l, ratio)
    counts = torch.bincount(ids_keep.reshape(-1), minlength=l).double()
    p = k / l
    sd = math.sqrt(b * p * (1 - p))
    assert torch.all((counts - b * p).abs() < 5 * sd), counts
    assert torch.equal((1 - mask).sum(0).double(), counts)


def test_masking_uniform_over_subsets():
    # L=5, K=2: 10 subsets, each with probability 1/10; chi-square with 9 dof (p-value ~1e-6 at 45)
    b, l = 30000, 5
    ids_keep, _, _ = random_masking(b, l, 0.6)
    subsets = [tuple(sorted(r)) for r in ids_keep.tolist()]
    expected = b / math.comb(l, 2)
    chi2 = sum((subsets.count(s) - expected) ** 2 / expected for s in itertools.combinations(range(l), 2))
    assert chi2 < 45, chi2


def test_masking_reproducible_and_fresh():
    g1 = torch.Generator().manual_seed(123)
    g2 = torch.Generator().manual_seed(123)
    a = random_masking(4, 49, 0.75, generator=g1)
    b = random_masking(4, 49, 0.75, generator=g2)
    c = random_masking(4, 49, 0.75, generator=g1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    torch.manual_seed(7)
    d = random_masking(4, 49, 0.75)
    torch.manual_seed(7)
    e = random_masking(4, 49, 0.75)
    assert torch.equal(d[0], e[0])


def test_masking_rejects_bad_ratio():
    with pytest.raises(ValueError):
        random_masking(2, 10, 1.0)
    with pytest.raises(ValueError):
        random_masking(2, 3, 0.9)  # keeps no patch


# ------------------------------------------------------------------------------------ gather


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("b,l,d,ratio", SHAPES)
@pytest.mark.parametrize("with_pos", [True, False])
def test_gather_fp32_exact_forward_and_grads(backend, b, l, d, ratio, with_pos):
    dev = _device(backend)
    ids_keep, _ = _ids(b, l, ratio)
    x0, pos0 = torch.randn(b, l, d), torch.randn(l, d)
    x = _leaf(x0, dev)
    pos = _leaf(pos0, dev) if with_pos else None
    out = gather_tokens(x, ids_keep.to(dev), pos, backend=backend)
    ref = gather_loop(x0, ids_keep, pos0 if with_pos else None)
    assert out.dtype == torch.float32 and out.shape == (b, ids_keep.shape[1], d)
    # one fp32 addition (or none) per element: correctly rounded, so equal to the rounded fp64 value
    assert torch.equal(out.cpu(), ref.float())
    g = torch.randn(out.shape)
    out.backward(g.to(dev))
    dx_ref, dpos_ref = gather_grads_loop(g, ids_keep, l)
    assert torch.equal(x.grad.cpu(), dx_ref.float())  # a pure copy, zeros at removed positions
    if with_pos:
        torch.testing.assert_close(pos.grad.cpu().double(), dpos_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gather_matches_mae_encoder(backend):
    b, l, d, dev = 3, 49, 24, _device(backend)
    ids_keep, _ = _ids(b, l, 0.75)
    x, pos = torch.randn(b, l, d), torch.randn(l, d)
    out = gather_tokens(x.to(dev), ids_keep.to(dev), pos.to(dev), backend=backend)
    torch.testing.assert_close(out.cpu().double(), mae_encoder_tokens(x, ids_keep, pos))


@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gather_triton_batch_loop_and_chunks(dtype, fold, monkeypatch):
    """Backward with several batch rows per program and several chunks (the loop, the partials and
    their reduction: folded into the last program of each tile, or the separate reduce kernel), one
    chunk (dpos written directly), a ragged last chunk, dx / dpos alone."""
    import fastssl.kernels.tokens as T
    from fastssl.kernels.tokens import gather_bwd

    monkeypatch.setitem(T._OVERRIDE, "fold", fold)

    # D = 300: D-blocks of 128 with a ragged last one; L = 9: a ragged l-block. B = 13 is enough for
    # every chunking the test is about (many, ragged, two with a partial last, exactly one, more rows
    # than the batch); the interpreter's time grows with B (37 took ~4x as long for the same cases).
    b, l, d = 13, 9, 300
    ids_keep, _ = _ids(b, l, 0.5)
    g = torch.randn(b, ids_keep.shape[1], d).to(dtype)
    dx_ref, dpos_ref = gather_grads_loop(g, ids_keep, l)
    dev = _device("triton")
    for rpp in (1, 5, 12, 13, 100):  # 13 chunks, 3 (ragged), 2 (ragged), 1, 1
        for need_dx, need_dpos in ((True, True), (True, False), (False, True)):
            dx, dpos = gather_bwd(g.to(dev), ids_keep.to(dev), (b, l, d), dtype, torch.float32, need_dx, need_dpos,
                                  rows_per_program=rpp)
            assert (dx is None) == (not need_dx) and (dpos is None) == (not need_dpos)
            if need_dx:
                assert torch.equal(dx.cpu(), dx_ref.to(dtype))
            if need_dpos:
                torch.testing.assert_close(dpos.cpu().double(), dpos_ref, rtol=1e-5, atol=1e-5)


def test_triton_reductions_are_deterministic_and_reset_their_counters():
    """The batch reductions add no floats atomically (only arrival counts): the same call gives the
    same bits, folded or not, and the folded launches leave their arrival counters at zero."""
    import fastssl.kernels.tokens as T
    from fastssl.kernels.tokens import gather_bwd, scatter_bwd

    b, l, d = 23, 13, 40
    ids_keep, _ = _ids(b, l, 0.5)
    dev = _device("triton")
    ids_keep = ids_keep.to(dev)
    g = torch.randn(b, ids_keep.shape[1], d, device=dev)
    gs = torch.randn(b, l, d, device=dev)
    runs = []
    for fold in (True, True, False):
        T._OVERRIDE["fold"] = fold
        try:
            dpos = gather_bwd(g, ids_keep, (b, l, d), torch.float32, torch.float32, True, True, rows_per_program=3)[1]
            _, dmt, dpos2 = scatter_bwd(gs, ids_keep, torch.float32, torch.float32, torch.float32, True, True, True,
                                        rows_per_program=3)
        finally:
            T._OVERRIDE.pop("fold")
        runs.append((dpos, dmt, dpos2))
    for a, c in zip(runs[0], runs[1]):
        assert torch.equal(a, c)
    for cnt in T._COUNTERS.values():
        assert int(cnt.abs().sum()) == 0


# ------------------------------------------------------------------------------------ scatter


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("b,l,d,ratio", SHAPES)
@pytest.mark.parametrize("with_pos", [True, False])
def test_scatter_fp32_exact_forward_and_grads(backend, b, l, d, ratio, with_pos):
    dev = _device(backend)
    ids_keep, _ = _ids(b, l, ratio)
    k = ids_keep.shape[1]
    x0, mt0, pos0 = torch.randn(b, k, d), torch.randn(d), torch.randn(l, d)
    x, mt = _leaf(x0, dev), _leaf(mt0, dev)
    pos = _leaf(pos0, dev) if with_pos else None
    out = scatter_tokens(x, ids_keep.to(dev), l, mt, pos, backend=backend)
    ref = scatter_loop(x0, ids_keep, l, mt0, pos0 if with_pos else None)
    assert out.dtype == torch.float32 and out.shape == (b, l, d)
    assert torch.equal(out.cpu(), ref.float())
    g = torch.randn(out.shape)
    out.backward(g.to(dev))
    dx_ref, dmt_ref, dpos_ref = scatter_grads_loop(g, ids_keep)
    assert torch.equal(x.grad.cpu(), dx_ref.float())
    torch.testing.assert_close(mt.grad.cpu().double(), dmt_ref, rtol=1e-5, atol=1e-5)
    if with_pos:
        torch.testing.assert_close(pos.grad.cpu().double(), dpos_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scatter_matches_mae_decoder(backend):
    """Same values as MAE's append-mask-tokens + unshuffle(ids_restore); MAE's [1, 1, D] token."""
    b, l, d, dev = 3, 49, 24, _device(backend)
    ids_keep, ids_restore = _ids(b, l, 0.75)
    x, mt0, pos = torch.randn(b, ids_keep.shape[1], d), torch.randn(1, 1, d), torch.randn(l, d)
    mt = _leaf(mt0, dev)
    out = scatter_tokens(x.to(dev), ids_keep.to(dev), l, mt, pos.to(dev), backend=backend)
    torch.testing.assert_close(out.cpu().double(), mae_decoder_tokens(x, ids_restore, mt0, pos))
    out.sum().backward()
    assert mt.grad.shape == (1, 1, d)


@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scatter_triton_batch_loop_and_chunks(dtype, fold, monkeypatch):
    """Backward: chunk counts 37, 2 and 1, every subset of gradients (dx alone is a plain gather),
    partials folded by the last programs or summed by the reduce kernel."""
    import fastssl.kernels.tokens as T
    from fastssl.kernels.tokens import scatter_bwd

    monkeypatch.setitem(T._OVERRIDE, "fold", fold)

    b, l, d = 13, 9, 300  # B = 13: as in the gather test above, enough for every chunking below
    ids_keep, _ = _ids(b, l, 0.5)
    g = torch.randn(b, l, d).to(dtype)
    dx_ref, dmt_ref, dpos_ref = scatter_grads_loop(g, ids_keep)
    dev = _device("triton")
    flags = list(itertools.product((True, False), repeat=3))[:-1]  # (dx, dmt, dpos), not all off
    for rpp in (1, 12, 100):  # 13 chunks, 2 chunks (a partial last one), 1 chunk
        for need_dx, need_dmt, need_dpos in flags:
            dx, dmt, dpos = scatter_bwd(g.to(dev), ids_keep.to(dev), dtype, torch.float32, torch.float32,
                                        need_dx, need_dmt, need_dpos, rows_per_program=rpp)
            assert (dx is None, dmt is None, dpos is None) == (not need_dx, not need_dmt, not need_dpos)
            if need_dx:
                assert torch.equal(dx.cpu(), dx_ref.to(dtype))
            if need_dmt:
                torch.testing.assert_close(dmt.cpu().double(), dmt_ref, rtol=1e-5, atol=1e-4)
            if need_dpos:
                torch.testing.assert_close(dpos.cpu().double(), dpos_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_round_trip_and_partial_grads(backend):
    """gather then scatter restores kept tokens; grads only for the inputs that ask for them."""
    b, l, d, dev = 2, 9, 16, _device(backend)
    ids_keep, _ = _ids(b, l, 0.5)
    x = torch.randn(b, l, d, device=dev)
    mt = torch.randn(d, device=dev)
    pos = torch.randn(l, d, device=dev, requires_grad=True)
    ids_keep = ids_keep.to(dev)
    out = scatter_tokens(gather_tokens(x, ids_keep, backend=backend), ids_keep, l, mt, backend=backend)
    kept = torch.zeros(b, l, dtype=torch.bool, device=dev)
    kept.scatter_(1, ids_keep, True)
    assert torch.equal(out[kept], x[kept]) and torch.equal(out[~kept], mt.expand(int((~kept).sum()), d))
    y = gather_tokens(x, ids_keep, pos, backend=backend)
    y.sum().backward()
    assert x.grad is None and pos.grad is not None


# ------------------------------------------------------------------------------------ bf16


def _within_rule(kernel, eager, ref64, parts=(), abs_sum=None, terms=0):
    """DESIGN.md: |kernel − fp64 ref| ≤ 2·|eager-same-dtype − fp64 ref| + atol, elementwise.

    atol = one ulp of the output dtype at |ref|: the Triton interpreter (3.7) truncates on
    fp32 -> bf16 stores where the GPU rounds to nearest, so the interpreted kernel may sit a
    whole ulp away from the fp64 value where eager torch sits half an ulp away. An output that
    autograd adds up from several kernel outputs (pos.grad = the gather's dpos + the scatter's)
    also gets one ulp of each part (``parts``: their fp64 values), since each was rounded alone.
    For an output that is a sum of ``terms`` values accumulated in fp32 (an fp32 dpos), atol
    adds the fp32 summation bound (terms − 1)·2⁻²⁴·Σ|values| (``abs_sum``): the kernel adds in
    its own order (a tree across rows on the GPU), eager in its own (sequentially over the batch
    on CPU); where eager's sum happens to be exact the two cannot be held to one ulp of the
    result. On CPU the interpreter's numpy sum over rows runs in eager's order, which is why this
    case failed only on CUDA (``test_bf16_rule[pos_dtype1]``: fp32 pos, hence an fp32 dpos).
    """
    err_k = (kernel.double() - ref64).abs()
    err_e = (eager.double() - ref64).abs()
    atol = _ulp(ref64, kernel.dtype)
    for part in parts:
        atol = atol + _ulp(part, kernel.dtype)
    if abs_sum is not None and kernel.dtype == torch.float32:
        atol = atol + max(terms - 1, 0) * 2.0**-24 * abs_sum
    bad = err_k > 2 * err_e + atol
    assert not bad.any(), f"{int(bad.sum())} elements over the bound; worst excess {(err_k - 2 * err_e - atol).max().item():.3g}"


@pytest.mark.parametrize("pos_dtype", [torch.bfloat16, torch.float32])
def test_bf16_rule(pos_dtype):
    b, l, d = 6, 13, 40
    ids_keep, _ = _ids(b, l, 0.5)
    k = ids_keep.shape[1]
    x = torch.randn(b, l, d, dtype=torch.bfloat16)
    pos = torch.randn(l, d, dtype=pos_dtype)
    mt = torch.randn(d, dtype=torch.bfloat16)
    xs = torch.randn(b, k, d, dtype=torch.bfloat16)
    results = {}
    for backend in BACKENDS:
        dev = _device(backend)
        leaves = [_leaf(t, dev) for t in (x, pos, mt, xs)]
        gx, gp, gm, gs = leaves
        y = gather_tokens(gx, ids_keep.to(dev), gp, backend=backend)
        z = scatter_tokens(gs, ids_keep.to(dev), l, gm, gp, backend=backend)
        torch.manual_seed(11)  # the same upstream gradients for both backends
        gy, gz = torch.randn(y.shape, dtype=y.dtype), torch.randn(z.shape, dtype=z.dtype)
        torch.autograd.backward([y, z], [gy.to(dev), gz.to(dev)])
        results[backend] = tuple(t.cpu() for t in (y, z, gx.grad, gp.grad, gm.grad, gs.grad))
    assert results["triton"][0].dtype == torch.promote_types(torch.bfloat16, pos_dtype)
    torch.manual_seed(11)
    gy = torch.randn(b, k, d, dtype=results["triton"][0].dtype)
    gz = torch.randn(b, l, d, dtype=results["triton"][1].dtype)
    refs = [
        gather_loop(x, ids_keep, pos),
        scatter_loop(xs, ids_keep, l, mt, pos),
        gather_grads_loop(gy, ids_keep, l)[0],
        gather_grads_loop(gy, ids_keep, l)[1] + scatter_grads_loop(gz, ids_keep)[2],
        scatter_grads_loop(gz, ids_keep)[1],
        scatter_grads_loop(gz, ids_keep)[0],
    ]
    # Σ|terms| of each reduced output: the same sums over |g| (dpos gathers 2·B terms per element)
    dpos_parts = (gather_grads_loop(gy, ids_keep, l)[1], scatter_grads_loop(gz, ids_keep)[2])
    dpos_abs = gather_grads_loop(gy.abs(), ids_keep, l)[1] + scatter_grads_loop(gz.abs(), ids_keep)[2]
    dmt_abs = scatter_grads_loop(gz.abs(), ids_keep)[1]
    extra = [{}, {}, {}, dict(parts=dpos_parts, abs_sum=dpos_abs, terms=2 * b), dict(abs_sum=dmt_abs, terms=b * (l - k)), {}]
    for kern, eager, ref, kw in zip(results["triton"], results["reference"], refs, extra):
        assert kern.dtype == eager.dtype
        _within_rule(kern, eager, ref, **kw)


def test_rejects_bad_shapes():
    x = torch.randn(2, 9, 8)
    ids_keep, _ = _ids(2, 9, 0.5)
    with pytest.raises(ValueError):
        gather_tokens(x, ids_keep, torch.randn(10, 8))  # pos with a CLS row
    with pytest.raises(ValueError):
        scatter_tokens(torch.randn(2, 4, 8), ids_keep, 9, torch.randn(7))
    with pytest.raises(ValueError):
        gather_tokens(x, ids_keep, backend="cuda")



def test_compiled_door_is_one_graph_and_matches_the_eager_door():
    """Under torch.compile the ops go through the custom ops (fastssl.ops.tokens), in eager code
    through their eager doors: same launchers, so the same values and gradients, and
    the compiled region has no graph break."""
    from torch._dynamo.utils import counters

    b, l, d = 3, 9, 24
    ids_keep, _ = _ids(b, l, 0.5)
    dev = _device("triton")
    ids_keep = ids_keep.to(dev)
    x0, pos0, mt0 = torch.randn(b, l, d), torch.randn(l, d), torch.randn(d)

    def step(x, pos, mt):
        y = gather_tokens(x, ids_keep, pos, backend="triton")
        return scatter_tokens(y * 2, ids_keep, l, mt, pos, backend="triton")

    results = []
    for compiled in (False, True):
        leaves = [_leaf(t, dev) for t in (x0, pos0, mt0)]
        fn = step
        if compiled:
            torch._dynamo.reset()
            counters.clear()
            fn = torch.compile(step, fullgraph=True, backend="aot_eager")
        out = fn(*leaves)
        out.backward(torch.ones_like(out))
        results.append([out.detach().cpu()] + [t.grad.cpu() for t in leaves])
    assert sum(counters["graph_break"].values()) == 0
    for a, c in zip(*results):
        assert torch.equal(a, c)
