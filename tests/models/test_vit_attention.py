"""Block-diagonal attention backends that run on CPU, against a float64 loop reference."""
from __future__ import annotations

import logging

import pytest
import torch
from _vit_ref import loop_attention

from fastssl.models.attention import AttentionDispatch
from fastssl.models.layout import AttnLayout

CPU_BACKENDS = ["sdpa_mask", "sdpa_grouped", "sdpa_cpu"]
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
    with caplog.at_level(logging.INFO, logger="fastssl.models.attention"):
        assert d.resolve(torch.device("cpu"), torch.float32) == "sdpa_cpu"
        assert d.resolve(torch.device("cpu"), torch.float32) == "sdpa_cpu"
    assert sum("attention backend" in r.getMessage() for r in caplog.records) == 1


def test_cpu_default_takes_dense_runs_for_few_runs_and_the_mask_for_many(monkeypatch):
    from fastssl.models import attention as A

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
    with pytest.raises(ValueError, match="attention backend"):
        AttentionDispatch("flash3")
    layout = AttnLayout.build((4, 4), None, torch.device("cpu"))
    q, k, v = _qkv((4, 5), (4, 5))
    with pytest.raises(ValueError, match="layout holds"):
        d(q, k, v, layout)
