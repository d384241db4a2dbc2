"""pytest-benchmark cases of fastssl's ops against their eager PyTorch form (see ``bench/conftest.py``).

Groups: nt_xent, dcl, dclw, info_nce, info_nce_queue, gather_tokens, scatter_tokens, patchify_noise,
sinkhorn, masked_patch_loss, packed_attention. Providers: ``eager`` (the plain PyTorch a method's
official code runs, ``bench/eager``), ``triton`` (the fastssl op forced onto its kernel; on CPU the
Triton interpreter), ``fastssl`` (ops with no kernel: the op as fastssl calls it), ``packed`` /
``padded`` (block-diagonal attention over a pack vs a padded dense batch). Sizes: one CPU size that
runs anywhere (CI: once each with ``--benchmark-disable``) and the GPU sizes of the training configs,
which skip without CUDA. Timed: forward + backward (``torch.autograd.grad``) where the op has a
gradient, the forward alone otherwise. Nothing here asserts a time.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.cases import CUDA, gpu_only, synced
from bench.eager import losses
from bench.eager.nets import gather_rows, mae_loss, mae_masking, patchify

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def dev() -> torch.device:
    return torch.device("cuda" if CUDA else "cpu")


def cases(providers: tuple[str, ...], cpu: list[tuple[str, dict]], gpu: list[tuple[str, dict]]) -> list:
    """``pytest.param(provider, size)`` for every provider × size, ids ``<provider>-<size tag>``;
    GPU sizes carry the skip-without-CUDA mark."""
    out = []
    for sizes, marks in ((cpu, ()), (gpu, (gpu_only,))):
        for tag, size in sizes:
            for prov in providers:
                out.append(pytest.param(prov, size, id=f"{prov}-{tag}", marks=marks))
    return out


def grad_of(fn, leaves):
    """forward + backward of the scalar (or the sum against a fixed random cotangent) ``fn()``."""
    def run():
        out = fn()
        if out.ndim:
            return torch.autograd.grad(out, leaves, torch.ones_like(out))
        return torch.autograd.grad(out, leaves)
    return run


def rand(*shape, dtype="fp32", grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dev(), DTYPES[dtype]).requires_grad_(grad)


# ------------------------------------------------------------------ contrastive losses
PAIR_CPU = [("2N64-D32-fp32", dict(n=32, d=32, dtype="fp32"))]
PAIR_GPU = [("2N8192-D256-bf16", dict(n=4096, d=256, dtype="bf16")), ("2N65536-D128-bf16", dict(n=32768, d=128, dtype="bf16"))]


def _pair_case(benchmark, group, provider, size, eager, fused):
    from fastssl import ops

    benchmark.group = group
    z1, z2 = rand(size["n"], size["d"], dtype=size["dtype"], grad=True, seed=1), rand(size["n"], size["d"], dtype=size["dtype"], grad=True, seed=2)
    fn = (lambda: eager(z1, z2)) if provider == "eager" else (lambda: fused(ops, z1, z2))
    grads = benchmark(synced(grad_of(fn, [z1, z2])))
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("provider,size", cases(("eager", "triton"), PAIR_CPU, PAIR_GPU))
def test_nt_xent(benchmark, provider, size):
    _pair_case(benchmark, "nt_xent", provider, size, lambda a, b: losses.nt_xent(a, b, 0.1),
               lambda ops, a, b: ops.nt_xent(a, b, 0.1, backend="triton"))


@pytest.mark.parametrize("provider,size", cases(("eager", "triton"), PAIR_CPU, PAIR_GPU))
def test_dcl(benchmark, provider, size):
    _pair_case(benchmark, "dcl", provider, size, lambda a, b: losses.dcl(a, b, 0.1),
               lambda ops, a, b: ops.dcl(a, b, 0.1, backend="triton"))


@pytest.mark.parametrize("provider,size", cases(("eager", "triton"), PAIR_CPU, PAIR_GPU))
def test_dclw(benchmark, provider, size):
    _pair_case(benchmark, "dclw", provider, size, lambda a, b: losses.dcl(a, b, 0.1, 0.5),
               lambda ops, a, b: ops.dcl(a, b, 0.1, weight_sigma=0.5, backend="triton"))


@pytest.mark.parametrize("provider,size", cases(("eager", "triton"), [("N32-D32-fp32", dict(n=32, d=32, dtype="fp32"))],
                                                 [("N4096-D256-bf16", dict(n=4096, d=256, dtype="bf16"))]))
def test_info_nce(benchmark, provider, size):
    """MoCo v3's in-batch InfoNCE: queries with a gradient, keys without."""
    from fastssl import ops

    benchmark.group = "info_nce"
    q, k = rand(size["n"], size["d"], dtype=size["dtype"], grad=True, seed=1), rand(size["n"], size["d"], dtype=size["dtype"], seed=2)
    fn = (lambda: losses.moco_v3(q, k, 0.2)) if provider == "eager" else (lambda: ops.info_nce(q, k, 0.2, backend="triton"))
    (g,) = benchmark(synced(grad_of(fn, [q])))
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("provider,size", cases(("eager", "triton"), [("N8-K300-D16-fp32", dict(n=8, k=300, d=16, dtype="fp32"))],
                                                 [("N256-K65536-D128-bf16", dict(n=256, k=65536, d=128, dtype="bf16"))]))
def test_info_nce_queue(benchmark, provider, size):
    """MoCo v2's InfoNCE against a queue of K negatives."""
    from fastssl import ops

    benchmark.group = "info_nce_queue"
    dt = size["dtype"]
    q, k = rand(size["n"], size["d"], dtype=dt, grad=True, seed=1), rand(size["n"], size["d"], dtype=dt, seed=2)
    queue = F.normalize(rand(size["k"], size["d"], dtype=dt, seed=3), dim=1)
    if provider == "eager":
        qt = queue.t().contiguous()
        fn = lambda: losses.moco_v2(q, k, qt, 0.2)  # noqa: E731
    else:
        fn = lambda: ops.info_nce(q, k, 0.2, queue=queue, backend="triton")  # noqa: E731
    (g,) = benchmark(synced(grad_of(fn, [q])))
    assert torch.isfinite(g).all()


# ------------------------------------------------------------------ token ops
TOK_CPU = [("B4-L16-K4-D32-fp32", dict(b=4, length=16, ratio=0.75, d=32, dtype="fp32"))]
TOK_GPU = [("B256-L196-K49-D768-bf16", dict(b=256, length=196, ratio=0.75, d=768, dtype="bf16"))]


def _masks(size):
    g = torch.Generator().manual_seed(5)
    return mae_masking(size["b"], size["length"], size["ratio"], g, dev())


@pytest.mark.parametrize("provider,size", cases(("eager", "triton"), TOK_CPU, TOK_GPU))
def test_gather_tokens(benchmark, provider, size):
    """MAE's encoder input: kept tokens + their positional embeddings."""
    from fastssl.ops import gather_tokens

    benchmark.group = "gather_tokens"
    x = rand(size["b"], size["length"], size["d"], dtype=size["dtype"], grad=True)
    pos = rand(size["length"], size["d"], dtype=size["dtype"], grad=True, seed=1)
    ids_keep, _, _ = _masks(size)
    if provider == "eager":
        fn = lambda: gather_rows(x + pos, ids_keep)  # noqa: E731
    else:
        fn = lambda: gather_tokens(x, ids_keep, pos, backend="triton")  # noqa: E731
    grads = benchmark(synced(grad_of(fn, [x, pos])))
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("provider,size", cases(("eager", "triton"), TOK_CPU, TOK_GPU))
def test_scatter_tokens(benchmark, provider, size):
    """MAE's decoder input: kept tokens back in place, the mask token elsewhere, + positions."""
    from fastssl.ops import scatter_tokens

    benchmark.group = "scatter_tokens"
    ids_keep, ids_restore, _ = _masks(size)
    b, length, d, dt = size["b"], size["length"], size["d"], size["dtype"]
    x = rand(b, ids_keep.shape[1], d, dtype=dt, grad=True)
    mask_token = rand(1, 1, d, dtype=dt, grad=True, seed=1)
    pos = rand(length, d, dtype=dt, seed=2)
    if provider == "eager":
        def fn():
            full = torch.cat([x, mask_token.repeat(b, length - x.shape[1], 1)], dim=1)
            return torch.gather(full, 1, ids_restore.unsqueeze(-1).repeat(1, 1, d)) + pos
    else:
        def fn():
            return scatter_tokens(x, ids_keep, length, mask_token, pos, backend="triton")
    grads = benchmark(synced(grad_of(fn, [x, mask_token])))
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("provider,size", cases(
    ("eager", "triton"), [("B4-16px-p4-K4-fp32", dict(b=4, img=16, p=4, ratio=0.75, dtype="fp32"))],
    [("B256-224px-p16-K49-bf16", dict(b=256, img=224, p=16, ratio=0.75, dtype="bf16"))]))
def test_patchify_noise(benchmark, provider, size):
    """CAN's encoder input: noisy kept patches, their noise and the normalised clean target (forward only)."""
    from fastssl.ops import patchify_noise

    benchmark.group = "patchify_noise"
    imgs = rand(size["b"], 3, size["img"], size["img"], dtype=size["dtype"])
    sigma = torch.rand(size["b"], generator=torch.Generator().manual_seed(3)).to(dev()) * 0.05
    n = (size["img"] // size["p"]) ** 2
    ids_keep, _, _ = mae_masking(size["b"], n, size["ratio"], torch.Generator().manual_seed(4), dev())
    if provider == "eager":
        def fn():
            patches = patchify(imgs, size["p"])
            kept = gather_rows(patches, ids_keep)
            noise = sigma.view(-1, 1, 1).to(kept.dtype) * torch.randn_like(kept)
            mean, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True)
            return kept + noise, (patches - mean) / (var + 1e-6) ** 0.5, noise
    else:
        def fn():
            return patchify_noise(imgs, size["p"], sigma, ids_keep=ids_keep, norm_target=True, backend="triton")
    out = benchmark(synced(fn))
    assert all(torch.isfinite(t).all() for t in out)


# ------------------------------------------------------------------ SwAV codes, MAE loss
@pytest.mark.parametrize("provider,size", cases(("eager", "fastssl"), [("B64-K300-fp32", dict(b=64, k=300, dtype="fp32"))],
                                                 [("B4096-K3000-bf16", dict(b=4096, k=3000, dtype="bf16"))]))
def test_sinkhorn(benchmark, provider, size):
    """SwAV's Sinkhorn-Knopp codes (3 iterations, ε 0.05) of unit-norm prototype scores."""
    from fastssl.ops import sinkhorn

    benchmark.group = "sinkhorn"
    scores = (F.normalize(rand(size["b"], 128), dim=1) @ F.normalize(rand(size["k"], 128, seed=1), dim=1).t()).to(DTYPES[size["dtype"]])
    fn = (lambda: losses.sinkhorn(scores, 0.05, 3)) if provider == "eager" else (lambda: sinkhorn(scores, 0.05, 3))
    q = benchmark(synced(fn))
    assert torch.isfinite(q).all()


@pytest.mark.parametrize("provider,size", cases(("eager", "fastssl"), [("B4-L16-P48-fp32", dict(b=4, length=16, p=48, dtype="fp32"))],
                                                 [("B256-L196-P768-bf16", dict(b=256, length=196, p=768, dtype="bf16"))]))
def test_masked_patch_loss(benchmark, provider, size):
    """MAE's reconstruction loss on the masked patches, per-patch normalised target."""
    from fastssl.ops import masked_patch_loss

    benchmark.group = "masked_patch_loss"
    pred = rand(size["b"], size["length"], size["p"], dtype=size["dtype"], grad=True)
    target = rand(size["b"], size["length"], size["p"], dtype=size["dtype"], seed=1)
    _, _, mask = mae_masking(size["b"], size["length"], 0.75, torch.Generator().manual_seed(2), dev())
    if provider == "eager":
        fn = lambda: mae_loss(pred, target, mask, True)  # noqa: E731
    else:
        fn = lambda: masked_patch_loss(pred, target, mask, norm_pix=True)  # noqa: E731
    (g,) = benchmark(synced(grad_of(fn, [pred])))
    assert torch.isfinite(g).all()


# ------------------------------------------------------------------ packed attention
ATT_CPU = [("multicrop-B2-H2-d16-fp32", dict(lens=(17, 17, 5, 5, 5, 5, 5, 5), b=2, h=2, d=16, dtype="fp32")),
           ("chunks-B2-H2-d16-fp32", dict(lens=(5,) * 4, b=2, h=2, d=16, dtype="fp32"))]
ATT_GPU = [("multicrop-B64-H12-d64-bf16", dict(lens=(197, 197) + (37,) * 6, b=64, h=12, d=64, dtype="bf16")),
           ("chunks-B128-H12-d64-bf16", dict(lens=(26,) * 4 + (25,) * 4, b=128, h=12, d=64, dtype="bf16"))]


@pytest.mark.parametrize("provider,size", cases(("packed", "padded"), ATT_CPU, ATT_GPU))
def test_packed_attention(benchmark, provider, size):
    """Self-attention over the sequences a method packs (SwAV's multi-crop: 2 global + 6 local crops per
    image; M-MoCo's chunks: 8 per image) at ViT-B's heads: fastssl's block-diagonal dispatch on the pack
    vs the usual padded dense batch with a key-padding mask."""
    from fastssl.models.vit.attention import AttentionDispatch
    from fastssl.models.vit.layout import AttnLayout

    benchmark.group = "packed_attention"
    lens = size["lens"] * size["b"]
    t, h, d, dt = sum(lens), size["h"], size["d"], size["dtype"]
    q, k, v = (rand(t, h, d, dtype=dt, grad=True, seed=s) for s in range(3))
    if provider == "packed":
        layout = AttnLayout.build(lens, None, dev())
        attend = AttentionDispatch("auto")
        fn = lambda: attend(q, k, v, layout)  # noqa: E731
    else:
        lmax = max(lens)
        keep = torch.arange(lmax, device=dev())[None, :] < torch.tensor(lens, device=dev())[:, None]  # [S, Lmax]

        def fn():
            pad = lambda x: torch.nn.utils.rnn.pad_sequence(x.split(lens), batch_first=True).transpose(1, 2)  # noqa: E731
            o = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=keep[:, None, None, :])
            return o.transpose(1, 2)[keep]  # back to [T, H, d]
    grads = benchmark(synced(grad_of(fn, [q, k, v])))
    assert all(torch.isfinite(g).all() for g in grads)
