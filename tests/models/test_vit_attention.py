"""Block-diagonal attention backends that run on CPU, against a float64 loop reference."""
from __future__ import annotations

import logging

import pytest
import torch
from _vit_ref import loop_attention

from fastssl.models.vit.attention import AttentionDispatch
from fastssl.models.vit.layout import AttnLayout

CPU_BACKENDS = ["sdpa_mask", "sdpa_grouped", "sdpa_cpu", "sdpa_tiles"]
# (q_lens, k_lens or None for self-attention): the mixes the methods produce, odd ones included
CASES = [
    ((9, 50, 17, 17, 17, 37), None),  # masked 1+8, resized 1+49, three chunks 1+16, 37 without CLS
    ((1,), None),
    ((5, 5, 5, 7, 7, 5), None),       # runs that merge and split
    ((1, 1, 1, 1), (9, 50, 17, 3)),   # class attention: one query per sequence
]


def _qkv(q_lens, k_lens, heads=3, dh=8, dtype=torch.float32):
    tq, tk = sum(q_lens), sum(k_lens)
    q = torch.randn(tq, heads, dh, dtype=dtype, requires_grad=True)
    k = torch.randn(tk, heads, dh, dtype=dtype, requires_grad=True)
    v = torch.randn(tk, heads, dh, dtype=dtype, requires_grad=True)
    return q, k, v


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"q{len(c[0])}seqs{'-cross' if c[1] else ''}")
def test_backend_matches_loop_reference(backend, case):
    q_lens, k_lens = case
    if backend == "sdpa_tiles" and k_lens is not None:
        pytest.skip("sdpa_tiles is for self-attention")
    layout = AttnLayout.build(q_lens, k_lens, torch.device("cpu"))
    q, k, v = _qkv(layout.q_lens, layout.k_lens)
    out = AttentionDispatch(backend)(q, k, v, layout)
    g = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), g)

    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = loop_attention(q64, k64, v64, layout.q_lens, layout.k_lens)
    rq, rk, rv = torch.autograd.grad(ref, (q64, k64, v64), g.double())
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=1e-5)
    for a, b in ((dq, rq), (dk, rk), (dv, rv)):
        torch.testing.assert_close(a.double(), b, atol=5e-6, rtol=1e-5)


def test_runs_cover_layout():
    layout = AttnLayout.build((3, 3, 4, 4, 4, 3), None, torch.device("cpu"))
    assert [(r.count, r.q_len) for r in layout.runs] == [(2, 3), (3, 4), (1, 3)]
    assert layout.cu_q.tolist() == [0, 3, 6, 10, 14, 18, 21]
    assert layout.cu_k is layout.cu_q


def test_auto_on_cpu_is_per_pack_sdpa_and_logged_once(caplog):
    d = AttentionDispatch("auto")
    layout = AttnLayout.build((17,) * 4, None, torch.device("cpu"))
    with caplog.at_level(logging.INFO, logger="fastssl.models.vit.attention"):
        assert d.resolve(torch.device("cpu"), torch.float32) == "auto"
        assert d.pick(layout, torch.device("cpu"), torch.float32) == "sdpa_cpu"
        assert d.pick(layout, torch.device("cpu"), torch.float32) == "sdpa_cpu"
    assert sum("auto over" in r.getMessage() for r in caplog.records) == 1
    assert sum("sdpa_cpu for" in r.getMessage() for r in caplog.records) == 1


def test_cpu_default_takes_dense_runs_for_few_runs_and_the_mask_for_many(monkeypatch):
    from fastssl.models.vit import attention as A

    calls = []
    monkeypatch.setattr(A, "attend_sdpa_grouped", lambda *a: calls.append("grouped"))
    monkeypatch.setattr(A, "attend_sdpa_mask", lambda *a: calls.append("mask"))
    few = AttnLayout.build((17,) * 256, None, torch.device("cpu"))  # two 256-image views: one run
    many = AttnLayout.build(tuple(3 + i for i in range(A._CPU_MAX_RUNS + 1)), None, torch.device("cpu"))
    A.attend_sdpa_cpu(None, None, None, few)
    A.attend_sdpa_cpu(None, None, None, many)
    assert calls == ["grouped", "mask"]


def test_override_and_validation():
    d = AttentionDispatch("sdpa_grouped")
    assert d.resolve(torch.device("cpu"), torch.float32) == "sdpa_grouped"
    d.set_backend("sdpa_mask")
    assert d.resolve(torch.device("cpu"), torch.float32) == "sdpa_mask"
    assert d.pick(AttnLayout.build((4, 4), None, torch.device("cpu")), torch.device("cpu"), torch.float32) == "sdpa_mask"
    with pytest.raises(ValueError, match="attention backend"):
        AttentionDispatch("flash3")
    layout = AttnLayout.build((4, 4), None, torch.device("cpu"))
    q, k, v = _qkv((4, 5), (4, 5))
    with pytest.raises(ValueError, match="layout holds"):
        d(q, k, v, layout)


# ---------------------------------------------------------------- flex, tiles, the rule (CPU-testable parts)
SELF_CASES = [(9, 50, 17, 17, 17, 37), (13,) * 40 + (14,) * 11, (200, 3, 300), (1,), (128,) * 3, (26,) * 20 + (25,) * 20]


@pytest.mark.parametrize("lens", SELF_CASES, ids=lambda c: f"{len(c)}seqs-max{max(c)}")
def test_flex_forward_matches_loop_reference_on_cpu(lens):
    """Forward only: torch has no CPU backward for flex (its gradients: the CUDA test file)."""
    layout = AttnLayout.build(lens, None, torch.device("cpu"))
    q, k, v = (t.detach() for t in _qkv(lens, lens, dtype=torch.float64))
    out = AttentionDispatch("flex")(q.float(), k.float(), v.float(), layout)
    ref = loop_attention(q, k, v, layout.q_lens, layout.k_lens)
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("case", [(c, None) for c in SELF_CASES] + [((1,) * 5, (26, 26, 25, 25, 197)), ((3, 1), (130, 5))],
                         ids=lambda c: f"{len(c[0])}seqs{'-cross' if c[1] else ''}-max{max(c[1] or c[0])}")
def test_flex_block_mask_is_exactly_the_needed_tiles(case):
    """Every tile holding a same-sequence (q, k) pair is visited, no other; a tile is 'full' (no mask
    evaluation) only when every pair in it is same-sequence; mask_mod equals the dense mask."""
    from fastssl.models.vit import attention as A

    layout = AttnLayout.build(case[0], case[1], torch.device("cpu"))
    bm = A.build_flex_block_mask(layout)
    b = A.FLEX_BLOCK
    nq, nk = -(-layout.total_q // b), -(-layout.total_k // b)
    dense = torch.zeros(nq * b, nk * b, dtype=torch.bool)
    dense[:layout.total_q, :layout.total_k] = layout.block_mask
    tiles = dense.view(nq, b, nk, b)
    need, all_true = tiles.any(dim=(1, 3)), tiles.all(dim=(1, 3))
    partial = torch.zeros(nq, nk, dtype=torch.bool)
    full = torch.zeros(nq, nk, dtype=torch.bool)
    for i in range(nq):
        partial[i, bm.kv_indices[0, 0, i, :bm.kv_num_blocks[0, 0, i]].long()] = True
        full[i, bm.full_kv_indices[0, 0, i, :bm.full_kv_num_blocks[0, 0, i]].long()] = True
    assert not (partial & full).any()
    assert torch.equal(partial | full, need)
    assert torch.equal(full, all_true & need)
    qi, ki = torch.meshgrid(torch.arange(layout.total_q), torch.arange(layout.total_k), indexing="ij")
    assert torch.equal(bm.mask_mod(0, 0, qi, ki), layout.block_mask)


def test_flex_block_masks_are_cached_per_structure_and_outside_inference_mode():
    from fastssl.models.vit import attention as A

    a = AttnLayout.build((26,) * 8 + (25,) * 8, None, torch.device("cpu"))
    b = AttnLayout.build((26,) * 8 + (25,) * 8, None, torch.device("cpu"))
    with torch.inference_mode():
        ma = A.flex_block_mask(a)
    assert A.flex_block_mask(b) is ma and not ma.kv_indices.is_inference()
    assert A.flex_block_mask(AttnLayout.build((26,) * 8, None, torch.device("cpu"))) is not ma


@pytest.mark.parametrize("count,length,g", [(512, 25, 4), (768, 13, 8), (64, 50, 2), (7, 50, 1), (3, 200, 1), (1, 1, 1), (130, 1, 65)])
def test_tile_group_divides_the_run_and_fits_a_tile(count, length, g):
    from fastssl.models.vit.attention import TILE_TOKENS, tile_group

    assert tile_group(count, length) == g
    assert count % g == 0 and (g == 1 or g * length <= TILE_TOKENS)


def _lay(lens, k_lens=None):
    return AttnLayout.build(lens, k_lens, torch.device("cpu"))


CUDA_ALL = frozenset({"sdpa_grouped", "sdpa_mask", "sdpa_tiles", "varlen", "flex"})


@pytest.mark.parametrize("name,lens,k_lens,avail,want", [
    ("mmoco-8 (26/25)", (26,) * 256 + (25,) * 256, None, CUDA_ALL, "sdpa_grouped"),
    ("mmoco-16", (14,) * 256 + (13,) * 768, None, CUDA_ALL, "sdpa_grouped"),
    ("mae 75%", (50,) * 64, None, CUDA_ALL, "sdpa_grouped"),
    ("dac 50+50", (50,) * 128, None, CUDA_ALL, "sdpa_grouped"),
    ("moco-full", (197,) * 64, None, CUDA_ALL, "sdpa_grouped"),
    ("multicrop", (197,) * 128 + (37,) * 384, None, CUDA_ALL, "sdpa_grouped"),
    ("many runs", tuple(70 + i for i in range(9)), None, CUDA_ALL, "varlen"),
    ("many short runs", tuple(3 + i for i in range(9)), None, CUDA_ALL, "varlen"),
    ("many runs, no varlen", tuple(70 + i for i in range(9)), None, CUDA_ALL - {"varlen"}, "sdpa_grouped"),
    ("class attention", (1,) * 64, (26,) * 32 + (25,) * 32, CUDA_ALL, "sdpa_grouped"),
])
def test_the_rule(name, lens, k_lens, avail, want):
    from fastssl.models.vit.attention import pick_backend

    lay = _lay(lens, k_lens)
    assert pick_backend(lay, torch.device("cuda"), torch.bfloat16, avail) == want
    assert pick_backend(lay, torch.device("cpu"), torch.float32, avail) == "sdpa_cpu"


def test_offsets_and_sequence_ids_are_built_per_run():
    from fastssl.models.vit.layout import length_groups, prefix_sums, seq_ids

    lens = (5, 5, 7, 1, 1, 1, 5)
    assert length_groups(lens) == [(5, 2), (7, 1), (1, 3), (5, 1)]
    assert prefix_sums(lens, torch.device("cpu")).tolist() == [0, 5, 10, 17, 18, 19, 20, 25]
    assert prefix_sums(lens, torch.device("cpu")).dtype == torch.int32
    assert seq_ids(lens, torch.device("cpu")).tolist() == [i for i, n in enumerate(lens) for _ in range(n)]


def test_auto_drops_flex_when_it_fails_at_run_time(monkeypatch, caplog):
    """Eager only: a flex failure on a shape its probe did not cover falls back to the rule without
    flex (logged as a warning) instead of ending the step."""
    from fastssl.models.vit import attention as A

    def boom(*a):
        raise RuntimeError("no kernel for this shape")

    monkeypatch.setattr(A, "attend_flex", boom)
    monkeypatch.setitem(A._IMPLS, "sdpa_tiles", lambda q, k, v, layout: "tiles")
    monkeypatch.setattr(A, "pick_backend", lambda lay, dev, dt, avail: "flex" if "flex" in avail else "sdpa_tiles")
    d = AttentionDispatch("auto")
    key = ("meta", torch.bfloat16)
    d._available[key] = frozenset({"flex", "sdpa_tiles", "sdpa_grouped"})
    layout = AttnLayout.build((13,) * 4, None, torch.device("cpu"))
    object.__setattr__(layout, "backend", "flex")  # as prepare() leaves it
    q = torch.empty(52, 2, 8, dtype=torch.bfloat16, device="meta")
    with caplog.at_level(logging.WARNING, logger="fastssl.models.vit.attention"):
        assert d(q, q, q, layout) == "tiles"
    assert "flex" not in d._available[key] and layout.backend is None
    assert any("flex failed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("mode", ["grad", "no_grad", "inference_mode"])
def test_the_probe_does_not_depend_on_the_callers_grad_mode(mode):
    """A backend's availability is probed with a backward; an EMA target's first forward (its dispatch
    is its own, a deep copy's) runs under no_grad, where that backward failed and dropped the backend
    (on CUDA: varlen, for the target's whole run). The probe runs with gradients on in every mode."""
    from fastssl.models.vit.attention import _probe

    ctx = {"grad": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[mode]
    with ctx():
        assert all(_probe(name, torch.device("cpu"), torch.float32) for name in ("sdpa_grouped", "sdpa_mask", "sdpa_cpu"))
        assert torch.is_grad_enabled() == (mode == "grad")


def test_a_forced_backend_that_cannot_run_here_is_named_with_its_reason():
    """On CPU: the CPU backends pass in fp32 and bf16, auto is never refused; varlen (flash, CUDA only)
    and flex (no CPU backward) are refused with the probe's own reason and the backends that do run."""
    from fastssl.models.vit.attention import forced_problem

    cpu = torch.device("cpu")
    for dtype in (torch.float32, torch.bfloat16):
        assert forced_problem("auto", cpu, dtype) is None
        assert all(forced_problem(b, cpu, dtype) is None for b in CPU_BACKENDS)
    why = forced_problem("varlen", cpu, torch.bfloat16)
    assert why.startswith("model.attn_backend=varlen does not run on cpu in bfloat16 (NotImplementedError:")
    assert why.endswith("use auto or one that runs here: sdpa_cpu, sdpa_grouped, sdpa_mask, sdpa_tiles")
    assert len(why.splitlines()) == 1 and len(why) < 400
    assert "backward on CPU" in forced_problem("flex", cpu, torch.float32)
