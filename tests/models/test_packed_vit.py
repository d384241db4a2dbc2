"""One packed forward over a mix of views == timm run on every sequence alone (values and grads)."""
from __future__ import annotations

import pytest
import torch
from _vit_ref import timm_cls, timm_patch_tokens, timm_sequence, tiny_timm

from fastssl.models import ChunkedView, ImageView, MaskedView, PackedViT

TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}


def _close(a, b, dtype, what=""):
    """TOL with atol scaled by the reference's magnitude: parameter gradients are sums over every
    token of the pack (hundreds of terms), so their fp32 rounding grows with their size."""
    tol = TOL[dtype]
    scale = max(1.0, b.abs().max().item())
    torch.testing.assert_close(a, b, atol=tol["atol"] * scale, rtol=tol["rtol"], msg=lambda m: f"{what}: {m}")


def _ids(b, n, k):
    return torch.stack([torch.randperm(n)[:k] for _ in range(b)])


def _perm(b, n):
    return torch.stack([torch.randperm(n) for _ in range(b)])


def _views(dtype):
    """Sequence lengths 1+8 (masked), 1+49 (resized 28px), 1+16 ×3 (chunks of a 16×48 image),
    37 (masked, no CLS), 1+64 (full), 1+13 ×4 + 1+12 (uneven chunks). Batches 2 and 3."""
    img = lambda b, h, w: torch.randn(b, 3, h, w, dtype=dtype)  # noqa: E731
    return [
        MaskedView(img(2, 32, 32), _ids(2, 64, 8)),
        ImageView(img(3, 28, 28)),
        ChunkedView(img(2, 16, 48), n_chunks=3, perm=_perm(2, 48)),
        MaskedView(img(3, 32, 32), _ids(3, 64, 37), cls=False),
        ImageView(img(2, 32, 32)),
        ChunkedView(img(3, 32, 32), n_chunks=5, perm=_perm(3, 64)),
    ]


def _sequences(view):
    """(lead index, image index, grid ids) of every sequence of a view, in pack order."""
    b = view.images.shape[0]
    if isinstance(view, ImageView):
        n = (view.images.shape[2] // 4) * (view.images.shape[3] // 4)
        return [((i,), i, torch.arange(n)) for i in range(b)]
    if isinstance(view, MaskedView):
        return [((i,), i, view.ids_keep[i]) for i in range(b)]
    n = view.perm.shape[1]
    q, r = divmod(n, view.n_chunks)
    sizes = [q + 1] * r + [q] * (view.n_chunks - r)
    out, start = [], 0
    for j, s in enumerate(sizes):
        out += [((j, i), i, view.perm[i, start:start + s]) for i in range(b)]
        start += s
    return out


def _reference(t, views, taps=()):
    """Per view: cls / mean over lead, packed tokens, taps — every sequence run alone through timm."""
    res = []
    for view in views:
        tokens = timm_patch_tokens(t, view.images)
        lead = (view.n_chunks, view.images.shape[0]) if isinstance(view, ChunkedView) else (view.images.shape[0],)
        cls, mean, packed, tapped = [], [], [], {i: [] for i in taps}
        # pack order is the lead order flattened (chunk-major for chunked views)
        for _, b, ids in _sequences(view):
            seq = tokens[b, ids]
            if view.cls:
                seq = torch.cat([timm_cls(t)[None].to(seq.dtype), seq])
            out, tp = timm_sequence(t, seq, taps)
            patches = out[1:] if view.cls else out
            cls.append(out[0])
            mean.append(patches.mean(0))
            packed.append(patches)
            for i in taps:
                tapped[i].append(tp[i][1:] if view.cls else tp[i])
        res.append((torch.stack(cls).view(*lead, -1) if view.cls else None, torch.stack(mean).view(*lead, -1),
                    torch.cat(packed), {i: torch.cat(v) for i, v in tapped.items()}))
    return res


def _loss(outs, weights):
    total = 0
    for (cls, mean, tok), (wc, wm, wt) in zip(outs, weights):
        total = total + (mean * wm).sum() + (tok * wt).sum() + ((cls * wc).sum() if cls is not None else 0)
    return total


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", ["sdpa_mask", "sdpa_grouped", "sdpa_tiles"])
def test_packed_equals_each_sequence_alone(dtype, backend):
    t = tiny_timm().to(dtype)
    vit = PackedViT.from_timm(t, attn_backend=backend).to(dtype)
    views = _views(dtype)
    enc = vit.encode(views)
    ref = _reference(t, views)
    assert len(enc) == len(views)
    for out, (rc, rm, rt, _) in zip(enc.views, ref):
        if rc is None:
            assert out.cls is None
        else:
            torch.testing.assert_close(out.cls, rc, **TOL[dtype])
        torch.testing.assert_close(out.mean, rm, **TOL[dtype])
        torch.testing.assert_close(out.tokens, rt, **TOL[dtype])

    weights = [(torch.randn_like(r[1]), torch.randn_like(r[1]), torch.randn_like(r[2])) for r in ref]
    _loss([(o.cls, o.mean, o.tokens) for o in enc.views], weights).backward()
    _loss([r[:3] for r in ref], weights).backward()
    grads = dict(t.named_parameters())
    for name, p in vit.named_parameters():
        _close(p.grad, grads[name].grad, dtype, name)


def test_output_shapes_and_lead():
    t = tiny_timm(depth=2)
    vit = PackedViT.from_timm(t)
    views = _views(torch.float32)
    enc = vit.encode(views)
    d = t.embed_dim
    assert enc.views[0].cls.shape == (2, d) and enc.views[0].final.dense().shape == (2, 8, d)
    assert enc.views[1].final.dense().shape == (3, 49, d)
    assert enc.views[2].cls.shape == (3, 2, d) and enc.views[2].final.dense().shape == (3, 2, 16, d)
    assert enc.views[3].cls is None and enc.views[3].mean.shape == (3, d)
    assert enc.views[5].cls.shape == (5, 3, d)
    with pytest.raises(ValueError, match="unequal"):
        enc.views[5].final.dense()
    assert [s.shape[0] for s in enc.views[5].final.split()] == [13] * 12 + [12] * 3
    assert enc.pack.num_tokens == enc.hidden.shape[0] == sum(enc.pack.seqlens)
    assert enc.pack.seqlens[:2] == (9, 9) and 37 in enc.pack.seqlens and 50 in enc.pack.seqlens
    # owner: image index of every sequence, chunk-major inside a chunked view
    assert enc.views[5].owner.tolist() == [0, 1, 2] * 5


@pytest.mark.parametrize("backend", ["sdpa_mask", "sdpa_grouped"])
def test_taps_equal_layer_by_layer_run(backend):
    t = tiny_timm(depth=4).double()
    vit = PackedViT.from_timm(t, attn_backend=backend).double()
    views = _views(torch.float64)[:4]
    taps = (0, 2, -1)
    enc = vit.encode(views, taps=taps)
    ref = _reference(t, views, taps=(0, 2, 3))
    for out, r in zip(enc.views, ref):
        assert set(out.taps) == {0, 2, 3}
        for i in (0, 2, 3):
            torch.testing.assert_close(out.taps[i].tokens, r[3][i], **TOL[torch.float64])
    # tap_norm applies the final norm; the last tap normed is the final output
    enc_n = vit.encode(views, taps=(3,), tap_norm=True)
    for out in enc_n.views:
        torch.testing.assert_close(out.taps[3].tokens, out.final.tokens, **TOL[torch.float64])


def test_max_block_stops_early_and_gradient_stays_below():
    t = tiny_timm(depth=4)
    vit = PackedViT.from_timm(t)
    views = _views(torch.float32)[:3]
    enc = vit.encode(views, taps=(1,), max_block=1)
    assert enc.hidden is None and enc.views[0].final is None
    with pytest.raises(ValueError, match="max_block"):
        _ = enc.views[0].cls
    full = vit.encode(views, taps=(1,))
    for a, b in zip(enc.views, full.views):
        torch.testing.assert_close(a.taps[1].tokens, b.taps[1].tokens, rtol=0, atol=0)
    vit.zero_grad()
    sum(v.taps[1].mean.square().sum() for v in enc.views).backward()
    assert all(p.grad is None for p in vit.blocks[2:].parameters())
    assert all(p.grad is not None for p in vit.blocks[:2].parameters())
    with pytest.raises(ValueError, match="after max_block"):
        vit.encode(views, taps=(3,), max_block=1)


def test_drop_path_is_per_sequence():
    from fastssl.models.vit.blocks import drop_path_packed

    lens = torch.tensor([3, 5, 2, 7, 1, 4] * 20)
    token_seq = torch.repeat_interleave(torch.arange(len(lens)), lens)
    y = torch.rand(int(lens.sum()), 6) + 0.5
    out = drop_path_packed(y, token_seq, len(lens), 0.5, True)
    scale = out / y
    for s in range(len(lens)):
        vals = scale[token_seq == s]
        assert torch.allclose(vals, vals[0].expand_as(vals))
        assert vals[0, 0].item() in (0.0, 2.0)
    assert 0 < (scale[:, 0] == 0).sum() < len(token_seq)
    assert drop_path_packed(y, token_seq, len(lens), 0.5, False) is y


def test_drop_path_train_differs_eval_equals():
    t = tiny_timm(depth=2, drop_path_rate=0.5)
    vit = PackedViT.from_timm(t)
    assert vit.blocks[-1].drop_path == pytest.approx(0.5)
    views = _views(torch.float32)[:2]
    vit.eval()
    a, b = vit.encode(views), vit.encode(views)
    torch.testing.assert_close(a.hidden, b.hidden, rtol=0, atol=0)
    vit.train()
    torch.manual_seed(0)
    c = vit.encode(views)
    assert not torch.allclose(c.hidden, a.hidden)


def test_grad_checkpointing_same_grads():
    t = tiny_timm(depth=2)
    vit = PackedViT.from_timm(t)
    views = _views(torch.float32)[:3]
    vit.encode(views).hidden.square().sum().backward()
    g1 = [p.grad.clone() for p in vit.parameters()]
    vit.zero_grad()
    vit.set_grad_checkpointing(True)
    vit.encode(views).hidden.square().sum().backward()
    for a, p in zip(g1, vit.parameters()):
        torch.testing.assert_close(p.grad, a, atol=1e-6, rtol=1e-5)


def test_view_validation():
    vit = PackedViT(img_size=32, patch_size=4, embed_dim=48, depth=1, num_heads=3)
    with pytest.raises(ValueError, match="patch size"):
        vit.encode([ImageView(torch.randn(2, 3, 30, 32))])
    with pytest.raises(ValueError, match="ids_keep"):
        vit.encode([MaskedView(torch.randn(2, 3, 32, 32), torch.zeros(3, 4, dtype=torch.long))])
    with pytest.raises(ValueError, match="n_chunks"):
        vit.encode([ChunkedView(torch.randn(2, 3, 8, 8), n_chunks=5)])
    with pytest.raises(ValueError, match="at least one view"):
        vit.encode([])


@pytest.mark.parametrize("backend", ["sdpa_mask", "sdpa_grouped", "sdpa_tiles"])
def test_bf16_autocast_within_rule(backend):
    """Under bf16 autocast the packed model is as accurate as timm under the same autocast:
    |packed − ref64| ≤ 2·|timm_bf16 − ref64| + atol on full images (DESIGN.md's rule)."""
    t = tiny_timm(depth=2).eval()
    vit = PackedViT.from_timm(t, attn_backend=backend).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = t.double().forward_features(x.double())
        t.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            eager = t.forward_features(x)
            ours = vit.forward_features(x)
    assert ours.dtype == eager.dtype
    err, bound = (ours.double() - ref).abs(), 2 * (eager.double() - ref).abs() + 5e-2
    assert bool((err <= bound).all()), (err - bound).max()


def test_flex_forward_of_the_whole_pack_equals_each_sequence_alone():
    """flex on the whole ViT (forward: torch has no CPU backward for flex; its gradients are checked
    in test_vit_attention_cuda.py), and the block mask is prepared once per structure."""
    from fastssl.models.vit import attention as A

    t = tiny_timm().double()
    vit = PackedViT.from_timm(t, attn_backend="flex").double()
    views = _views(torch.float64)
    with torch.no_grad():
        enc = vit.encode(views)
        ref = _reference(t, views)
    for out, (rc, rm, rt, _) in zip(enc.views, ref):
        torch.testing.assert_close(out.tokens, rt, **TOL[torch.float64])
        torch.testing.assert_close(out.mean, rm, **TOL[torch.float64])
    assert enc.pack.layout.flex_mask is A.flex_block_mask(enc.pack.layout)
