"""GPU-only: the CUDA attention backends (xformers, torch varlen, flex, tiles, grouped SDPA) in bf16 / fp16
against a float64 loop reference, with DESIGN.md's low-precision rule
|backend − ref64| ≤ 2·|eager-same-dtype − ref64| + atol. Skipped where there is no CUDA device
(the CPU backends are covered by test_vit_attention.py)."""
from __future__ import annotations

import pytest
import torch
from _vit_ref import loop_attention

from fastssl.models.vit.attention import AttentionDispatch, _has_flex, _has_varlen, pick_backend
from fastssl.models.vit.layout import AttnLayout

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


def _mixed_views(dev, dtype=torch.bfloat16):
    from fastssl.models import ChunkedView, ImageView, MaskedView

    g = torch.Generator(device=dev).manual_seed(3)
    img = lambda s, b=5: torch.randn(b, 3, s, s, device=dev, dtype=dtype, generator=g)  # noqa: E731
    ids = torch.argsort(torch.rand(5, 64, device=dev, generator=g), dim=1)[:, :13]
    return [ChunkedView(img(32), n_chunks=5), ImageView(img(32)), ImageView(img(12)), MaskedView(img(32), ids)]


@pytest.mark.parametrize("backend", ["auto"] + _available())
def test_packed_step_never_syncs_the_host(backend):
    """torch's sync debug mode raises at any host sync (``.item()``, a pageable copy, a nonzero)
    during a packed forward + backward; the block masks are built in the warm-up step."""
    from fastssl.models import PackedViT

    dev = torch.device("cuda")
    vit = PackedViT(img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=3, attn_backend=backend).to(dev, torch.bfloat16)
    vit.attn_backend(dev, torch.bfloat16)
    views = _mixed_views(dev)
    vit.encode(views).hidden.float().square().mean().backward()  # warm-up: probes, compiles, masks
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        vit.encode(views).hidden.float().square().mean().backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_compiled_blocks_with_the_rule_match_eager():
    """engine.compile's regions (Inductor; the block stack is one region) with the auto rule give the
    eager grouped-SDPA step's loss and gradients within bf16 rounding."""
    import copy

    from fastssl.engine.compile import compile_regions
    from fastssl.models import PackedViT

    dev = torch.device("cuda")
    torch.manual_seed(0)
    ref = PackedViT(img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=3, attn_backend="sdpa_grouped").to(dev)
    comp = copy.deepcopy(ref)
    comp.set_attn_backend("auto")
    torch._dynamo.reset()
    compile_regions(comp, "default", dev, torch.bfloat16)
    views = _mixed_views(dev, torch.float32)
    outs = []
    for m in (ref, comp):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = m.encode(views).hidden.float().square().mean()
        loss.backward()
        outs.append((loss.detach(), {n: p.grad for n, p in m.named_parameters()}))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=2e-2, atol=2e-2)
    for n, g in outs[0][1].items():
        err, scale = (outs[1][1][n] - g).abs().max().item(), g.abs().max().item()
        assert err <= 5e-2 * scale + 1e-3, f"{n}: {err:.3g} vs max {scale:.3g}"
