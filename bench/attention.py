"""Packed variable-length ViT vs padding vs separate calls vs torch.compile, on the view mixes the methods produce.

Model: ViT-B/16 (224 px, D 768, depth 12, 12 heads), parameters and activations in bf16 on CUDA.
Cases (tokens per image; in order of priority, the order they run in):
  mmoco-8     M-MoCo online view, 8 chunks, every patch kept (the method's default): 4 × 26 + 4 × 25
  multicrop   2 global 224 px crops + 6 local 96 px crops (DINO / SwAV): 2 × 197 + 6 × 37
  mae         MAE-style masked view, 75 % of the 196 patches removed: 1 + 49
  dac         DAC pair: 112 px resized view (49 patches) + 224 px masked view keeping 49: 50 + 50
  mmoco-4     4 chunks of 49: 4 × 50
  mmoco-16    16 chunks: 4 × 14 + 12 × 13
  moco-full   the same image unchunked (MoCo v3): 197 (reference: what chunking saves)
Providers:
  packed          ``PackedViT.encode(views)`` eager, attention backend by the rule (``pick_backend``;
                  the one picked is ``extra.backend``)
  packed-compile  the same with every block compiled in place (``engine.compile``'s ``compile_regions``,
                  the trainer's path with ``engine.compile: true``)
  padded          the same tokens padded to the longest sequence, timm ``Block``s (SDPA) with a
                  key-padding mask (none when all lengths are equal: then it is the plain dense batch)
  padded-compile  ``torch.compile`` of the padded code (each timm block compiled, as timm does)
  separate        one ``encode`` call per view (a chunked view as n calls, one per chunk)
  packed:<b>      eager packed with backend b forced, for every other CUDA backend that runs (the
                  measurements behind the rule)
Timed: forward alone (no grad) and forward + backward of a scalar loss on all output tokens
(``bench.common.time_fn``: CUDA events around each call, i.e. wall time on the stream including
launch gaps), the kernel-only time of forward + backward (sum of the CUDA kernels' durations in a
profiler trace, ``extra.kernel_ms``), the first call's time (compilation, ``extra.first_s``) and peak memory.
Rows run most important first (``schedule``: packed and padded for every case, then the compiled
pair, separate calls, the backend sweep); each is printed as soon as it is done and the JSON is
rewritten after every row, so a time limit keeps what was measured; ``--budget-s`` skips what would
start after that many seconds (50 with ``--quick``, the GPU session's 60 s cap for this bench).

    python bench/attention.py --quick    # GPU: batch 64, every case's packed + padded rows first, <= 60 s
    python bench/attention.py            # GPU: batches 32, 64, 128
    python bench/attention.py --smoke    # tiny ViT, runs anywhere (CPU), not a measurement
"""
from __future__ import annotations

import copy
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import (  # noqa: E402
    Column, Record, device, measure_ceilings, ms, parse_args, peak_memory_mib, plot, run_guarded, sync, time_fn,
    write_results,
)
from bench.common import print_table as print_columns  # noqa: E402  (print_table here adds the target checks)
from fastssl.models import ChunkedView, ImageView, MaskedView, PackedViT  # noqa: E402
from fastssl.models.vit.attention import _IMPLS  # noqa: E402
from fastssl.models.vit.chunks import split_chunks  # noqa: E402

MAIN_PROVIDERS = ("packed", "packed-compile", "padded", "padded-compile", "separate")
SWEEP = ("sdpa_grouped", "flex", "sdpa_tiles", "varlen")  # CUDA backends measured besides the one picked
CASES = ("mmoco-8", "multicrop", "mae", "dac", "mmoco-4", "mmoco-16", "moco-full")
# Cases whose views (or chunks) differ in length: there the packed path must also beat separate calls.
DIFFER = ("mmoco-8", "mmoco-16", "multicrop")
# --quick must fit the GPU session's cap for this bench (60 s, imports included): what would start after
# QUICK_BUDGET_S is skipped, and a compiled provider starts only with COMPILE_HEADROOM_S left.
QUICK_BUDGET_S = 50.0
COMPILE_HEADROOM_S = 15.0
KERNEL_TIMED = ("packed", "packed-compile", "padded", "padded-compile")


def _extra_args(p):
    p.set_defaults(providers=",".join(MAIN_PROVIDERS + ("sweep",)))
    p.add_argument("--quick", action="store_true", help="GPU: one batch size (64), all cases and providers")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (overrides the defaults)")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ",".join(CASES))
    p.add_argument("--budget-s", type=float, default=None,
                   help="skip (recorded as skipped) what would start after this many seconds (default: 50 with --quick)")


def model_config(smoke: bool) -> dict:
    if smoke:
        return dict(img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=3)
    return dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12)


def make_views(case: str, batch: int, cfg: dict, dev, dtype) -> list:
    """The view mix of one case (sizes scale with the model: global = img_size, local ≈ 3/7 of it).
    Permutations and kept indices are drawn once, so every provider encodes the same tokens."""
    g, p = cfg["img_size"], cfg["patch_size"]
    n = (g // p) ** 2
    local = max(p, (g * 3 // 7) // p * p)  # 96 px for 224/16 (6×6 patches); 12 → 3×3 at 32/4
    half = g // 2  # DAC resized view: (g/2p)² patches = n/4
    img = lambda s: torch.randn(batch, 3, s, s, device=dev, dtype=dtype)  # noqa: E731
    perm = lambda: torch.argsort(torch.rand(batch, n, device=dev), dim=1)  # noqa: E731
    if case.startswith("mmoco-"):
        return [ChunkedView(img(g), n_chunks=int(case.split("-")[1]), perm=perm())]
    if case == "moco-full":
        return [ImageView(img(g))]
    if case == "multicrop":
        return [ImageView(img(g)) for _ in range(2)] + [ImageView(img(local)) for _ in range(6)]
    if case == "mae":
        return [MaskedView(img(g), perm()[:, :n // 4])]
    if case == "dac":
        keep = (half // p) ** 2
        return [ImageView(img(half)), MaskedView(img(g), perm()[:, :keep])]
    raise ValueError(case)


def separate_views(views) -> list:
    """One view per call; a chunked view becomes one masked view per chunk (n independent calls)."""
    out = []
    for v in views:
        if isinstance(v, ChunkedView):
            for grp in split_chunks(v.perm, v.n_chunks, equal=v.equal):  # [c, B, L]
                out += [MaskedView(v.images, grp[j]) for j in range(grp.shape[0])]
        else:
            out.append(v)
    return out


class Packed:
    def __init__(self, vit: PackedViT):
        self.vit = vit

    def __call__(self, views):
        return [self.vit.encode(views).hidden]


class Forced(Packed):
    """Packed with one backend forced (the blocks share the ViT's dispatcher: set it for the call;
    the backward does not consult it)."""

    def __init__(self, vit: PackedViT, backend: str):
        super().__init__(vit)
        self.backend = backend

    def __call__(self, views):
        old = self.vit.dispatch.requested
        self.vit.dispatch.requested = self.backend
        try:
            return super().__call__(views)
        finally:
            self.vit.dispatch.requested = old


class Separate(Packed):
    def __call__(self, views):
        return [self.vit.encode([v]).hidden for v in separate_views(views)]


class Padded:
    """Pad the packed tokens to [S, Lmax, D] and run timm's blocks with a key-padding mask
    (``compiled``: each timm block compiled in place, the way timm compiles a ViT)."""

    def __init__(self, vit: PackedViT, compiled: bool = False):
        self.vit = vit
        with torch.device(vit.pos_embed.device):  # timm's initialisation of ViT-B on the host takes seconds
            self.timm = vit.to_timm()
        if compiled:
            for blk in self.timm.blocks:
                blk.compile()

    def __call__(self, views):
        x, pack, _ = self.vit.pack(views)
        s, lmax, d = pack.num_seqs, pack.max_seqlen, x.shape[-1]
        cu = pack.cu_seqlens.long()
        lens = cu[1:] - cu[:-1]
        pos = torch.arange(pack.num_tokens, device=x.device) - cu[pack.token_seq]
        flat = pack.token_seq * lmax + pos  # where each packed token sits in the padded batch
        xp = x.new_zeros(s * lmax, d).index_copy(0, flat, x).view(s, lmax, d)
        mask = None
        if min(pack.seqlens) != lmax:  # [S, 1, 1, Lmax]: keys beyond a sequence's length are hidden
            mask = (torch.arange(lmax, device=x.device).unsqueeze(0) < lens.unsqueeze(1))[:, None, None, :]
        for blk in self.timm.blocks:
            xp = blk(xp, attn_mask=mask)
        return [self.timm.norm(xp).view(s * lmax, d)[flat]]


def schedule(batches: list[int], cases: list[str], providers: list[str]) -> list[tuple[int, str, str]]:
    """(batch, case, provider) in the order they run, most important first, so that a time limit
    cuts the least useful rows: packed and padded (eager) for every case; the compiled pair, case by
    case; separate calls where views differ in length, then the rest; the backend sweep last."""
    phases = [
        [p for p in providers if p in ("packed", "padded")],
        [p for p in providers if p.endswith("-compile")],
        [p for p in providers if p == "separate"],
        [p for p in providers if p.startswith("packed:")],
    ]
    order = []
    for b in batches:
        for k, phase in enumerate(phases):
            ranked = sorted(cases, key=lambda c: (k == 2 and c not in DIFFER, cases.index(c)))
            order += [(b, c, p) for c in ranked for p in phase]
    return order


def loss_of(outs) -> torch.Tensor:
    return sum(o.float().square().mean() for o in outs)


def kernel_ms(fn) -> tuple[float | None, dict | None]:
    """(sum of the CUDA kernels' durations of one ``fn()`` from a profiler trace: the time the GPU
    computes, without the launch gaps that wall time includes; what the host did in that call).

    The host summary is for the host-bound cases (MAE / DAC packed ran 0.74× / 0.79× padded on the
    H200 with fewer kernel-ms, a gap that does not reproduce on CPU, notes/vit.md): the ops with the
    most self CPU time, how many ATen ops and CUDA kernels one call issues, and the CUDA runtime calls
    that make the host wait (synchronisations, device-to-host copies; the one after ``fn`` is not counted)."""
    if not torch.cuda.is_available():
        return None, None
    try:
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            sync()
        events = prof.key_averages()
        us = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA)
        cpu = [e for e in events if e.device_type == DeviceType.CPU]
        waits = sum(e.count for e in cpu if "Synchronize" in e.key or e.key in ("cudaMemcpy", "cudaStreamWaitEvent"))
        host = {
            "top_self_cpu_ms": [(e.key[:70], round(e.self_cpu_time_total / 1e3, 3), e.count)
                                for e in sorted(cpu, key=lambda e: -e.self_cpu_time_total)[:12]],
            "aten_ops": sum(e.count for e in cpu if e.key.startswith("aten::")),
            "cuda_kernels": sum(e.count for e in events if e.device_type == DeviceType.CUDA),
            "host_waits": max(waits - 1, 0),  # less the sync() after fn
        }
        return (us / 1e3 if us > 0 else None), host
    except Exception:  # noqa: BLE001  (a profiler problem must not cost the measurement)
        return None, None


def bench_one(provider: str, fn, params, views, smoke: bool, want_kernel: bool, want_fwd: bool = True) -> Record:
    def fwd():
        with torch.no_grad():
            fn(views)

    def fwd_bwd():
        for p in params:
            p.grad = None
        loss_of(fn(views)).backward()

    t0 = time.perf_counter()
    fwd_bwd()  # warm-up: compilation, backend probe, block masks, allocator
    if want_fwd:
        fwd()  # a compiled region compiles again without grad
    sync()
    first_s = time.perf_counter() - t0
    fwd_t = time_fn(fwd, smoke=smoke) if want_fwd else None
    total_t = time_fn(fwd_bwd, smoke=smoke)
    k, host = kernel_ms(fwd_bwd) if want_kernel else (None, None)
    for p in params:  # so that the baseline of the peak-memory measurement holds no gradients
        p.grad = None
    rec = Record(provider=provider, case={}, fwd=fwd_t, total=total_t, peak_mem_mib=peak_memory_mib(fwd_bwd))
    rec.extra = dict(first_s=round(first_s, 2), kernel_ms=k, host=host)
    return rec


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], _extra_args)
    start = time.perf_counter()
    dev = device()
    cuda = dev.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    cfg = model_config(args.smoke)
    batches = [int(b) for b in args.batches.split(",")] if args.batches else ([2] if args.smoke else [64] if args.quick else [32, 64, 128])
    cases = [c for c in args.cases.split(",") if c]
    budget = args.budget_s if args.budget_s is not None else (QUICK_BUDGET_S if args.quick else math.inf)
    wanted = [p for p in args.providers.split(",") if p]
    unknown = set(wanted) - set(MAIN_PROVIDERS) - {"sweep"} - {f"packed:{b}" for b in _IMPLS} - set(_IMPLS)
    if unknown or set(cases) - set(CASES):
        raise SystemExit(f"unknown providers/cases {sorted(unknown | (set(cases) - set(CASES)))}")

    torch.manual_seed(0)
    with torch.device(dev):  # initialised where it runs (timm's init of ViT-B on the host takes seconds)
        vit = PackedViT(**cfg).to(dtype)
    vit.attn_backend(dev, dtype)  # probes what runs here (logged), before any timing
    avail = vit.dispatch._available.get((dev.type, dtype), frozenset()) if cuda else frozenset()

    def make_runner(name: str):
        """(callable, its parameters), built at its first row (a failure becomes that row's error)."""
        if name == "packed":
            return Packed(vit), list(vit.parameters())
        if name == "separate":
            return Separate(vit), list(vit.parameters())
        if name == "packed-compile":
            from fastssl.engine.compile import compile_regions

            vc = copy.deepcopy(vit)
            compile_regions(vc, "default", dev, dtype)
            return Packed(vc), list(vc.parameters())
        if name.startswith("packed:"):
            return Forced(vit, name.split(":", 1)[1]), list(vit.parameters())
        pad = Padded(vit, compiled=name == "padded-compile")
        return pad, list(pad.timm.parameters())

    providers = [p for p in MAIN_PROVIDERS if p in wanted]
    sweep = [b for b in SWEEP if b in avail] if "sweep" in wanted else []
    sweep += [p.split(":", 1)[1] if p.startswith("packed:") else p for p in wanted if p in _IMPLS or p.startswith("packed:")]
    providers += [f"packed:{b}" for b in dict.fromkeys(sweep)]
    built: dict[str, tuple] = {}

    def runner(name: str) -> tuple:
        if name not in built:
            built[name] = make_runner(name)
        return built[name]

    ceilings = measure_ceilings(smoke=args.smoke)
    records: list[Record] = []
    meta = dict(model=cfg, dtype=str(dtype), batches=batches, available=sorted(avail), budget_s=budget)
    info: dict[tuple[str, int], tuple] = {}  # (case, batch) -> (views, tokens, padded tokens, picked backend)
    path = None
    for batch, case, prov in schedule(batches, cases, providers):
        if (case, batch) not in info:
            views = make_views(case, batch, cfg, dev, dtype)
            x, pack, _ = vit.pack(views)
            info[(case, batch)] = (views, pack.num_tokens, pack.num_seqs * pack.max_seqlen, vit.dispatch.pick(pack.layout, dev, dtype))
            del x, pack
        views, tokens, padded_tokens, picked = info[(case, batch)]
        if prov.startswith("packed:") and prov.split(":")[1] == picked:
            continue  # the same as "packed"
        rec_case = dict(case=case, batch=batch, tokens=tokens)
        # a compiled provider's first call may compile for tens of seconds: it needs headroom
        need = COMPILE_HEADROOM_S if prov.endswith("-compile") else 0.0
        if time.perf_counter() - start > budget - need:
            r = Record(provider=prov, case=rec_case, error=f"skipped: time budget {budget:.0f} s")
        else:
            # --quick: compiled providers skip the forward-only timing (a no-grad graph is a second
            # compile), the backend sweep too (fwd + bwd is what the rule is set from)
            r = run_guarded(prov, rec_case, lambda prov=prov: bench_one(
                prov, *runner(prov), views, args.smoke, cuda and prov in KERNEL_TIMED,
                want_fwd=not (args.quick and (prov.endswith("-compile") or prov.startswith("packed:")))))
        backend = picked if prov in ("packed", "packed-compile") else "auto" if prov == "separate" else (
            prov.split(":")[1] if prov.startswith("packed:") else "timm-sdpa")
        r.extra = dict(r.extra, backend=backend, padded_tokens=padded_tokens if prov.startswith("padded") else tokens)
        records.append(r)
        elapsed = time.perf_counter() - start
        if r.error is None:
            k = r.extra.get("kernel_ms")
            fwd_ms = f"{r.fwd.median:8.3f}" if r.fwd else f"{'-':>8s}"
            print(f"{case:10s} B={batch:4d} {prov:20s} fwd {fwd_ms} ms  fwd+bwd {r.total.median:8.3f} ms"
                  + (f"  kernels {k:8.3f} ms" if k else "") + f"  first {r.extra['first_s']:5.1f} s  [{backend}]  at {elapsed:.0f} s",
                  flush=True)
        elif not r.error.startswith("skipped"):
            print(f"{case:10s} B={batch:4d} {prov:20s} ERROR {r.error.splitlines()[0][:150]}", flush=True)
        # after every row: a time limit that ends the run keeps everything measured so far
        path = write_results("attention", records, ceilings, args, dict(meta, elapsed_s=round(elapsed, 1)))
    if path is None:
        return
    total_ms = lambda r: r.total.median if r.total else None  # noqa: E731
    try:
        plot(path, [("forward + backward", total_ms, "ms"), ("peak memory (fwd + bwd)", lambda r: r.peak_mem_mib, "MiB")],
             x_key="batch", series_key=lambda c: c["case"])
    except Exception as e:  # noqa: BLE001  (the JSON is what matters)
        print(f"plot failed: {type(e).__name__}: {e}")
    print_table(records, path)


def print_table(records: list[Record], path: Path) -> None:
    by = {(r.case["case"], r.case["batch"], r.provider): r for r in records}
    print(f"\nresults: {path}")

    def vs(r: Record, base: str) -> float | None:
        o = by.get((r.case["case"], r.case["batch"], base))
        return o.total.median / r.total.median if o and not o.error and r.total else None

    print_columns(records, [
        Column("case", 11, lambda r: r.case["case"]), Column("B", 5, lambda r: r.case["batch"]),
        Column("provider", 21, lambda r: r.provider), Column("backend", 13, lambda r: r.extra.get("backend")),
        Column("fwd ms", 9, lambda r: ms(r.fwd), ".3f"), Column("fwd+bwd", 9, lambda r: ms(r.total), ".3f"),
        Column("kernels", 9, lambda r: r.extra.get("kernel_ms"), ".3f"), Column("peak MiB", 9, lambda r: r.peak_mem_mib, ".0f"),
        Column("vs pad", 8, lambda r: vs(r, "padded"), ".2f"), Column("vs padc", 8, lambda r: vs(r, "padded-compile"), ".2f"),
        Column("vs sep", 8, lambda r: vs(r, "separate"), ".2f"),
    ])
    # The targets of issue 22, stated as checks on the numbers (meaningful on a GPU only). fastssl's
    # path: the packed encoder, eager ("packed") and with engine.compile ("packed-compile"); the
    # better of the two is what a user gets by switching engine.compile on or off.
    print("\ntargets: fastssl >= 1.2x padded, >= padded-compile, >= 3x separate where views differ in length")
    for (c, b, prov), r in sorted(by.items()):
        if prov != "packed" or r.error:
            continue
        mine = [x for x in (r, by.get((c, b, "packed-compile"))) if x is not None and not x.error]
        best = min(mine, key=lambda x: x.total.median)
        checks = []
        for base, want in (("padded", 1.2), ("padded-compile", 1.0)) + ((("separate", 3.0),) if c in DIFFER else ()):
            o = by.get((c, b, base))
            if o is None or o.error:
                continue
            speed = o.total.median / best.total.median
            checks.append(f"{speed:.2f}x {base} (>= {want}: {'met' if speed >= want else 'MISSED'})")
        print(f"{c:10s} B={b:4d} best {best.provider} [{best.extra.get('backend')}] {best.total.median:.3f} ms: " + "; ".join(checks))
        sweep = {p: x for (cc, bb, p), x in by.items() if cc == c and bb == b and (p == "packed" or p.startswith("packed:")) and not x.error}
        if sweep:
            fastest = min(sweep.values(), key=lambda x: x.total.median)
            print(f"{'':10s} rule: picked {r.extra.get('backend')} {r.total.median:.3f} ms; fastest eager backend "
                  f"{fastest.extra.get('backend')} {fastest.total.median:.3f} ms"
                  + ("" if fastest is r else f" ({r.total.median / fastest.total.median:.2f}x better: revise the rule)"))
    if any(math.isnan(r.total.median) for r in records if r.total):
        print("WARNING: NaN timings")


if __name__ == "__main__":
    main()
