"""GPU-only: the CUDA attention backends (xformers, torch varlen, grouped SDPA) in bf16 / fp16
against a float64 loop reference, with DESIGN.md's low-precision rule
|backend − ref64| ≤ 2·|eager-same-dtype − ref64| + atol. Skipped where there is no CUDA device
(the CPU backends are covered by test_vit_attention.py)."""
from __future__ import annotations

import pytest
import torch
from _vit_ref import loop_attention

from fastssl.models.attention import AttentionDispatch, _has_varlen
from fastssl.models.layout import AttnLayout

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _available():
    names = ["sdpa_grouped", "sdpa_mask"]
    if _has_varlen():
        names.append("varlen")
    try:
        import xformers.ops  # noqa: F401

        names.append("xformers")
    except Exception:  # noqa: BLE001
        pass
    return names


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", _available())
@pytest.mark.parametrize("lens", [((9, 50, 17, 17, 17, 37), None), ((197,) * 2 + (37,) * 6, None), ((1,) * 5, (26, 26, 25, 25, 197))])
def test_cuda_backend_within_rule(backend, dtype, lens):
    dev = torch.device("cuda")
    layout = AttnLayout.build(lens[0], lens[1], dev)
    h, dh = 4, 64
    q = torch.randn(layout.total_q, h, dh, device=dev, dtype=dtype, requires_grad=True)
    k = torch.randn(layout.total_k, h, dh, device=dev, dtype=dtype, requires_grad=True)
    v = torch.randn(layout.total_k, h, dh, device=dev, dtype=dtype, requires_grad=True)
    out = AttentionDispatch(backend)(q, k, v, layout)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    ins64 = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = loop_attention(*ins64, layout.q_lens, layout.k_lens)
    rgrads = torch.autograd.grad(ref, ins64, g.double())
    insd = [t.detach().requires_grad_() for t in (q, k, v)]
    eager = loop_attention(*insd, layout.q_lens, layout.k_lens)
    egrads = torch.autograd.grad(eager, insd, g)
    for a, e, r in zip((out, *grads), (eager, *egrads), (ref, *rgrads)):
        err = (a.double() - r).abs()
        bound = 2 * (e.double() - r).abs() + 2e-2
        assert bool((err <= bound).all()), f"max excess {(err - bound).max().item():.3g}"


def test_auto_on_cuda_prefers_a_fused_varlen_kernel():
    d = AttentionDispatch("auto")
    name = d.resolve(torch.device("cuda"), torch.bfloat16)
    assert name in ("xformers", "varlen", "sdpa_grouped")
    if _has_varlen():
        assert name in ("xformers", "varlen")
    assert d.resolve(torch.device("cuda"), torch.float32) in ("xformers", "sdpa_grouped")
