"""GPU-only: the CUDA attention backends (xformers, torch varlen, flex, tiles, grouped SDPA) in bf16 / fp16
against a float64 loop reference, with DESIGN.md's low-precision rule
|backend − ref64| ≤ 2·|eager-same-dtype − ref64| + atol. Skipped where there is no CUDA device
(the CPU backends are covered by test_vit_attention.py)."""
from __future__ import annotations

import pytest
import torch
from _vit_ref import loop_attention

from fastssl.models.attention import AttentionDispatch, _has_flex, _has_varlen, pick_backend
from fastssl.models.layout import AttnLayout

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _available():
    names = ["sdpa_grouped", "sdpa_mask", "sdpa_tiles"]
    if _has_varlen():
        names.append("varlen")
    if _has_flex():
        names.append("flex")
    try:
        import xformers.ops  # noqa: F401

        names.append("xformers")
    except Exception:  # noqa: BLE001
        pass
    return names


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", _available())
@pytest.mark.parametrize("lens", [((9, 50, 17, 17, 17, 37), None), ((197,) * 2 + (37,) * 6, None), ((1,) * 5, (26, 26, 25, 25, 197)),
                                  ((14,) * 12 + (13,) * 36, None), ((129,) * 3 + (1,) * 2, None)])
def test_cuda_backend_within_rule(backend, dtype, lens):
    if backend == "sdpa_tiles" and lens[1] is not None:
        pytest.skip("sdpa_tiles is for self-attention")
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


def test_auto_on_cuda_probes_the_fused_kernels_and_follows_the_rule():
    d = AttentionDispatch("auto")
    dev = torch.device("cuda")
    assert d.resolve(dev, torch.bfloat16) == "auto"
    avail = d._available[("cuda", torch.bfloat16)]
    if _has_varlen():
        assert "varlen" in avail
    if _has_flex():
        assert "flex" in avail
    for lens in [(26,) * 64 + (25,) * 64, (197,) * 16, (197,) * 16 + (37,) * 48]:
        layout = AttnLayout.build(lens, None, dev)
        assert d.pick(layout, dev, torch.bfloat16) == pick_backend(layout, dev, torch.bfloat16, avail)
    assert "varlen" not in d.resolve(dev, torch.float32) and "varlen" not in d._available[("cuda", torch.float32)]
