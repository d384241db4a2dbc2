"""Benchmark of the MAE token ops: eager MAE-style code vs torch.compile of it vs the Triton kernels.

Cases (ViT-B, 224 px, p = 16, L = 196, bf16 activations and parameters):
  gather          encoder side, D = 768: kept tokens + pos embed; backward to x and pos
  scatter         decoder side, D = 512 (``--scatter-dim``): kept tokens + mask token + pos embed;
                  backward to all three
  patchify_noise  CAN's noisy kept patches + noise + MAE-normalised target from the image (no backward)
over mask ratio {0.75, 0.5} and B {64, 256, 1024}. pos_embed requires grad here (MAE keeps its
sin-cos table fixed; a learned one is the costlier case, so it is the one timed).

Providers: eager, compile (torch.compile of the eager code), triton (fastssl.ops, this tree),
triton_jit (the same kernels with every launch through Triton's JITFunction.run instead of
fastssl.kernels.launch: the host cost of the launch path, B = 256 only under --quick) and triton_main
(main's kernels before issue 22, frozen in bench/_tokens_main.py: before / after in one run). Each case is timed two ways:
  wall    triton.testing.do_bench (device events around the call, L2 flushed before each call):
          what a training step sees, host overheads (Python, launches, allocations) included;
  kernel  the device time of the kernels alone (torch.profiler, CUDA activity, summed per call,
          L2 flushed before each call and the flush excluded): what the kernels cost.
Bytes that must move: every input the op needs read once (only the kept rows of x for gather) and
every output written once (dx in full: its zeros are the gradient too), against a large device
copy measured in the same run (``bench.common.measure_ceilings``): "% copy".

    python bench/tokens.py            # full GPU sweep -> bench/results/tokens-<device>.{json,png}
    python bench/tokens.py --quick    # B 1024 and 256, ratio 0.75: eager + triton rows first, then compile,
                                      # triton_jit, main's kernels; JSON rewritten after every row (a cap keeps it)
    python bench/tokens.py --quick --sweep   # + the Triton launch-table sweep (kernel-only), last
    python bench/tokens.py --smoke    # tiny sweep that runs anywhere (CPU: Triton interpreter)
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

if not torch.cuda.is_available():  # the kernels run in the interpreter on CPU (smoke only)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bench.common import (  # noqa: E402
    Column, Record, derive_speedups, device, free_memory, measure_ceilings, ms, parse_args, peak_memory_mib, plot, print_table,
    run_guarded, time_fn, write_results,
)
from fastssl.ops import gather_tokens, patchify_noise, random_masking, scatter_tokens  # noqa: E402

# ----------------------------------------------------------------------------- eager MAE-style code


def eager_gather(x, pos, ids_keep):
    """MAE forward_encoder: add the embedding to every token, then gather the kept ones."""
    x = x + pos.unsqueeze(0)
    return torch.gather(x, 1, ids_keep.unsqueeze(-1).repeat(1, 1, x.shape[2]))


def eager_scatter(x, mask_token, pos, ids_restore):
    """MAE forward_decoder: append mask tokens, unshuffle with ids_restore, add the embedding."""
    b, k, d = x.shape
    mask_tokens = mask_token.reshape(1, 1, d).repeat(b, ids_restore.shape[1] - k, 1)
    x_ = torch.cat([x, mask_tokens], dim=1)
    x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, d))
    return x_ + pos.unsqueeze(0)


def eager_patchify_noise(imgs, sigma, ids_keep, p: int):
    """CAN-style: noise the image, patchify image and noise (MAE einsum), keep, normalise target."""
    n, c, h, w = imgs.shape

    def patchify(t):
        t = t.reshape(n, c, h // p, p, w // p, p)
        return torch.einsum("nchpwq->nhwpqc", t).reshape(n, (h // p) * (w // p), p * p * c)

    noise_img = sigma.reshape(-1, 1, 1, 1).to(imgs.dtype) * torch.randn_like(imgs)
    idx = ids_keep.unsqueeze(-1).repeat(1, 1, p * p * c)
    inputs = torch.gather(patchify(imgs + noise_img), 1, idx)
    noise = torch.gather(patchify(noise_img), 1, idx)
    target = patchify(imgs)
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    target = (target - mean) / (var + 1.0e-6) ** 0.5
    return inputs, target, noise


def _main_kernels():
    """main's token kernels (before issue 22), or None where the frozen copy cannot load."""
    try:
        from bench import _tokens_main
    except Exception:  # noqa: BLE001  (the comparison is optional)
        return None
    return _tokens_main


# ----------------------------------------------------------------------------- cases


def make_case(op: str, b: int, ratio: float, grid: int, p: int, d: int, dtype: torch.dtype, dev: torch.device) -> dict:
    """Inputs, the providers' callables, and the minimum bytes of forward and backward."""
    L = grid * grid
    ids_keep, ids_restore, _ = random_masking(b, L, ratio, device=dev)
    ids_keep = ids_keep.contiguous()
    k = ids_keep.shape[1]
    s = torch.tensor([], dtype=dtype).element_size()
    idx_bytes = ids_keep.numel() * ids_keep.element_size()
    old = _main_kernels()
    if op == "gather":
        x = torch.randn(b, L, d, device=dev, dtype=dtype, requires_grad=True)
        pos = torch.randn(L, d, device=dev, dtype=dtype, requires_grad=True)
        leaves = (x, pos)
        compiled = torch.compile(eager_gather, dynamic=False)
        fns = {
            "eager": lambda: eager_gather(x, pos, ids_keep),
            "compile": lambda: compiled(x, pos, ids_keep),
            "triton": lambda: gather_tokens(x, ids_keep, pos, backend="triton"),
        }
        fns["triton_jit"] = fns["triton"]  # timed under _launch_path("triton_jit")
        if old is not None:
            fns["triton_main"] = lambda: old.GatherTokens.apply(x, ids_keep, pos)
        fwd_bytes = (b * k * d + L * d) * s + idx_bytes + b * k * d * s  # kept rows + pos in, out
        bwd_bytes = b * k * d * s + idx_bytes + (b * L * d + L * d) * s  # g in, dx (zeros too) + dpos out
    elif op == "scatter":
        x = torch.randn(b, k, d, device=dev, dtype=dtype, requires_grad=True)
        mt = torch.randn(d, device=dev, dtype=dtype, requires_grad=True)
        pos = torch.randn(L, d, device=dev, dtype=dtype, requires_grad=True)
        leaves = (x, mt, pos)
        compiled = torch.compile(eager_scatter, dynamic=False)
        fns = {
            "eager": lambda: eager_scatter(x, mt, pos, ids_restore),
            "compile": lambda: compiled(x, mt, pos, ids_restore),
            "triton": lambda: scatter_tokens(x, ids_keep, L, mt, pos, backend="triton"),
        }
        fns["triton_jit"] = fns["triton"]
        if old is not None:
            fns["triton_main"] = lambda: old.ScatterTokens.apply(x, ids_keep, L, mt, pos)
        fwd_bytes = (b * k * d + d + L * d) * s + idx_bytes + b * L * d * s
        bwd_bytes = b * L * d * s + idx_bytes + (b * k * d + d + L * d) * s
    elif op == "patchify_noise":
        imgs = torch.randn(b, 3, grid * p, grid * p, device=dev, dtype=dtype)
        sigma = torch.rand(b, device=dev) * 0.05
        leaves = ()
        P = p * p * 3
        compiled = torch.compile(eager_patchify_noise, dynamic=False)
        fns = {
            "eager": lambda: eager_patchify_noise(imgs, sigma, ids_keep, p),
            "compile": lambda: compiled(imgs, sigma, ids_keep, p),
            "triton": lambda: patchify_noise(imgs, p, sigma, ids_keep=ids_keep, norm_target=True, backend="triton"),
        }
        fns["triton_jit"] = fns["triton"]
        fwd_bytes = imgs.numel() * s + b * 4 + idx_bytes + (2 * b * k * P + b * L * P) * s
        bwd_bytes = 0
    else:
        raise ValueError(op)
    return {"fns": fns, "leaves": leaves, "fwd_bytes": fwd_bytes, "bwd_bytes": bwd_bytes, "K": k, "L": L}


def check_against_eager(op: str, eager_out, out) -> None:
    """Forward sanity on the benchmark's own inputs (the unit tests are the real correctness check)."""
    if op == "patchify_noise":
        e_in, e_t, e_n = eager_out
        t_in, t_t, t_n = out
        torch.testing.assert_close(t_t.float(), e_t.float(), rtol=2e-2, atol=2e-2)
        torch.testing.assert_close((t_in.float() - t_n.float()), (e_in.float() - e_n.float()), rtol=2e-2, atol=2e-2)
    else:
        torch.testing.assert_close(out.float(), eager_out.float(), rtol=1e-2, atol=1e-2)


# ----------------------------------------------------------------------------- kernel-only time

_BUF: dict = {}


def _marker_kernels():
    """Two Triton kernels with names of our own, so the profiler's device events can be told apart
    without guessing torch's kernel names: an L2 flush (writes a 256 MB buffer, as do_bench's
    cache clear) and a one-element phase marker."""
    if "flush_fn" not in _BUF:
        import triton
        import triton.language as tl

        @triton.jit
        def bench_l2_flush_kernel(ptr, n, BLOCK: tl.constexpr):
            offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
            tl.store(ptr + offs, tl.zeros((BLOCK,), tl.int32), mask=offs < n)

        @triton.jit
        def bench_phase_marker_kernel(ptr):
            tl.store(ptr, 1)

        buf = torch.empty(64 << 20, dtype=torch.int32, device="cuda")
        mark = torch.zeros(1, dtype=torch.int32, device="cuda")
        _BUF["flush_fn"] = lambda: bench_l2_flush_kernel[(buf.numel() // 4096,)](buf, buf.numel(), BLOCK=4096)
        _BUF["mark_fn"] = lambda: bench_phase_marker_kernel[(1,)](mark)
    return _BUF["flush_fn"], _BUF["mark_fn"]


def kernel_ms(phases: dict, n: int = 10) -> dict:
    """Device time per call (ms) of the kernels each callable in ``phases`` launches, all phases in
    ONE torch.profiler session (a session costs ~1 s on the GPU machine): device events (kernels,
    memsets, copies) in start order, phases separated by a marker kernel, each call preceded by an
    L2 flush as in do_bench; markers and flushes are excluded by name. {} without CUDA."""
    if not torch.cuda.is_available():
        return {}
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    flush, mark = _marker_kernels()
    flush()
    mark()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:  # the usual pairing
        for f in phases.values():
            for _ in range(n):
                flush()
                f()
            mark()
        torch.cuda.synchronize()
    events = sorted((e for e in prof.events() if e.device_type == DeviceType.CUDA), key=lambda e: e.time_range.start)
    totals, i = [0.0] * len(phases), 0
    for e in events:
        if "bench_phase_marker" in e.name:
            i += 1
        elif "bench_l2_flush" not in e.name and i < len(totals):
            totals[i] += e.time_range.elapsed_us()
    if i != len(phases):
        raise RuntimeError(f"profiler saw {i} phase markers, expected {len(phases)}")
    return {name: t / n / 1e3 for name, t in zip(phases, totals)}


def run_case(op, case, provider, smoke, rep_ms: float = 100, prof_n: int = 10) -> Record:
    fn = case["fns"][provider]
    leaves = case["leaves"]
    out = fn()
    extra: dict = {}
    fwd = time_fn(fn, smoke=smoke, rep_ms=rep_ms)
    bwd = None
    fns = {"fwd": fn}
    if leaves:
        outs = out if isinstance(out, tuple) else (out,)
        grad = torch.randn_like(outs[0])

        # autograd.grad, not .backward: accumulating into .grad would add a read-modify-write of dx
        def backward():
            torch.autograd.grad(out, leaves, grad, retain_graph=True)

        def both():
            torch.autograd.grad(fn(), leaves, grad)

        bwd = time_fn(backward, smoke=smoke, rep_ms=rep_ms)
        total = time_fn(both, smoke=smoke, rep_ms=rep_ms)
        peak = peak_memory_mib(both)
        fns.update(bwd=backward, total=both)
    else:
        total = fwd
        peak = peak_memory_mib(fn)
    nbytes = {"fwd": case["fwd_bytes"], "bwd": case["bwd_bytes"], "total": case["fwd_bytes"] + case["bwd_bytes"]}
    for part, t in (("fwd", fwd), ("bwd", bwd), ("total", total)):
        if t is not None:
            extra[f"gbps_{part}"] = nbytes[part] / t.median / 1e6
    try:  # kernel-only device time (CUDA): a profiler failure must not lose the wall-clock record
        kt = kernel_ms(fns, n=3 if smoke else prof_n)
        if not leaves and "fwd" in kt:
            kt["total"] = kt["fwd"]
        for part, t in kt.items():
            extra[f"kernel_ms_{part}"] = t
            extra[f"kernel_gbps_{part}"] = nbytes[part] / t / 1e6 if t > 0 else None
    except Exception as err:  # noqa: BLE001
        extra["kernel_error"] = f"{type(err).__name__}: {err}"[:300]
    extra["min_bytes_fwd"] = case["fwd_bytes"]
    extra["min_bytes_bwd"] = case["bwd_bytes"]
    return Record(provider=provider, case={}, fwd=fwd, bwd=bwd, total=total, peak_mem_mib=peak, extra=extra)


# ----------------------------------------------------------------------------- launch-table sweep


# (tile elements, programs per SM of the reducing kernels, warps, pipeline stages; None = the table's
# choice): a tile / warps / stages change recompiles (~1 s per kernel), a waves change only regrids.
_SWEEP = ([(t, w, None, 1) for t in (4096, 8192, 16384) for w in (2, 4, 8)]
          + [(4096, w, 8, 1) for w in (4, 8)] + [(8192, 4, 4, 1)]
          + [(t, w, None, 3) for t in (4096, 8192) for w in (2, 4, 8)])


def sweep_launch_table(b: int, grid: int, dims: dict, dtype, dev, copy_gbps: float) -> list[dict]:
    """Kernel-only fwd+bwd of the Triton gather / scatter under a few launch tables (tile elements
    per step, programs per SM for the batch-reducing kernels, warps): the data to fix the table."""
    import fastssl.kernels.tokens as T

    rows = []
    for op in ("gather", "scatter"):
        case = make_case(op, b, 0.75, grid, 16, dims[op], dtype, dev)
        fn, leaves = case["fns"]["triton"], case["leaves"]
        grad = torch.randn_like(fn())

        def both():
            torch.autograd.grad(fn(), leaves, grad)

        for tile, waves, warps, stages in _SWEEP:
            T._OVERRIDE.clear()
            T._OVERRIDE.update({k: v for k, v in (("tile", tile), ("waves", waves), ("warps", warps), ("stages", stages))
                                if v is not None})
            cfg = dict(op=op, B=b, tile=tile, waves=waves, warps=warps, stages=stages)
            try:
                kt = kernel_ms({"total": both}, n=10)["total"]
                rows.append(dict(cfg, kernel_ms=kt, pct_copy=100 * (case["fwd_bytes"] + case["bwd_bytes"]) / kt / 1e6 / copy_gbps))
            except Exception as err:  # noqa: BLE001
                rows.append(dict(cfg, error=f"{type(err).__name__}: {err}"[:200]))
        T._OVERRIDE.clear()
        del case
        free_memory()
    return rows


# ----------------------------------------------------------------------------- main


@contextlib.contextmanager
def _launch_path(provider: str):
    """``triton_jit``: every launch through Triton's JITFunction.run (``fastssl.kernels.launch`` off)."""
    from fastssl.kernels import launch

    saved = launch.OPTIONS["direct"]
    launch.OPTIONS["direct"] = saved and provider != "triton_jit"
    try:
        yield
    finally:
        launch.OPTIONS["direct"] = saved


def _targets(records, ceilings, b_small, b_large) -> list[str]:
    """Issue 22's targets, checked on this run's records (triton rows)."""
    lines = []
    by = {(r.case["op"], r.case["B"], r.case["mask_ratio"], r.provider): r for r in records if r.error is None}
    for (op, b, ratio, prov), r in sorted(by.items(), key=lambda kv: str(kv[0])):
        if prov != "triton" or r.case["mask_ratio"] != 0.75:
            continue
        pct_w = r.extra.get("pct_copy", float("nan"))
        pct_k = r.extra.get("pct_copy_kernel", float("nan"))
        line = f"target {op:<15} B={b:<5} wall {pct_w:5.1f}% / kernel {pct_k:5.1f}% of copy (>= 80: {'ok' if pct_k >= 80 else 'MISS'})"
        for other in ("eager", "compile"):
            o = by.get((op, b, ratio, other))
            if o is not None:
                su = o.total.median / r.total.median
                need = 1.5 if (b == b_large and other == "compile") else 1.0
                line += f", {su:.2f}x {other} ({'ok' if su >= need else 'MISS'} >= {need})"
        lines.append(line)
    return lines


def _fmt(v, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def _row(r: Record) -> str:
    """One line per record, printed as soon as it is measured (a time cap keeps what was printed)."""
    head = f"{r.case['op']:<15} B={r.case['B']:<5} {r.provider:<12}"
    if r.error:
        return f"{head} ERROR {r.error.splitlines()[0][:100]}"
    x = r.extra
    return (f"{head} wall fwd {_fmt(ms(r.fwd))} bwd {_fmt(ms(r.bwd))} tot {_fmt(ms(r.total))} ms | kernel fwd "
            f"{_fmt(x.get('kernel_ms_fwd'))} bwd {_fmt(x.get('kernel_ms_bwd'))} tot {_fmt(x.get('kernel_ms_total'))} ms | "
            f"{(x['min_bytes_fwd'] + x['min_bytes_bwd']) / 1e6:.0f} MB, {_fmt(x.get('pct_copy'), '.0f')}% / "
            f"{_fmt(x.get('pct_copy_kernel'), '.0f')}% of copy (wall / kernel), x eager {_fmt(x.get('speedup_vs_eager'), '.2f')}"
            + (f", x compile {_fmt(x.get('speedup_vs_compile'), '.2f')}" if "speedup_vs_compile" in x else ""))


def main() -> None:
    def extra_args(p):
        p.add_argument("--quick", action="store_true", help="B 1024 and 256, ratio 0.75; most important rows first (~1 min)")
        p.add_argument("--scatter-dim", type=int, default=512, help="decoder width for the scatter case (MAE: 512)")
        p.add_argument("--sweep", action="store_true", help="also sweep the Triton launch table (kernel-only, B max; ~1 min)")

    args = parse_args(__doc__.splitlines()[0], extra_args)
    dev = device()
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    if args.smoke:
        grid, p, dims, batches, ratios, dtype = 4, 4, {"gather": 24, "scatter": 16, "patchify_noise": 0}, [2], [0.75], torch.float32
    else:
        grid, p, dims, dtype = 14, 16, {"gather": 768, "scatter": args.scatter_dim, "patchify_noise": 0}, torch.bfloat16
        batches, ratios = ([1024, 256], [0.75]) if args.quick else ([1024, 256, 64], [0.75, 0.5])
    if args.providers == "eager,compile,triton" and not args.smoke:
        providers.append("triton_jit")  # the launch path before / after, in the same run
        if _main_kernels() is not None:
            providers.append("triton_main")  # the kernels before / after in the same run (GPU runs only)
    rep_ms = 40 if args.quick else 100
    # Passes, most important first, so that a time cap cuts the least useful rows: eager + triton for
    # every case, then torch.compile (the targets compare with it; its warm-ups are slow), then main's
    # kernels (before / after).
    passes = [[q for q in ("eager", "triton") if q in providers], [q for q in ("compile",) if q in providers],
              [q for q in ("triton_jit",) if q in providers], [q for q in ("triton_main",) if q in providers]]
    named = ("eager", "triton", "triton_jit", "triton_main", "compile")
    passes = [q for q in passes if q] + [[q for q in providers if q not in named]]
    t_start = time.perf_counter()
    ceilings = measure_ceilings(smoke=args.smoke)
    print(f"device {torch.cuda.get_device_name() if dev.type == 'cuda' else dev}; copy {ceilings.copy_gbps:.0f} GB/s", flush=True)
    records: list[Record] = []
    meta = {"grid": grid, "patch": p, "dims": dims, "quick": bool(args.quick), "launch_sweep": []}

    def save():
        derive_speedups(records, ceilings.copy_gbps, rate="gbps_total", pct="pct_copy")
        return write_results("tokens", records, ceilings, args, meta=meta)

    path = save()
    for todo in passes:
        for op in ("gather", "scatter", "patchify_noise"):
            for ratio in ratios:
                for b in batches:
                    todo_here = [q for q in todo if (q != "triton_main" or op != "patchify_noise")
                                 and (q != "triton_jit" or not args.quick or b == min(batches))]
                    if not todo_here:
                        continue
                    torch.manual_seed(0)
                    torch._dynamo.reset()  # a fresh compile per shape: no recompile limit, no stale graphs
                    case = make_case(op, b, ratio, grid, p, dims[op], dtype, dev)
                    case_meta = {"op": op, "B": b, "mask_ratio": ratio, "L": case["L"], "K": case["K"],
                                 "D": dims[op] or p * p * 3, "dtype": str(dtype).replace("torch.", "")}
                    eager_out = case["fns"]["eager"]()
                    for provider in todo_here:
                        def measure(provider=provider):
                            with _launch_path(provider):
                                if provider != "eager":
                                    check_against_eager(op, eager_out, case["fns"][provider]())
                                return run_case(op, case, provider, args.smoke, rep_ms, 5 if args.quick else 10)

                        records.append(run_guarded(provider, case_meta, measure))
                        path = save()  # after every record: a time cap keeps what was measured
                        print(_row(records[-1]), f"[{time.perf_counter() - t_start:.0f} s]", flush=True)
                    del case, eager_out
                    free_memory()
    if args.sweep and dev.type == "cuda" and "triton" in providers:
        try:
            meta["launch_sweep"] = sweep_launch_table(max(batches), grid, dims, dtype, dev, ceilings.copy_gbps)
        except Exception as err:  # noqa: BLE001
            meta["launch_sweep"] = [{"error": f"{type(err).__name__}: {err}"[:300]}]
        path = save()
    png = plot(
        path,
        [("forward + backward (wall)", lambda r: r.total.median if r.total else None, "ms"),
         ("kernel-only % of copy (min bytes)", lambda r: r.extra.get("pct_copy_kernel") or r.extra.get("pct_copy"), "%")],
        x_key="B",
        series_key=lambda c: f"{c['op']} r={c['mask_ratio']}",
    )
    k = lambda part: (lambda r: r.extra.get(f"kernel_ms_{part}"))  # noqa: E731
    print_table(records, [
        Column("op", 15, lambda r: r.case["op"]), Column("ratio", 6, lambda r: r.case["mask_ratio"]),
        Column("B", 6, lambda r: r.case["B"]), Column("provider", 12, lambda r: r.provider),
        Column("fwd ms", 8, lambda r: ms(r.fwd), ".3f"), Column("bwd ms", 8, lambda r: ms(r.bwd), ".3f"),
        Column("tot ms", 8, lambda r: ms(r.total), ".3f"),
        Column("k.fwd", 8, k("fwd"), ".3f"), Column("k.bwd", 8, k("bwd"), ".3f"), Column("k.tot", 8, k("total"), ".3f"),
        Column("MB", 7, lambda r: (r.extra["min_bytes_fwd"] + r.extra["min_bytes_bwd"]) / 1e6, ".0f"),
        Column("%copy", 6, lambda r: r.extra.get("pct_copy"), ".0f"),
        Column("%cp.k", 6, lambda r: r.extra.get("pct_copy_kernel"), ".0f"),
        Column("x eag", 6, lambda r: r.extra.get("speedup_vs_eager"), ".2f"),
        Column("x cmp", 6, lambda r: r.extra.get("speedup_vs_compile"), ".2f"),
    ])
    print("(ms: wall, do_bench; k.*: kernel-only device time; %copy: min bytes / time vs the copy rate; x: wall fwd+bwd)")
    sweep = meta["launch_sweep"]
    if sweep and "error" not in sweep[0]:
        print("\nlaunch-table sweep (kernel-only fwd+bwd, B=%d):" % max(batches))
        for op in ("gather", "scatter"):
            ok = sorted((s for s in sweep if s.get("op") == op and "kernel_ms" in s), key=lambda s: s["kernel_ms"])
            for s in ok[:5]:
                print(f"  {op:<8} tile {s['tile']:>5} waves {s['waves']} warps {s['warps'] or 'table'} stages {s['stages']}: "
                      f"{s['kernel_ms']:.3f} ms ({s['pct_copy']:.0f}% of copy)")
    elif sweep:
        print("launch-table sweep failed:", sweep[0]["error"])
    if not args.smoke:
        for line in _targets(records, ceilings, min(batches), max(batches)):
            print(line)
    print(f"\nwrote {path} and {png} ({time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
