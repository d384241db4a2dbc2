"""Triton kernels for MAE's patchify and CAN's noisy patch input (``patchify_noise``).

Patch layout (MAE's patchify, einsum 'nchpwq->nhwpqc'): image [B, C, H, W], p = patch size,
h = H/p, w = W/p, L = h·w, P = p·p·C. Row r = b·L + l of the [B·L, P] patch matrix, with
l = i·w + j, holds at element e = (u·p + v)·C + c the pixel imgs[b, c, i·p + u, j·p + v].
Every pixel lies in exactly one patch, so patchify is a permutation: its backward (unpatchify)
writes every pixel of the image gradient exactly once, no accumulation.

patchify_noise, one read of the image for three outputs (a program per tile of patch rows):
    target[b, l] = x[b, l]                      or  (x − mean) / sqrt(var_unbiased + 1e-6)  (norm_target)
    slot[b, l] = k if ids_keep[b, k] == l else −1   (found in the kernel by comparing l with the K ids
                                                  of image b; every l is kept without ids_keep: slot = l)
    ε[b, l, (u, v, c)] = Philox normal (tl.randn4x: 4 normals per counter, one per channel) at
                 (seed, counter = (b·L + l)·PP² + u·PP + v), PP = next_pow2(p)
    noise[b, slot] = σ_b·ε;   inputs[b, slot] = x[b, l] + σ_b·ε      (kept patches only)
The noise of a pixel depends only on the seed and its position in the image, not on K or on the
order of ids_keep, so a seed fixes the noise field.
Philox is real work (10 rounds of 32-bit multiplies per counter): 4 normals per counter and no
noise for removed patches keep it under the memory time. The seed comes from torch's RNG (see
``fastssl.ops.patchify``), hence ``torch.manual_seed`` makes a run reproducible and each call
draws a fresh one. Arithmetic is fp32 (bf16 loads cast up), outputs are cast on store.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _patch_src(rows, e, L, H, W, w, PATCH: tl.constexpr, C: tl.constexpr):
    """Image offsets of the patch elements e (cols) of patch rows ``rows`` (int64)."""
    b = rows // L
    l = rows % L
    i = l // w
    j = l % w
    u = e // (PATCH * C)
    v = (e // C) % PATCH
    c = e % C
    return ((b[:, None] * C + c[None, :]) * H + (i * PATCH)[:, None] + u[None, :]) * W + (j * PATCH)[:, None] + v[None, :]


def _tile(p_elems: int, max_rows: int = 2048) -> tuple[int, int]:
    """(BLOCK_R patch rows, BLOCK_P): ~2K elements per tile, BLOCK_P >= 16 (randn4x needs /4)."""
    block_p = max(16, triton.next_power_of_2(p_elems))
    return max(1, min(max_rows, 2048 // block_p)), block_p


@triton.jit
def _patchify_fwd_kernel(
    img_ptr, out_ptr, n_rows, L, H, W, w,
    P: tl.constexpr, PATCH: tl.constexpr, C: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
):
    # out[r, e] = img[src(r, e)]
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    e = tl.arange(0, BLOCK_P)
    m = (rows < n_rows)[:, None] & (e < P)[None, :]
    src = _patch_src(rows, e, L, H, W, w, PATCH, C)
    v = tl.load(img_ptr + src, mask=m, other=0.0)
    tl.store(out_ptr + rows[:, None] * P + e[None, :], v, mask=m)


@triton.jit
def _patchify_bwd_kernel(
    g_ptr, dimg_ptr, n_rows, L, H, W, w,
    P: tl.constexpr, PATCH: tl.constexpr, C: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
):
    # dimg[src(r, e)] = g[r, e]: the inverse permutation (each pixel written once)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    e = tl.arange(0, BLOCK_P)
    m = (rows < n_rows)[:, None] & (e < P)[None, :]
    src = _patch_src(rows, e, L, H, W, w, PATCH, C)
    v = tl.load(g_ptr + rows[:, None] * P + e[None, :], mask=m, other=0.0)
    tl.store(dimg_ptr + src, v.to(dimg_ptr.dtype.element_ty), mask=m)


@triton.jit(do_not_specialize=["seed"])  # a new seed every call must not mean a new compile
def _patchify_noise_kernel(
    img_ptr, ids_ptr, sigma_ptr, inputs_ptr, noise_ptr, target_ptr, seed,
    n_rows, K, L, H, W, w,
    P: tl.constexpr, PATCH: tl.constexpr, C: tl.constexpr, HAS_IDS: tl.constexpr, NORM: tl.constexpr,
    KP: tl.constexpr, BLOCK_R: tl.constexpr, PP: tl.constexpr,
):
    # The tile is [rows, channel (padded to 4), u, v] in the image's own order: each (row, c, u) is
    # a run of PATCH contiguous pixels, loaded with 128-bit accesses (the former patch-order tile
    # made every load a 2-byte gather across three planes: ~8x the load wavefronts). It is permuted
    # to patch order [rows, u, v, c] in registers (Triton moves it through shared memory) for the
    # stores, which are then contiguous runs of the output rows.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < n_rows
    b = rows // L
    l = rows % L
    i = l // w
    j = l % w
    cc = tl.arange(0, 4)
    uu = tl.arange(0, PP)
    vv = tl.arange(0, PP)
    b4 = b[:, None, None, None]
    src = (((b4 * C + cc[None, :, None, None]) * H + (i * PATCH)[:, None, None, None] + uu[None, None, :, None]) * W
           + (j * PATCH)[:, None, None, None] + vv[None, None, None, :])
    m_in = (rmask[:, None, None, None] & (cc < C)[None, :, None, None] & (uu < PATCH)[None, None, :, None]
            & (vv < PATCH)[None, None, None, :])
    x = tl.permute(tl.load(img_ptr + src, mask=m_in, other=0.0).to(tl.float32), (0, 2, 3, 1))  # [R, u, v, c]
    u4 = uu[None, :, None, None]
    v4 = vv[None, None, :, None]
    c4 = cc[None, None, None, :]
    m = rmask[:, None, None, None] & (u4 < PATCH) & (v4 < PATCH) & (c4 < C)
    e = (u4 * PATCH + v4) * C + c4  # MAE's patch vector order (p, q, c)
    # target: clean patch, or MAE's norm_pix_loss normalisation (unbiased variance, eps 1e-6)
    t = x
    if NORM:
        mean = tl.sum(tl.sum(tl.sum(x, axis=3), axis=2), axis=1) / P
        xc = tl.where(m, x - mean[:, None, None, None], 0.0)
        var = tl.sum(tl.sum(tl.sum(xc * xc, axis=3), axis=2), axis=1) / (P - 1)
        t = xc / tl.sqrt(var + 1e-6)[:, None, None, None]
    tl.store(target_ptr + rows[:, None, None, None] * P + e, t.to(target_ptr.dtype.element_ty), mask=m)
    # noisy input and its noise, written at the patch's slot among the kept ones
    if HAS_IDS:
        # slot s of patch l among the kept ones: compare l with the K ids of its image (no inverse
        # map tensor, so no extra launches); -1 when l was removed
        kk = tl.arange(0, KP)
        ids = tl.load(ids_ptr + b[:, None] * K + kk[None, :], mask=rmask[:, None] & (kk < K)[None, :], other=-1)
        eq = ids.to(tl.int64) == l[:, None]
        s = tl.where(tl.max(eq.to(tl.int32), axis=1) > 0, tl.sum(tl.where(eq, kk[None, :], 0), axis=1), -1).to(tl.int64)
        dst = b * K + s
    else:
        s = rows
        dst = rows
    # Removed patches need no noise: skip the Philox work when the whole tile is removed (with
    # one patch per program, as for ViT-sized patches, that is every removed patch).
    if tl.max(s, axis=0) >= 0:
        sigma = tl.load(sigma_ptr + b, mask=rmask, other=0.0).to(tl.float32)
        # One Philox call per pixel position (row, u, v) gives 4 normals (randn4x), one per
        # channel: the noise of a pixel depends on the seed and its place only, not on the mask.
        ctr = rows[:, None, None] * (PP * PP) + (uu[:, None] * PP + vv[None, :])[None, :, :]
        n1, n2, n3, n4 = tl.randn4x(seed, ctr)
        eps = tl.reshape(tl.join(tl.join(n1, n2), tl.join(n3, n4)), (BLOCK_R, PP, PP, 4))
        n = sigma[:, None, None, None] * eps
        mk = m & (s >= 0)[:, None, None, None]
        out = dst[:, None, None, None] * P + e
        tl.store(noise_ptr + out, n.to(noise_ptr.dtype.element_ty), mask=mk)
        tl.store(inputs_ptr + out, (x + n).to(inputs_ptr.dtype.element_ty), mask=mk)


def _noise_tile(p: int) -> tuple[int, int]:
    """(BLOCK_R patch rows, PP = next_pow2(p)) for the [R, 4, PP, PP] tile: one patch per program
    for ViT-sized patches (removed ones then skip Philox entirely), ~2K elements otherwise."""
    pp = triton.next_power_of_2(p)
    return (1 if 4 * pp * pp >= 1024 else 2048 // (4 * pp * pp)), pp


def _geometry(shape, p):
    b, c, h, w = shape
    return b, c, h, w, (h // p) * (w // p), p * p * c, w // p


def patchify_fwd(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """imgs [B, C, H, W] contiguous -> [B, L, P]."""
    b, c, h, w, L, P, gw = _geometry(imgs.shape, p)
    out = torch.empty(b, L, P, dtype=imgs.dtype, device=imgs.device)
    block_r, block_p = _tile(P)
    _patchify_fwd_kernel[(triton.cdiv(b * L, block_r),)](
        imgs, out, b * L, L, h, w, gw, P=P, PATCH=p, C=c, BLOCK_R=block_r, BLOCK_P=block_p, num_warps=4
    )
    return out


def patchify_bwd(g: torch.Tensor, img_shape, img_dtype, p: int) -> torch.Tensor:
    """g [B, L, P] -> d imgs [B, C, H, W]."""
    b, c, h, w, L, P, gw = _geometry(img_shape, p)
    dimg = torch.empty(img_shape, dtype=img_dtype, device=g.device)
    block_r, block_p = _tile(P)
    _patchify_bwd_kernel[(triton.cdiv(b * L, block_r),)](
        g.contiguous(), dimg, b * L, L, h, w, gw, P=P, PATCH=p, C=c, BLOCK_R=block_r, BLOCK_P=block_p, num_warps=4
    )
    return dimg


class Patchify(torch.autograd.Function):
    @staticmethod
    def forward(ctx, imgs, p):
        ctx.meta = (tuple(imgs.shape), imgs.dtype, p)
        return patchify_fwd(imgs.contiguous(), p)

    @staticmethod
    def backward(ctx, g):
        shape, dtype, p = ctx.meta
        return patchify_bwd(g, shape, dtype, p), None


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Triton ``fastssl.ops.patchify`` (differentiable; backward = unpatchify)."""
    return Patchify.apply(imgs, patch_size)


def patchify_noise(
    imgs: torch.Tensor, p: int, sigma: torch.Tensor, ids_keep: torch.Tensor | None, norm_target: bool, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton ``fastssl.ops.patchify_noise`` core: (inputs [B, K|L, P], target [B, L, P], noise).

    No autograd: the image comes from the data loader (see ``fastssl.ops.patchify``).
    """
    imgs = imgs.contiguous()
    b, c, h, w, L, P, gw = _geometry(imgs.shape, p)
    if ids_keep is not None:
        k, ids = ids_keep.shape[1], ids_keep.contiguous()
    else:
        k, ids = L, imgs  # dummy pointer, never read
    inputs = torch.empty(b, k, P, dtype=imgs.dtype, device=imgs.device)
    noise = torch.empty_like(inputs)
    target = torch.empty(b, L, P, dtype=imgs.dtype, device=imgs.device)
    if c > 4:
        raise ValueError(f"the patchify_noise kernel takes at most 4 channels, got {c}")
    block_r, pp = _noise_tile(p)
    _patchify_noise_kernel[(triton.cdiv(b * L, block_r),)](
        imgs, ids, sigma.contiguous(), inputs, noise, target, seed, b * L, k, L, h, w, gw,
        P=P, PATCH=p, C=c, HAS_IDS=ids_keep is not None, NORM=norm_target, KP=triton.next_power_of_2(max(k, 1)),
        BLOCK_R=block_r, PP=pp, num_warps=4,
    )
    return inputs, target, noise
