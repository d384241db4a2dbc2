"""Variable-length (block-diagonal) attention over packed sequences, with one backend per pack.

Shapes: q ``[Tq, H, Dh]``, k / v ``[Tk, H, Dh]`` packed as described by an ``AttnLayout``;
the result is ``[Tq, H, Dh]``. Query i attends to key j only if both belong to the same sequence;
scale 1/sqrt(Dh) (timm's ``Attention``); no dropout (SSL pre-training runs with attn_drop = 0).

Backends
- ``sdpa_grouped``: one ``scaled_dot_product_attention`` call per *run* (consecutive sequences of
  equal length, see ``layout.Run``), each a dense ``[count, H, len, Dh]`` batch taken as a strided
  view of the packed tensor, so no gather, no mask, no padding; on CUDA in fp16/bf16 SDPA runs its
  flash kernel on it. Packs of views have a handful of runs. Any device, any dtype.
- ``flex``: FlexAttention over the whole pack as one ``[1, H, T, Dh]`` sequence with a
  block-diagonal ``BlockMask`` built on the device from the run structure (``flex_block_mask``,
  cached per structure). Its 128×128 tiles hold several short sequences each, where a per-sequence
  kernel (flash, varlen) gives every 13- to 50-token sequence a whole 128-row tile; measured slower
  than dense flash at 25 tokens all the same (the rule), so it runs when forced. CUDA; forward only
  on CPU (torch has no CPU backward for it).
- ``sdpa_tiles``: short equal-length sequences folded g at a time into one "tile" sequence of
  g·len ≤ 128 tokens (a free view when g divides the run) with a shared ``[g·len, g·len]``
  block-diagonal mask: SDPA's memory-efficient kernel packs several sequences per tile like flex,
  without compiling anything. Any device.
- ``varlen``: ``torch.nn.attention.varlen.varlen_attn`` (flash with cu_seqlens; torch ≥ 2.10,
  CUDA, fp16/bf16). One kernel for the whole pack, one tile row-block per sequence.
- ``xformers``: ``memory_efficient_attention`` with a ``BlockDiagonalMask`` (CUDA; only used by
  ``auto`` when torch has neither varlen nor flex, i.e. torch < 2.5).
- ``sdpa_mask``: one SDPA call with a ``[Tq, Tk]`` boolean block-diagonal mask. O(T²); for tests
  and for CPU packs of many short runs.
- ``sdpa_cpu``: the CPU default: ``sdpa_grouped`` when the pack has at most ``_CPU_MAX_RUNS`` runs,
  ``sdpa_mask`` otherwise.

Choice (``"auto"``): what *can* run is probed once per (device type, dtype) (``available``: a tiny
forward + backward per backend, never under a tracer); what *does* run is picked per pack by
``pick_backend`` from the layout's lengths: the one rule, with its thresholds and the measurements
behind them (notes/vit.md). Any backend can be forced by name (``AttentionDispatch("flex")`` / the
ViT's ``attn_backend=``). Everything a backend needs on the device (offsets, block masks) is built
from host ints on the device, never copied from host memory, so no step syncs and every backend
can sit inside a ``torch.compile`` region (``prepare`` builds the block mask before the region).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Literal

import torch
import torch.nn.functional as F

from fastssl.models.vit.layout import AttnLayout, length_groups, seq_ids

log = logging.getLogger(__name__)

BackendName = Literal["auto", "xformers", "varlen", "flex", "sdpa_tiles", "sdpa_grouped", "sdpa_mask", "sdpa_cpu"]
BACKENDS: tuple[str, ...] = ("xformers", "varlen", "flex", "sdpa_tiles", "sdpa_grouped", "sdpa_mask", "sdpa_cpu")
_HALF = (torch.float16, torch.bfloat16)

# ---------------------------------------------------------------- the rule
# The one place where the backend of a pack is decided (``auto``). Inputs: the pack's lengths (host
# ints) and what runs here. Measured (notes/vit.md, H200, ViT-B, B = 64, fwd + bwd): M-MoCo 8
# chunks (4 × 26 + 4 × 25 tokens) with flex 31.3 ms wall / 25.9 ms kernels, the padded batch (flash
# per sequence, masked) 26.3 / 25.4; on main dense flash per sequence (8 × 25, no mask) 23.6 and
# varlen 29.1. So a per-sequence flash kernel over a dense run of equal lengths beats packing short
# sequences into flex tiles even at 25 tokens, and a call per run beats one varlen call:
# - at most MAX_DENSE_CALLS runs of equal lengths (every pack of views here: 1-3 runs) → one dense
#   SDPA call per run on a free strided view, no mask, no padding (SDPA's flash kernel);
# - more runs (many distinct lengths) → one varlen call for the whole pack (a call per run would be
#   launch-bound), else still one call per run.
# flex and sdpa_tiles (several short sequences per tile) are measured by bench/attention.py's sweep
# and run when forced; auto does not pick them until a measurement shows them ahead.
MAX_DENSE_CALLS = 4


def pick_backend(layout: AttnLayout, device: torch.device, dtype: torch.dtype, available: frozenset[str]) -> str:
    """The backend ``auto`` runs for this pack (``available``: what runs on this device and dtype)."""
    if device.type != "cuda":
        return "sdpa_cpu"
    if len(layout.runs) <= MAX_DENSE_CALLS or not ({"varlen", "xformers"} & available):
        return "sdpa_grouped"
    return "varlen" if "varlen" in available else "xformers"


# ---------------------------------------------------------------- backends
def attend_sdpa_mask(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttnLayout) -> torch.Tensor:
    """One SDPA call, [1, H, T, Dh], with the block-diagonal boolean mask."""
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0),
        attn_mask=layout.block_mask,
    )
    return out.squeeze(0).transpose(0, 1)


def _run_view(t: torch.Tensor, start: int, count: int, length: int) -> torch.Tensor:
    """``[count*length, H, Dh]`` slice -> ``[count, H, length, Dh]`` (strided view, no copy; no slice
    op when the run is the whole tensor: the usual one-run pack pays two view ops per operand)."""
    h, dh = t.shape[1], t.shape[2]
    if start or count * length != t.shape[0]:
        t = t[start:start + count * length]
    return t.view(count, length, h, dh).transpose(1, 2)


def attend_sdpa_grouped(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttnLayout) -> torch.Tensor:
    """One unmasked SDPA call per run of equal-length sequences; results concatenated in order."""
    h, dh = q.shape[1], q.shape[2]
    outs = []
    for r in layout.runs:
        o = F.scaled_dot_product_attention(_run_view(q, r.q_start, r.count, r.q_len), _run_view(k, r.k_start, r.count, r.k_len),
                                           _run_view(v, r.k_start, r.count, r.k_len))
        outs.append(o.transpose(1, 2).reshape(r.count * r.q_len, h, dh))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)


# Tokens per tile for sdpa_tiles: the flash / memory-efficient kernels' query block on sm_80/90.
TILE_TOKENS = 128


def tile_group(count: int, length: int) -> int:
    """Sequences per tile for a run of ``count`` sequences of ``length`` tokens: the largest g with
    g·length ≤ TILE_TOKENS that divides ``count`` (so the tiles are a view, not a copy)."""
    g = max(1, min(count, TILE_TOKENS // length))
    while count % g:
        g -= 1
    return g


def _tile_mask(g: int, length: int, device: torch.device) -> torch.Tensor:
    i = torch.arange(g * length, device=device) // length
    return i.unsqueeze(1) == i.unsqueeze(0)


def attend_sdpa_tiles(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttnLayout) -> torch.Tensor:
    """Self-attention: per run, g sequences per tile with a shared block-diagonal mask (see above);
    a run whose sequences fill a tile alone (g = 1) takes the unmasked dense call."""
    h, dh = q.shape[1], q.shape[2]
    outs = []
    for r in layout.runs:
        if r.q_len != r.k_len:
            raise ValueError("sdpa_tiles is for self-attention layouts")
        g = tile_group(r.count, r.q_len)
        tl = g * r.q_len
        mask = _tile_mask(g, r.q_len, q.device) if g > 1 else None
        o = F.scaled_dot_product_attention(_run_view(q, r.q_start, r.count // g, tl), _run_view(k, r.k_start, r.count // g, tl),
                                           _run_view(v, r.k_start, r.count // g, tl), attn_mask=mask)
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
    torch 2.10/2.11 and 2.13, the first seven parameters (q, k, v, cu_q, cu_k, max_q, max_k) do not.
    cu_seqlens are device tensors computed on the device; the max lengths are host ints (static)."""
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn(q, k, v, layout.cu_q, layout.cu_k, layout.max_q, layout.max_k)


def attend_xformers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttnLayout) -> torch.Tensor:
    """xformers memory-efficient attention on a [1, T, H, Dh] batch with a block-diagonal bias."""
    import xformers.ops as xops

    out = xops.memory_efficient_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), attn_bias=layout.xformers_bias)
    return out.squeeze(0)


# ---------------------------------------------------------------- flex
FLEX_BLOCK = 128  # FlexAttention's default sparse block (tile) size
_FLEX_MASKS: OrderedDict = OrderedDict()  # structure key -> BlockMask; the structures of a run repeat every step
_FLEX_CACHE_SIZE = 32
_flex_compiled = None


def _flex_key(layout: AttnLayout) -> tuple:
    k = None if layout.k_lens is layout.q_lens else tuple(length_groups(layout.k_lens))
    return (tuple(length_groups(layout.q_lens)), k, str(layout.device))


def _padded_ids(lens: tuple[int, ...], device: torch.device, blocks: int, pad_id: int) -> torch.Tensor:
    """Sequence id per token, padded to ``blocks`` whole tiles with ``pad_id`` (the tail tile's extra
    rows/columns read a valid entry that matches nothing)."""
    ids = seq_ids(lens, device).to(torch.int32)
    pad = blocks * FLEX_BLOCK - ids.shape[0]
    return torch.cat([ids, ids.new_full((pad,), pad_id)]) if pad else ids


def build_flex_block_mask(layout: AttnLayout):
    """The block-diagonal ``BlockMask`` of a layout, built on the device without materialising the
    [Tq, Tk] mask: tile (i, j) is needed when the sequence-id ranges of query tile i and key tile j
    intersect (ids are sorted), and *full* (no mask evaluation inside) when both tiles lie inside
    one and the same sequence; the rest are partial tiles where ``mask_mod`` compares ids."""
    from torch.nn.attention.flex_attention import BlockMask

    dev, s = layout.device, layout.num_seqs
    nq, nk = -(-layout.total_q // FLEX_BLOCK), -(-layout.total_k // FLEX_BLOCK)
    # padding ids s (queries) and s + 1 (keys): a padded key never matches a padded query
    doc_q = _padded_ids(layout.q_lens, dev, nq, s)
    doc_k = _padded_ids(layout.k_lens, dev, nk, s + 1)
    q_lo, q_hi = doc_q.view(nq, FLEX_BLOCK)[:, 0], doc_q.view(nq, FLEX_BLOCK)[:, -1]
    k_lo, k_hi = doc_k.view(nk, FLEX_BLOCK)[:, 0], doc_k.view(nk, FLEX_BLOCK)[:, -1]
    any_ = (q_lo.unsqueeze(1) <= k_hi.unsqueeze(0)) & (k_lo.unsqueeze(0) <= q_hi.unsqueeze(1))
    one_q, one_k = q_lo == q_hi, k_lo == k_hi
    full = any_ & one_q.unsqueeze(1) & one_k.unsqueeze(0) & (q_lo.unsqueeze(1) == k_lo.unsqueeze(0))
    partial = any_ & ~full

    def ordered(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = m.to(torch.int32)
        idx = torch.argsort(m, dim=-1, descending=True, stable=True).to(torch.int32)
        return m.sum(-1).to(torch.int32)[None, None].contiguous(), idx[None, None].contiguous()

    def mask_mod(b, h, q_idx, kv_idx):
        return doc_q[q_idx] == doc_k[kv_idx]

    kv_num, kv_idx = ordered(partial)
    full_num, full_idx = ordered(full)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=FLEX_BLOCK, mask_mod=mask_mod,
                                    seq_lengths=(layout.total_q, layout.total_k))


def flex_block_mask(layout: AttnLayout):
    """``build_flex_block_mask`` cached per layout structure (lengths and device): built at the
    first step, reused by every later step and every block. Built outside inference mode so that a
    mask first made during an evaluation can be saved for a later training backward."""
    if torch.compiler.is_compiling():  # inside a traced whole-model forward: no global cache
        return build_flex_block_mask(layout)
    key = _flex_key(layout)
    mask = _FLEX_MASKS.get(key)
    if mask is None:
        with torch.inference_mode(False), torch.no_grad():
            mask = build_flex_block_mask(layout)
        _FLEX_MASKS[key] = mask
        while len(_FLEX_MASKS) > _FLEX_CACHE_SIZE:
            _FLEX_MASKS.popitem(last=False)
    else:
        _FLEX_MASKS.move_to_end(key)
    return mask


def _flex_fn():
    """flex_attention must run compiled (eager it is an unfused reference); inside a region that
    is already being compiled it is traced as it is."""
    from torch.nn.attention.flex_attention import flex_attention

    if torch.compiler.is_compiling():
        return flex_attention
    global _flex_compiled
    if _flex_compiled is None:
        # automatic dynamic: the first pack shape compiles static, a second one recompiles with the
        # token count symbolic and every later shape reuses that (grad and no-grad are a graph each).
        # Dynamo's per-code limit is raised so that odd shapes never send flex back to eager.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        _flex_compiled = torch.compile(flex_attention, dynamic=None)
    return _flex_compiled


def attend_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttnLayout) -> torch.Tensor:
    """FlexAttention over the pack as one sequence with the block-diagonal block mask."""
    mask = layout.flex_mask if layout.flex_mask is not None else flex_block_mask(layout)
    as4 = lambda t: t.transpose(0, 1).unsqueeze(0)  # noqa: E731  [T, H, Dh] -> [1, H, T, Dh]
    fn = _flex_fn() if q.device.type == "cuda" else _flex_eager()
    out = fn(as4(q), as4(k), as4(v), block_mask=mask)
    return out.squeeze(0).transpose(0, 1)


def _flex_eager():
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention


_IMPLS = {
    "xformers": attend_xformers,
    "varlen": attend_varlen,
    "flex": attend_flex,
    "sdpa_tiles": attend_sdpa_tiles,
    "sdpa_grouped": attend_sdpa_grouped,
    "sdpa_mask": attend_sdpa_mask,
    "sdpa_cpu": attend_sdpa_cpu,
}


# ---------------------------------------------------------------- availability
def _probe_error(name: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """None when ``name`` runs forward and backward here, else why not (one line). A tiny two-sequence
    pack, lengths 3 and 5.

    With gradients on whatever the caller's mode: an EMA target's first forward (its own dispatch, a
    deep copy's) runs under ``no_grad``, where the backward would fail and drop the backend silently."""
    try:
        with torch.inference_mode(False), torch.enable_grad():
            layout = AttnLayout.build((3, 5), None, device)
            q, k, v = (torch.randn(8, 2, 16, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
            out = _IMPLS[name](q, k, v, layout)
            out.float().sum().backward()
            return None if bool(torch.isfinite(q.grad).all()) else "non-finite gradients"
    except Exception as e:  # noqa: BLE001  (any failure means: not usable here)
        first = str(e).split(". ")[0].splitlines()[0] if str(e) else ""  # the first sentence: torch's can run long
        return f"{type(e).__name__}: {first[:160]}" if first else type(e).__name__


def _probe(name: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Does ``name`` run forward and backward here? (``_probe_error``; the reason is logged.)"""
    why = _probe_error(name, device, dtype)
    if why is not None:
        log.info("attention backend %s unavailable on %s/%s: %s", name, device.type, dtype, why)
    return why is None


def forced_problem(backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why a forced ``model.attn_backend`` cannot run on this device in this dtype (its probe fails), or
    None (always for ``auto``). Asked once at set-up: a forced backend that cannot run here ends the run
    in one line before any step, not with a traceback from the first forward."""
    if backend == "auto" or (why := _probe_error(backend, device, dtype)) is None:
        return None
    here = ", ".join(sorted(available(device, dtype)))
    return (f"model.attn_backend={backend} does not run on {device.type} in {str(dtype).removeprefix('torch.')} ({why}); "
            f"use auto or one that runs here: {here}")


def _has_varlen() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def _has_flex() -> bool:
    try:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return hasattr(BlockMask, "from_kv_blocks")


def available(device: torch.device, dtype: torch.dtype, probe: bool = True) -> frozenset[str]:
    """Backends that run forward and backward on this device type and dtype. On CUDA varlen (and
    xformers) are probed (``probe=False``, under a tracer: by what imports); flex counts when it
    imports (an eager flex failure at run time drops it, see ``AttentionDispatch.__call__``)."""
    if device.type != "cuda":
        return frozenset({"sdpa_cpu", "sdpa_grouped", "sdpa_mask", "sdpa_tiles"})
    names = {"sdpa_grouped", "sdpa_mask", "sdpa_tiles"}
    ok = (lambda n: _probe(n, device, dtype)) if probe else (lambda n: True)  # noqa: E731
    if dtype in _HALF and _has_varlen() and ok("varlen"):
        names.add("varlen")
    if _has_flex():  # not probed: its probe compiles (~10 s) and auto does not pick it (see the rule)
        names.add("flex")
    if probe and not ({"varlen", "flex"} & names):  # old torch: xformers, if its build matches torch
        try:
            import xformers.ops  # noqa: F401

            if _probe("xformers", device, dtype):
                names.add("xformers")
        except Exception:  # noqa: BLE001  (ImportError or a broken build)
            pass
    return frozenset(names)


class AttentionDispatch:
    """Chooses the attention backend; one instance is shared by all blocks of a model.

    ``backend``: "auto" (``pick_backend`` per pack among ``available`` backends, probed once per
    device type and dtype and logged) or a name from ``BACKENDS`` to force it.
    """

    def __init__(self, backend: BackendName = "auto") -> None:
        self.set_backend(backend)

    def set_backend(self, backend: BackendName) -> None:
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"attention backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
        self.requested = backend
        self._available: dict[tuple[str, torch.dtype], frozenset[str]] = {}
        self._logged: set[tuple] = set()

    def resolve(self, device: torch.device, dtype: torch.dtype) -> str:
        """Probe (once per device type and dtype) what runs, and return the forced backend or "auto".
        Call it before ``torch.compile`` so the probes do not run under the tracer."""
        key = (device.type, dtype)
        if self.requested == "auto" and key not in self._available:
            self._available[key] = available(device, dtype, probe=not torch.compiler.is_compiling())
            log.info("fastssl attention on %s/%s: auto over %s", device.type, str(dtype).removeprefix("torch."),
                     ", ".join(sorted(self._available[key])))
        return self.requested

    def pick(self, layout: AttnLayout, device: torch.device, dtype: torch.dtype) -> str:
        """The backend that runs for this pack (forced, or ``pick_backend``), logged once per choice."""
        if self.resolve(device, dtype) != "auto":
            return self.requested
        name = pick_backend(layout, device, dtype, self._available[(device.type, dtype)])
        if not torch.compiler.is_compiling():
            key = (device.type, dtype, name, len(layout.runs), layout.max_k)
            if key not in self._logged:
                self._logged.add(key)
                log.info("fastssl attention: %s for %d sequences in %d runs (mean %.1f, max %d keys)", name,
                         layout.num_seqs, len(layout.runs), layout.total_k / layout.num_seqs, layout.max_k)
        return name

    def prepare(self, layout: AttnLayout, device: torch.device, dtype: torch.dtype) -> None:
        """Build what the picked backend needs from the device (flex's block mask) *now*, outside
        the compiled blocks that will use it; eager callers may skip it (built at first use)."""
        name = self.pick(layout, device, dtype)
        if self.requested == "auto":
            object.__setattr__(layout, "backend", name)
        if name == "flex" and layout.flex_mask is None:
            object.__setattr__(layout, "flex_mask", flex_block_mask(layout))

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttnLayout) -> torch.Tensor:
        if q.ndim != 3 or k.shape != v.shape or q.shape[1:] != k.shape[1:]:
            raise ValueError(f"q [Tq,H,Dh], k and v [Tk,H,Dh] expected, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
        # Skipped while compiling: the totals are sums over every sequence's length, and comparing them
        # with the token count would pin that count to a constant (one graph per batch size).
        if not torch.compiler.is_compiling() and (q.shape[0] != layout.total_q or k.shape[0] != layout.total_k):
            raise ValueError(f"layout holds {layout.total_q} queries / {layout.total_k} keys, tensors {q.shape[0]} / {k.shape[0]}")
        if self.requested != "auto":
            return _IMPLS[self.requested](q, k, v, layout)
        # prepared: no per-call rule (and nothing for a tracer to guard on)
        name = layout.backend if layout.backend is not None else self.pick(layout, q.device, q.dtype)
        if name != "flex" or torch.compiler.is_compiling():
            return _IMPLS[name](q, k, v, layout)
        try:
            return attend_flex(q, k, v, layout)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001  (flex compiles per shape; a shape its probe did not cover may fail)
            key = (q.device.type, q.dtype)
            self._available[key] = self._available.get(key, frozenset()) - {"flex"}
            log.warning("fastssl attention: flex failed for %d sequences (%s: %s); auto continues without it",
                        layout.num_seqs, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            object.__setattr__(layout, "backend", None)
            return self(q, k, v, layout)

    def __repr__(self) -> str:
        return f"AttentionDispatch(requested={self.requested!r}, available={self._available})"
