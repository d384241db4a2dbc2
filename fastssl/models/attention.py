"""Variable-length (block-diagonal) attention over packed sequences, with one backend per device.

Shapes: q ``[Tq, H, Dh]``, k / v ``[Tk, H, Dh]`` packed as described by an ``AttnLayout``;
the result is ``[Tq, H, Dh]``. Query i attends to key j only if both belong to the same sequence;
scale 1/sqrt(Dh) (timm's ``Attention``); no dropout (SSL pre-training runs with attn_drop = 0).

Backends
- ``xformers``: ``memory_efficient_attention`` with a ``BlockDiagonalMask`` (CUDA only; xformers
  has no CPU op). One kernel for the whole pack.
- ``varlen``: ``torch.nn.attention.varlen.varlen_attn`` (flash-attention with cu_seqlens; torch
  ≥ 2.10, CUDA, fp16/bf16 only). One kernel for the whole pack.
- ``sdpa_grouped``: one ``scaled_dot_product_attention`` call per *run* (consecutive sequences of
  equal length, see ``layout.Run``), each a dense ``[count, H, len, Dh]`` batch taken as a strided
  view of the packed tensor, so no gather and no mask; SDPA then picks flash / efficient kernels
  on CUDA. Packs built from views have a handful of runs (a view's sequences are contiguous and
  mostly of one length), so this is a few calls, and it runs anywhere, in any dtype.
- ``sdpa_mask``: a single SDPA call over the whole pack with a ``[Tq, Tk]`` boolean block-diagonal
  mask. O(T²) memory and work, but exact and simple; it runs forward and backward on CPU
  (flex_attention's backward and ``varlen_attn`` do not).
- ``sdpa_cpu``: the CPU default, chosen per pack: ``sdpa_grouped`` when the pack has at most
  ``_CPU_MAX_RUNS`` runs (every pack of full, masked or multi-crop views), ``sdpa_mask`` otherwise.

Choice: ``"auto"`` resolves once per (device type, dtype), logs the result, and caches it:
CUDA → xformers if it imports and a tiny forward+backward probe runs, else varlen if present and
the dtype is fp16/bf16 (probed the same way), else sdpa_grouped; CPU → sdpa_cpu. Any backend can
be forced by name (``AttentionDispatch("sdpa_grouped")`` / the ViT's ``attn_backend=`` keyword).
Padding is never chosen: packing does the same work minus the padded tokens (see bench/attention.py).
"""
from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.nn.functional as F

from fastssl.models.layout import AttnLayout

log = logging.getLogger(__name__)

BackendName = Literal["auto", "xformers", "varlen", "sdpa_grouped", "sdpa_mask", "sdpa_cpu"]
BACKENDS: tuple[str, ...] = ("xformers", "varlen", "sdpa_grouped", "sdpa_mask", "sdpa_cpu")
_HALF = (torch.float16, torch.bfloat16)


def attend_sdpa_mask(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttnLayout) -> torch.Tensor:
    """One SDPA call, [1, H, T, Dh], with the block-diagonal boolean mask."""
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0),
        attn_mask=layout.block_mask,
    )
    return out.squeeze(0).transpose(0, 1)


def attend_sdpa_grouped(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttnLayout) -> torch.Tensor:
    """One unmasked SDPA call per run of equal-length sequences; results concatenated in order."""
    h, dh = q.shape[1], q.shape[2]
    outs = []
    for r in layout.runs:
        # [count*len, H, Dh] slice -> [count, len, H, Dh] -> [count, H, len, Dh] (strided view, no copy)
        qr = q[r.q_start:r.q_start + r.count * r.q_len].view(r.count, r.q_len, h, dh).transpose(1, 2)
        kr = k[r.k_start:r.k_start + r.count * r.k_len].view(r.count, r.k_len, h, dh).transpose(1, 2)
        vr = v[r.k_start:r.k_start + r.count * r.k_len].view(r.count, r.k_len, h, dh).transpose(1, 2)
        o = F.scaled_dot_product_attention(qr, kr, vr)
        outs.append(o.transpose(1, 2).reshape(r.count * r.q_len, h, dh))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)


# With this many runs or fewer, one SDPA call per run beats one masked call over the whole pack.
# Measured on 2 CPU cores, ViT-tiny fwd+bwd, 256 images of 16+1 tokens (one run): grouped 30-35
# images/s, masked 9-14, timm 27-36 (machine shared; notes/vit.md). The mask only wins when a pack
# is many short runs (per-call overhead), e.g. chunks of many lengths.
_CPU_MAX_RUNS = 8


def attend_sdpa_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttnLayout) -> torch.Tensor:
    """CPU default: dense per-run SDPA (no O(T²) mask) unless the pack is many short runs."""
    if len(layout.runs) <= _CPU_MAX_RUNS:
        return attend_sdpa_grouped(q, k, v, layout)
    return attend_sdpa_mask(q, k, v, layout)


def attend_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttnLayout) -> torch.Tensor:
    """torch's flash varlen kernel. Positional arguments only: the keyword tail differs between
    torch 2.10/2.11 and 2.13, the first seven parameters do not."""
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn(q, k, v, layout.cu_q, layout.cu_k, layout.max_q, layout.max_k)


def attend_xformers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttnLayout) -> torch.Tensor:
    """xformers memory-efficient attention on a [1, T, H, Dh] batch with a block-diagonal bias."""
    import xformers.ops as xops

    out = xops.memory_efficient_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), attn_bias=layout.xformers_bias)
    return out.squeeze(0)


_IMPLS = {
    "xformers": attend_xformers,
    "varlen": attend_varlen,
    "sdpa_grouped": attend_sdpa_grouped,
    "sdpa_mask": attend_sdpa_mask,
    "sdpa_cpu": attend_sdpa_cpu,
}


def _probe(name: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Does ``name`` run forward and backward here? A tiny two-sequence pack, lengths 3 and 5."""
    try:
        layout = AttnLayout.build((3, 5), None, device)
        q, k, v = (torch.randn(8, 2, 16, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        out = _IMPLS[name](q, k, v, layout)
        out.float().sum().backward()
        return bool(torch.isfinite(q.grad).all())
    except Exception as e:  # noqa: BLE001  (any failure means: not usable here)
        log.info("attention backend %s unavailable on %s/%s: %s", name, device.type, dtype, str(e).splitlines()[0] if str(e) else type(e).__name__)
        return False


def _has_varlen() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def _auto(device: torch.device, dtype: torch.dtype, probe: bool = True) -> str:
    if device.type != "cuda":
        return "sdpa_cpu"
    if probe:  # xformers only when its probe runs (a build that does not match torch imports, then fails)
        try:
            import xformers.ops  # noqa: F401

            if _probe("xformers", device, dtype):
                return "xformers"
        except Exception:  # noqa: BLE001  (ImportError or a broken build: fall through)
            pass
    if dtype in _HALF and _has_varlen() and (not probe or _probe("varlen", device, dtype)):
        return "varlen"
    return "sdpa_grouped"


class AttentionDispatch:
    """Chooses and remembers the attention backend; one instance is shared by all blocks of a model.

    ``backend``: "auto" (see the module docstring) or a name from ``BACKENDS`` to force it.
    """

    def __init__(self, backend: BackendName = "auto") -> None:
        self.set_backend(backend)

    def set_backend(self, backend: BackendName) -> None:
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"attention backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
        self.requested = backend
        self._resolved: dict[tuple[str, torch.dtype], str] = {}

    def resolve(self, device: torch.device, dtype: torch.dtype) -> str:
        """The backend used for tensors of this device type and dtype (chosen once, then cached).
        Call it before ``torch.compile`` so the probe does not run while tracing."""
        key = (device.type, dtype)
        name = self._resolved.get(key)
        if name is None:
            # Under a tracer (a whole model handed to torch.compile without engine.compile's
            # resolve_attention first) the probe's backward and its finiteness check cannot run:
            # choose by what imports, without probing.
            name = self.requested if self.requested != "auto" else _auto(device, dtype, probe=not torch.compiler.is_compiling())
            self._resolved[key] = name
            log.info("fastssl attention backend for %s/%s: %s%s", device.type, str(dtype).removeprefix("torch."), name,
                     "" if self.requested == "auto" else " (forced)")
        return name

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttnLayout) -> torch.Tensor:
        if q.ndim != 3 or k.shape != v.shape or q.shape[1:] != k.shape[1:]:
            raise ValueError(f"q [Tq,H,Dh], k and v [Tk,H,Dh] expected, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
        # Skipped while compiling: the totals are sums over every sequence's length, and comparing them
        # with the token count would pin that count to a constant (one graph per batch size).
        if not torch.compiler.is_compiling() and (q.shape[0] != layout.total_q or k.shape[0] != layout.total_k):
            raise ValueError(f"layout holds {layout.total_q} queries / {layout.total_k} keys, tensors {q.shape[0]} / {k.shape[0]}")
        return _IMPLS[self.resolve(q.device, q.dtype)](q, k, v, layout)

    def __repr__(self) -> str:
        return f"AttentionDispatch(requested={self.requested!r}, resolved={self._resolved})"
