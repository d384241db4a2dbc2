"""patchify and patchify_noise against loop / MAE-formula references, both backends.

The Triton backend runs in the interpreter on CPU (tests/conftest.py). Noise is checked by its
properties (the two backends draw different streams): inputs − noise = clean kept patches, per-image
std ≈ σ, zero mean, Gaussian mass within 1σ, reproducible under a seed, fresh across calls.
"""
from __future__ import annotations

import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _token_loops import mae_norm_pix, mae_patchify, patchify_loop  # noqa: E402
from _helpers import backend_device as _device, ulp as _ulp  # noqa: E402

from fastssl.ops import PatchNoise, patchify, patchify_noise, random_masking  # noqa: E402

BACKENDS = ["reference", "triton"]
# (B, C, H, W, p): H != W, C = 1 and 3, B = 1, odd L (9, 15), patch vectors of odd length (27, 75)
# the last: ViT-sized 16-pixel RGB patches (one patch per program in the patchify_noise kernel)
SHAPES = [(2, 3, 8, 12, 4), (1, 1, 9, 9, 3), (3, 3, 15, 25, 5), (2, 1, 16, 16, 4), (1, 3, 6, 10, 2), (2, 3, 32, 48, 16)]


def _run_noise(imgs, p, sigma, *, backend, ids_keep=None, **kw) -> PatchNoise:
    """patchify_noise on the backend's device, outputs back on CPU."""
    dev = _device(backend)
    sigma = sigma.to(dev) if torch.is_tensor(sigma) else sigma
    ids = ids_keep.to(dev) if ids_keep is not None else None
    out = patchify_noise(imgs.to(dev), p, sigma, ids_keep=ids, backend=backend, **kw)
    return PatchNoise(*(t.cpu() for t in out))


def _gather_rows(t, ids):
    return torch.stack([t[b, ids[b]] for b in range(t.shape[0])])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("b,c,h,w,p", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_patchify_forward_and_grad(backend, b, c, h, w, p, dtype):
    imgs0 = torch.randn(b, c, h, w, dtype=dtype)
    imgs = imgs0.to(_device(backend)).requires_grad_()
    out = patchify(imgs, p, backend=backend)
    ref = patchify_loop(imgs0, p)
    assert out.dtype == dtype and out.shape == ref.shape
    assert torch.equal(out.cpu(), ref)  # a permutation: bit exact in any dtype
    assert torch.equal(out.cpu(), mae_patchify(imgs0, p))
    g = torch.randn(out.shape, dtype=dtype)
    out.backward(g.to(imgs.device))
    # d imgs is g placed back: the loop reference's permutation applied to the pixel grid
    idx = patchify_loop(torch.arange(imgs0.numel(), dtype=torch.float64).reshape(imgs0.shape), p).long()
    dimg = torch.zeros(imgs.numel(), dtype=dtype)
    dimg[idx.reshape(-1)] = g.reshape(-1)
    assert torch.equal(imgs.grad.cpu(), dimg.reshape(imgs.shape))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("b,c,h,w,p", SHAPES)
@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("norm_target", [False, True])
def test_patchify_noise_fp32(backend, b, c, h, w, p, masked, norm_target):
    imgs = torch.randn(b, c, h, w)
    L = (h // p) * (w // p)
    ids_keep = random_masking(b, L, 0.5)[0] if masked else None
    sigma = torch.rand(b) * 0.05 + 0.01
    out = _run_noise(imgs, p, sigma, ids_keep=ids_keep, norm_target=norm_target, backend=backend)
    patches = patchify_loop(imgs, p)
    kept = _gather_rows(patches, ids_keep) if masked else patches
    assert out.inputs.shape == out.noise.shape == kept.shape and out.target.shape == patches.shape
    assert out.inputs.dtype == out.noise.dtype == out.target.dtype == torch.float32
    # inputs − noise = clean kept patches (up to the rounding of one fp32 add and one subtract)
    torch.testing.assert_close(out.inputs - out.noise, kept, rtol=0, atol=1e-6)
    assert (out.noise != 0).float().mean() > 0.99  # noise was really added
    if norm_target:
        torch.testing.assert_close(out.target.double(), mae_norm_pix(patches), rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(out.target, patches)


@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_statistics(backend):
    """Per-image std ≈ σ_b, mean ≈ 0, Gaussian mass within one σ (68.3%); σ = 0 -> exact zeros."""
    b, c, h, w, p = 4, 3, 32, 32, 4
    imgs = torch.rand(b, c, h, w)
    ids_keep = random_masking(b, 64, 0.5)[0]
    sigma = torch.tensor([0.05, 0.01, 0.5, 0.0])
    out = _run_noise(imgs, p, sigma, ids_keep=ids_keep, backend=backend)
    n = out.noise.reshape(b, -1).double()  # 32 patches · 48 values = 1536 samples per image
    m = n.shape[1]
    for i in range(3):
        eps = n[i] / sigma[i]
        assert abs(eps.std().item() - 1) < 5 / math.sqrt(2 * m), eps.std()
        assert abs(eps.mean().item()) < 5 / math.sqrt(m)
        within = (eps.abs() < 1).double().mean().item()
        assert abs(within - 0.6827) < 5 * math.sqrt(0.6827 * 0.3173 / m)
    assert torch.equal(n[3], torch.zeros_like(n[3]))
    assert torch.equal(out.inputs[3], _gather_rows(patchify_loop(imgs, p), ids_keep)[3])
    # neighbouring values are uncorrelated (the kernel packs 4 normals per Philox counter)
    for lag in (1, 2, 3, 4, 48):
        c = torch.corrcoef(torch.stack([n[0, :-lag], n[0, lag:]]))[0, 1].item()
        assert abs(c) < 5 / math.sqrt(m), (lag, c)
    # images get independent noise: the standardised fields of two images are uncorrelated
    corr = torch.corrcoef(torch.stack([n[0] / 0.05, n[1] / 0.01]))[0, 1].item()
    assert abs(corr) < 5 / math.sqrt(m)


@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_reproducible_and_fresh(backend):
    imgs = torch.randn(2, 3, 8, 12)
    ids_keep = random_masking(2, 6, 0.5)[0]
    sigma = torch.tensor([0.05, 0.02])
    torch.manual_seed(3)
    a = _run_noise(imgs, 4, sigma, ids_keep=ids_keep, backend=backend)
    b = _run_noise(imgs, 4, sigma, ids_keep=ids_keep, backend=backend)
    torch.manual_seed(3)
    a2 = _run_noise(imgs, 4, sigma, ids_keep=ids_keep, backend=backend)
    assert torch.equal(a.noise, a2.noise) and torch.equal(a.inputs, a2.inputs)
    assert not torch.equal(a.noise, b.noise)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    c1 = _run_noise(imgs, 4, sigma, ids_keep=ids_keep, generator=g1, backend=backend)
    c2 = _run_noise(imgs, 4, sigma, ids_keep=ids_keep, generator=g2, backend=backend)
    assert torch.equal(c1.noise, c2.noise)


def test_triton_noise_field_independent_of_masking():
    """Kernel noise depends on (seed, pixel) only: a masked call sees the full call's noise rows."""
    imgs = torch.randn(3, 1, 9, 15)
    ids_keep = random_masking(3, 15, 0.6)[0]
    sigma = torch.tensor([0.1, 0.2, 0.3])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    full = _run_noise(imgs, 3, sigma, generator=g1, backend="triton")
    part = _run_noise(imgs, 3, sigma, ids_keep=ids_keep, generator=g2, backend="triton")
    assert torch.equal(part.noise, _gather_rows(full.noise, ids_keep))


def test_bf16_rule():
    """DESIGN.md rule for the bf16 outputs that involve arithmetic (normalised target, inputs).

    The bound's atol is one bf16 ulp at |ref|: the interpreter truncates fp32 -> bf16 stores.
    Inputs are compared as inputs − noise against the clean patch, since the two backends draw
    different noise.
    """
    b, c, h, w, p = 3, 3, 12, 8, 4
    imgs = torch.randn(b, c, h, w, dtype=torch.bfloat16)
    ids_keep = random_masking(b, 6, 0.5)[0]
    sigma = torch.tensor([0.05, 0.03, 0.01])
    patches64 = patchify_loop(imgs, p).double()
    outs = {be: _run_noise(imgs, p, sigma, ids_keep=ids_keep, norm_target=True, backend=be) for be in BACKENDS}
    k, e = outs["triton"], outs["reference"]
    ref = mae_norm_pix(patches64)
    bad = (k.target.double() - ref).abs() > 2 * (e.target.double() - ref).abs() + _ulp(ref, torch.bfloat16)
    assert not bad.any()
    # inputs = bf16(x + n) and noise = bf16(n): inputs − noise is the clean patch within the two
    # roundings (one ulp of |x + n| and of |n| each under truncation), for both backends
    kept = _gather_rows(patches64, ids_keep)
    for o in (k, e):
        err = (o.inputs.double() - o.noise.double() - kept).abs()
        bound = _ulp(o.inputs.double(), torch.bfloat16) + _ulp(o.noise.double(), torch.bfloat16)
        assert torch.all(err <= bound)
    assert k.inputs.dtype == k.noise.dtype == k.target.dtype == torch.bfloat16


def test_rejects_bad_inputs():
    imgs = torch.randn(2, 3, 8, 12)
    with pytest.raises(ValueError):
        patchify(imgs, 5)  # not a multiple
    with pytest.raises(ValueError):
        patchify_noise(imgs.requires_grad_(), 4, 0.05)  # no silent gradient drop
    with pytest.raises(ValueError):
        patchify_noise(imgs.detach(), 4, torch.rand(3))  # sigma per image


def test_float_sigma_broadcasts():
    imgs = torch.randn(2, 1, 4, 4)
    out = _run_noise(imgs, 2, 0.0, backend="triton")
    assert torch.equal(out.inputs, patchify_loop(imgs, 2)) and torch.equal(out.noise, torch.zeros_like(out.noise))
