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
Kernels and launchers only: the custom ops, their autograd and the dispatch are ``fastssl.ops.patchify``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastssl.kernels.launch import cdiv, launch, next_pow2


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
    block_p = max(16, next_pow2(p_elems))
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


@triton.jit
def _to_patch_order(t, BLOCK_R: tl.constexpr, PP: tl.constexpr, PATCH: tl.constexpr, C: tl.constexpr, QP: tl.constexpr):
    """[R, u, v, 4 channels] -> [R, u, q] with q = v·C + c (MAE's order within a patch row), q < PATCH·C
    valid, padded to QP: a register gather (tl.gather), so that each patch row is one contiguous run
    of the output and the stores are 128-bit."""
    q = tl.arange(0, QP)
    src_idx = tl.where(q < PATCH * C, (q // C) * 4 + q % C, 0)
    flat = tl.reshape(t, (BLOCK_R, PP, PP * 4))
    idx = tl.broadcast_to(src_idx[None, None, :], (BLOCK_R, PP, QP))
    return tl.gather(flat, idx, axis=2)


@triton.jit(do_not_specialize=["seed"])  # a new seed every call must not mean a new compile
def _patchify_noise_kernel(
    img_ptr, ids_ptr, sigma_ptr, inputs_ptr, noise_ptr, target_ptr, seed,
    n_rows, K, L, H, W, w,
    P: tl.constexpr, PATCH: tl.constexpr, C: tl.constexpr, HAS_IDS: tl.constexpr, NORM: tl.constexpr,
    KP: tl.constexpr, BLOCK_R: tl.constexpr, PP: tl.constexpr, QP: tl.constexpr,
):
    # The image is read as [rows, channel (padded to 4), u, v] in its own order: each (row, c, u) is
    # a run of PATCH contiguous pixels, loaded with 128-bit accesses (a patch-order tile makes every
    # load a 2-byte gather across C planes: ~8x the load wavefronts). In registers it becomes
    # [rows, u, q = v·C + c] (_to_patch_order), in which each patch row u is a contiguous run of
    # PATCH·C output elements: 128-bit stores as well.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < n_rows
    b = rows // L
    l = rows % L
    i = l // w
    j = l % w
    cc = tl.arange(0, 4)
    uu = tl.arange(0, PP)
    vv = tl.arange(0, PP)
    src = (((b[:, None, None, None] * C + cc[None, :, None, None]) * H + (i * PATCH)[:, None, None, None]
            + uu[None, None, :, None]) * W + (j * PATCH)[:, None, None, None] + vv[None, None, None, :])
    m_in = (rmask[:, None, None, None] & (cc < C)[None, :, None, None] & (uu < PATCH)[None, None, :, None]
            & (vv < PATCH)[None, None, None, :])
    x4 = tl.permute(tl.load(img_ptr + src, mask=m_in, other=0.0).to(tl.float32), (0, 2, 3, 1))  # [R, u, v, c]
    q = tl.arange(0, QP)
    m = rmask[:, None, None] & (uu < PATCH)[None, :, None] & (q < PATCH * C)[None, None, :]
    x = tl.where(m, _to_patch_order(x4, BLOCK_R, PP, PATCH, C, QP), 0.0)  # [R, u, q]; padding q >= PATCH·C is 0
    e = uu[None, :, None] * (PATCH * C) + q[None, None, :]  # MAE's patch vector order (p, q, c)
    # target: clean patch, or MAE's norm_pix_loss normalisation (unbiased variance, eps 1e-6)
    t = x
    if NORM:
        mean = tl.sum(tl.sum(x, axis=2), axis=1) / P
        xc = tl.where(m, x - mean[:, None, None], 0.0)
        var = tl.sum(tl.sum(xc * xc, axis=2), axis=1) / (P - 1)
        t = xc / tl.sqrt(var + 1e-6)[:, None, None]
    tl.store(target_ptr + rows[:, None, None] * P + e, t.to(target_ptr.dtype.element_ty), mask=m)
    # noisy input and its noise, written at the patch's slot among the kept ones
    if HAS_IDS:
        # slot s of patch l among the kept ones: compare l with the K ids of its image (no inverse
        # map tensor, so no extra launches); -1 when l was removed
        kk = tl.arange(0, KP)
        if BLOCK_R == 1:  # a scalar search: keeps the ids row out of the data tile's layout
            r0 = tl.program_id(0).to(tl.int64)
            idr = tl.load(ids_ptr + (r0 // L) * K + kk, mask=kk < K, other=-1).to(tl.int64)
            hit = idr == r0 % L
            s0 = tl.where(tl.max(hit.to(tl.int32), axis=0) > 0, tl.sum(tl.where(hit, kk, 0), axis=0), -1).to(tl.int64)
            s = tl.full((BLOCK_R,), 0, tl.int64) + s0
        else:
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
        eps = _to_patch_order(tl.reshape(tl.join(tl.join(n1, n2), tl.join(n3, n4)), (BLOCK_R, PP, PP, 4)),
                              BLOCK_R, PP, PATCH, C, QP)
        n = sigma[:, None, None] * eps
        mk = m & (s >= 0)[:, None, None]
        out = dst[:, None, None] * P + e
        tl.store(noise_ptr + out, n.to(noise_ptr.dtype.element_ty), mask=mk)
        tl.store(inputs_ptr + out, (x + n).to(inputs_ptr.dtype.element_ty), mask=mk)


def _noise_tile(p: int, c: int) -> tuple[int, int, int]:
    """(BLOCK_R patch rows, PP = next_pow2(p), QP = next_pow2(p·C)) for the [R, 4, PP, PP] tile: one
    patch per program for ViT-sized patches (removed ones then skip Philox entirely), 1K elements
    otherwise (2K spills at 4 warps: the gathers and the ids tile need registers)."""
    pp = next_pow2(p)
    return max(1, 1024 // (4 * pp * pp)), pp, next_pow2(p * c)


def _geometry(shape, p):
    b, c, h, w = shape
    return b, c, h, w, (h // p) * (w // p), p * p * c, w // p


def patchify_fwd(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """imgs [B, C, H, W] contiguous -> [B, L, P]."""
    b, c, h, w, L, P, gw = _geometry(imgs.shape, p)
    out = torch.empty(b, L, P, dtype=imgs.dtype, device=imgs.device)
    block_r, block_p = _tile(P)
    launch(_patchify_fwd_kernel, (cdiv(b * L, block_r),),
        imgs, out, b * L, L, h, w, gw, P=P, PATCH=p, C=c, BLOCK_R=block_r, BLOCK_P=block_p, num_warps=4
    )
    return out


def patchify_bwd(g: torch.Tensor, img_shape, img_dtype, p: int) -> torch.Tensor:
    """g [B, L, P] -> d imgs [B, C, H, W]."""
    b, c, h, w, L, P, gw = _geometry(img_shape, p)
    dimg = torch.empty(img_shape, dtype=img_dtype, device=g.device)
    block_r, block_p = _tile(P)
    launch(_patchify_bwd_kernel, (cdiv(b * L, block_r),),
        g.contiguous(), dimg, b * L, L, h, w, gw, P=P, PATCH=p, C=c, BLOCK_R=block_r, BLOCK_P=block_p, num_warps=4
    )
    return dimg


def patchify_noise(
    imgs: torch.Tensor, p: int, sigma: torch.Tensor, ids_keep: torch.Tensor | None, norm_target: bool, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton ``fastssl.ops.patchify_noise`` core: (inputs [B, K|L, P], target [B, L, P], noise).

    No gradient: the image comes from the data loader (see ``fastssl.ops.patchify``).
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
    block_r, pp, qp = _noise_tile(p, c)
    launch(_patchify_noise_kernel, (cdiv(b * L, block_r),),
        imgs, ids, sigma.contiguous(), inputs, noise, target, seed, b * L, k, L, h, w, gw,
        P=P, PATCH=p, C=c, HAS_IDS=ids_keep is not None, NORM=norm_target, KP=next_pow2(max(k, 1)),
        BLOCK_R=block_r, PP=pp, QP=qp, num_warps=4,
    )
    return inputs, target, noise
