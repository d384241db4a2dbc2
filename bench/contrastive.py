"""Benchmark of the contrastive losses at the shapes users train with: eager vs torch.compile vs the fused kernels.

Cases (each a loss a user calls, inputs raw projector outputs that require grad):
  square   SimCLR NT-Xent on one GPU: z1, z2 [N, D], the 2N x 2N matrix (rows are cols)
  dist     NT-Xent with gather_distributed: a rank's 2·N_local raw rows (normalised in the loss)
           against the gathered columns, unit vectors already (their ranks normalised them), both
           with grad (the gathered columns' gradients go back to their ranks)
  mmoco    M-MoCo InfoNCE: q [8, N, D] (8 query chunks), keys k [N, D] from the momentum encoder (no grad)
  queue    MoCo v2 InfoNCE: q [N, D] against its key k [N, D] and a queue of unit keys [65536, D] (neither
           gets a grad; ``unit_queue=True`` as MoCo v2 calls it, the eager row uses the keys as they are)
Providers:
  eager    what a user writes: normalise, the full logits, mask, cross-entropy
  compile  torch.compile(eager, dynamic=False), one compile per shape (--quick: a few shapes only)
  triton   fastssl.ops with backend="triton" (the fused kernels)
  auto     fastssl.ops with backend="auto" (the size rule of fastssl.ops.dispatch picks)
  triton[old|nosplit|twopass|unfused|tuned|jit|masked|nodes]: the kernels with the launch path of main
           before issue 21 (custom op in eager, autotuner, old split rule, two-pass backward), without
           loop splits, without the symmetric backward, with the normalisation in torch instead of one
           launch each way, with the autotuner over the tile configs, with every launch through
           Triton's JITFunction.run instead of fastssl.kernels.launch, with every score tile through
           the masked update (before mask-free tiles), with each loss as two or three autograd nodes
           instead of one (not the dist rows); --variants adds them all at every case, --quick adds jit,
           masked and nodes at the two target cases.
  eager[graph], triton[graph] (CUDA, the two target shapes, last): forward + backward replayed from a
           CUDA graph, i.e. with the host out of the way (what torch.compile's "reduce-overhead" gives a step).
Per row: forward, backward and forward+backward wall time (median of triton.testing.do_bench, which
flushes L2 and times with device events, so host work the GPU waits for is counted); "kern" = the
device time of all kernels of one forward+backward (torch.profiler) and "host" = the CPU time to
issue one forward+backward, so "tot − kern" is the GPU idle time per call (launch overhead); peak
extra memory; TFLOP/s counting 2·M·C·D for the forward and 8·M·C·D (6·M·C·D when the columns need
no grad) for forward+backward, as % of a bf16 matmul measured in the same run (and a copy).

    python bench/contrastive.py --quick     # bf16, D = 256, the issue's shapes; < 4 min on one H200
    python bench/contrastive.py             # full sweep: D in {128, 256}, bf16 and fp32, all providers
    python bench/contrastive.py --smoke     # tiny, runs anywhere (CPU: Triton interpreter); not a measurement
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

if not torch.cuda.is_available():  # the kernels run in the interpreter on CPU (smoke only)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bench.common import (  # noqa: E402
    Column, Record, derive_speedups, device, free_memory, is_oom, measure_ceilings, ms, parse_args, peak_memory_mib,
    pick_list, plot, print_table, run_guarded, sync, time_fn, write_results,
)
from fastssl.ops import info_nce, nt_xent  # noqa: E402
from fastssl.ops import contrastive as contrastive_ops  # noqa: E402

TAU = 0.1
QUEUE_K = 65536
MMOCO_CHUNKS = 8


@dataclass(frozen=True)
class Case:
    kind: str  # square | dist | mmoco | queue
    m: int  # anchor rows
    c: int  # candidate columns
    d: int
    dtype: str
    compile: bool = True  # run the torch.compile provider here
    variants: tuple[str, ...] = ()
    auto: bool = True  # run the auto provider here

    @property
    def cols_grad(self) -> bool:
        return self.kind in ("square", "dist")

    def meta(self) -> dict:
        return {"case": self.kind, "M": self.m, "C": self.c, "D": self.d, "dtype": self.dtype, "temperature": TAU,
                "shape": f"{self.kind} {self.m}x{self.c}", **({"2N": self.m} if self.kind == "square" else {})}


def _cases(args) -> list[Case]:
    """The sweep; target cases first so that a time cap cuts the least important ones."""
    if args.smoke:
        dims, dtypes = [16], ["float32"]
        square, dist, mmoco, queue = [32, 96], [(16, 96)], [12], [8]
    elif args.quick:
        dims, dtypes = [256], ["bfloat16"]
        square, dist, mmoco, queue = [8192, 16384, 4096, 65536], \
            [(1024, 32768), (512, 8192), (2048, 8192), (1024, 8192), (512, 32768), (2048, 32768), (512, 65536),
             (1024, 65536), (2048, 65536)], [1024], [256, 1024]
    else:
        dims, dtypes = [128, 256], ["bfloat16", "float32"]
        square, dist, mmoco, queue = [512, 2048, 4096, 8192, 16384, 32768, 65536], \
            [(r, c) for r in (512, 1024, 2048) for c in (8192, 32768, 65536)], [256, 1024], [256, 1024]
    dims, dtypes = pick_list(args.dims, dims), pick_list(args.dtypes, dtypes, str)
    if args.sizes:
        square = pick_list(args.sizes, square)
    # --quick fits a 75 s cap on one H200 (~0.6 s a row; torch.compile's warm-up took 65 s at
    # 2N = 8192 there): no compile rows unless --compile-at names shapes (they run after everything
    # else), auto rows where the size rule could matter, variants at the two target shapes.
    quick_compile = set(args.compile_at.split(",")) if args.compile_at else set()
    targets = TARGET_SHAPES
    out = []
    for dtype in dtypes:
        for d in dims:
            shapes = [("square", m, m) for m in square] + [("dist", r, c) for r, c in dist] + \
                     [("mmoco", MMOCO_CHUNKS * n, n) for n in mmoco] + \
                     [("queue", n, (96 if args.smoke else QUEUE_K)) for n in queue]
            for kind, m, c in shapes:
                key = f"{kind} {m}x{c}"
                comp = not args.quick or key in quick_compile
                var = VARIANTS if args.variants else QUICK_VARIANTS if args.quick and key in targets else ()
                var = tuple(v for v in var if v != "nodes" or kind in NODE_KINDS)
                auto = not args.quick or kind != "dist" or key in targets
                out.append(Case(kind, m, c, d, dtype, compile=comp, variants=var, auto=auto))
    if args.quick:  # the two target shapes first, then the rest in sweep order
        out.sort(key=lambda c: 0 if f"{c.kind} {c.m}x{c.c}" in targets else 1)
    if args.cases:
        keep = set(args.cases.split(","))
        out = [c for c in out if c.kind in keep]
    return out


# --------------------------------------------------------------------------------------------
# The losses, as a user writes them (eager) and through fastssl.ops
# --------------------------------------------------------------------------------------------
def eager_square(z1, z2):
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    sim = z @ z.t() / TAU
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    labels = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, labels)


def _dist_index(m: int, c: int, dev) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank 0's rows [view 1 of its n samples; view 2] against the gathered [view 1 of all; view 2 of all]."""
    n, total = m // 2, c // 2
    g = torch.arange(n, device=dev)
    return torch.cat([total + g, g]), torch.cat([g, total + g])


def eager_dist(a, b, pos, self_idx):
    """b: the gathered columns, already unit vectors (each rank normalised its own before the gather)."""
    rows = F.normalize(a, dim=1)
    sim = rows @ b.t() / TAU
    sim = sim.scatter(1, self_idx[:, None], float("-inf"))
    return F.cross_entropy(sim, pos)


def fastssl_dist(a, b, pos, self_idx, backend):
    """nt_xent(gather_distributed=True) on one rank, without a process group: the local rows are
    normalised here (as nt_xent does before its gather), the gathered columns arrive as unit
    vectors with grad; both go to the core the backend picks (the size rule included)."""
    kernel = contrastive_ops._kernel(backend, a.device, a.shape[0] * b.shape[0])
    rows = contrastive_ops._unit(a, kernel)
    return contrastive_ops._mean_loss(contrastive_ops._core(backend, a.device, kernel=kernel), rows, b, pos, self_idx, TAU)


def eager_mmoco(q, k):
    chunks, n, _ = q.shape
    qn = F.normalize(q, dim=-1).reshape(chunks * n, -1)
    kn = F.normalize(k, dim=-1)
    return F.cross_entropy(qn @ kn.t() / TAU, torch.arange(n, device=q.device).repeat(chunks))


def eager_queue(q, k, queue):
    # The queue holds unit keys, as MoCo v2's official code keeps it (and uses it unnormalised in the loss)
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    l_pos = (qn * kn).sum(dim=1, keepdim=True)
    logits = torch.cat([l_pos, qn @ queue.t()], dim=1) / TAU
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def _build(case: Case, dev):
    """(leaves that get gradients, {provider: fn() -> loss}, the eager loss, bind(f) -> fn() calling
    f on this case's inputs) for one case."""
    dtype = getattr(torch, case.dtype)
    r = lambda *s, grad=True: torch.randn(*s, device=dev, dtype=dtype, requires_grad=grad)  # noqa: E731
    if case.kind == "square":
        z1, z2 = r(case.m // 2, case.d), r(case.m // 2, case.d)
        fns = {"eager": lambda: eager_square(z1, z2)}
        fns.update({b: (lambda b=b: nt_xent(z1, z2, TAU, backend=b)) for b in ("triton", "auto")})
        comp = lambda f: (lambda: f(z1, z2))  # noqa: E731
        return (z1, z2), fns, eager_square, comp
    if case.kind == "dist":
        a = r(case.m, case.d)
        b = F.normalize(torch.randn(case.c, case.d, device=dev), dim=1).to(dtype).requires_grad_()
        pos, self_idx = _dist_index(case.m, case.c, dev)
        fns = {"eager": lambda: eager_dist(a, b, pos, self_idx)}
        fns.update({k: (lambda k=k: fastssl_dist(a, b, pos, self_idx, k)) for k in ("triton", "auto")})
        return (a, b), fns, eager_dist, lambda f: (lambda: f(a, b, pos, self_idx))
    if case.kind == "mmoco":
        q, k = r(MMOCO_CHUNKS, case.c, case.d), r(case.c, case.d, grad=False)
        fns = {"eager": lambda: eager_mmoco(q, k)}
        fns.update({b: (lambda b=b: info_nce(q, k, TAU, backend=b)) for b in ("triton", "auto")})
        return (q,), fns, eager_mmoco, lambda f: (lambda: f(q, k))
    q, k = r(case.m, case.d), r(case.m, case.d, grad=False)
    queue = F.normalize(torch.randn(case.c, case.d, device=dev), dim=1).to(dtype)  # unit keys, as MoCo v2's queue
    fns = {"eager": lambda: eager_queue(q, k, queue)}
    fns.update({b: (lambda b=b: info_nce(q, k, TAU, queue=queue, unit_queue=True, backend=b)) for b in ("triton", "auto")})
    return (q,), fns, eager_queue, lambda f: (lambda: f(q, k, queue))


# --------------------------------------------------------------------------------------------
# Variants of the kernels' launch path (fastssl.kernels.contrastive.OPTIONS and
# fastssl.ops.contrastive.OPTIONS), timed side by side
# --------------------------------------------------------------------------------------------
VARIANTS = ("old", "nosplit", "twopass", "unfused", "tuned", "jit", "masked", "nodes")
TARGET_SHAPES = {"square 8192x8192", "dist 1024x32768"}  # issue 21's two named shapes
# call 1 measured triton[old] already (2.90 ms at 2N = 8192), a later call triton[unfused] (1.35 ms)
QUICK_VARIANTS = ("jit", "masked", "nodes")
NODE_KINDS = {"square", "mmoco", "queue"}  # where triton[nodes] differs (the dist rows call the core directly)
_VARIANT_OPTIONS = {
    # main before issue 21 (but for the index cache and the one normalisation of both views)
    "old": {"autotune": True, "split": "legacy", "sym_bwd": False, "direct_eager": False, "fused_unit": False},
    "nosplit": {"split": "none"},
    "twopass": {"sym_bwd": False},
    "unfused": {"fused_unit": False},  # the normalisation in torch (~12 small launches) instead of unit_rows
    "tuned": {"autotune": True},  # the new launch path with the autotuner: is the fixed table's tile the best?
    # every launch through Triton's JITFunction.run instead of fastssl.kernels.launch's direct path (the
    # host cost per launch; bench/host_path.py measures it without a GPU)
    "jit": {"direct": False},
    # every score tile through the masked update, as before mask-free tiles (bench/kernel_mix.py counts
    # the instructions per tile of both paths)
    "masked": {"mask_all": True},
    # NT-Xent as three autograd nodes (unit rows, loss, mean) and InfoNCE as two instead of one each
    # (notes/host_path.md)
    "nodes": {"one_node": False},
}


@contextlib.contextmanager
def _options(variant: str | None):
    import fastssl.kernels.contrastive as K
    import fastssl.kernels.launch as L
    import fastssl.ops.contrastive as C

    # launch options live with the kernels, dispatch options (direct_eager, fused_unit) with the op,
    # the launch path's switch with fastssl.kernels.launch
    saved = [(opts, dict(opts)) for opts in (K.OPTIONS, C.OPTIONS, L.OPTIONS)]
    for key, value in _VARIANT_OPTIONS.get(variant, {}).items():
        (C.OPTIONS if key in C.OPTIONS else L.OPTIONS if key in L.OPTIONS else K.OPTIONS)[key] = value
    try:
        yield
    finally:
        for opts, old in saved:
            opts.clear()
            opts.update(old)


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------
def kernel_time_ms(fn, iters: int = 5) -> tuple[float | None, list]:
    """Device time of every kernel (and memset/memcpy) one ``fn()`` runs, summed (torch.profiler,
    CUDA activity only), and the five largest kernels as (name, µs per call, launches per call)."""
    if not torch.cuda.is_available():
        return None, []
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        sync()
    per: dict[str, list] = {}
    for e in prof.events():
        if e.device_type != DeviceType.CUDA:
            continue
        t = per.setdefault(e.name, [0.0, 0])
        t[0] += e.time_range.elapsed_us()  # a device event's own span (no is_async/use_device rules)
        t[1] += 1
    total = sum(t for t, _ in per.values()) / iters / 1e3
    top = sorted(per.items(), key=lambda kv: -kv[1][0])[:5]
    return (total if total > 0 else None), [(k[:80], round(t / iters, 1), n / iters) for k, (t, n) in top]


def host_time_ms(fn, reps: int = 10) -> float:
    """CPU time to issue one ``fn()`` (no sync inside the timed span; the GPU queue stays short)."""
    samples = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    sync()
    samples.sort()
    return samples[len(samples) // 2]


def graph_replay(fn, smoke: bool, rep_ms: float):
    """Wall time of ``fn`` replayed from a CUDA graph (warmed up on a side stream, captured once): the
    call with the host out of the way, what ``torch.compile(mode="reduce-overhead")`` would give a
    training step. Rows ``eager[graph]`` / ``triton[graph]``, run last (a failed capture cannot spoil
    the rows before it)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return time_fn(graph.replay, smoke=smoke, rep_ms=rep_ms)


def measure(fn, leaves, case: Case, smoke: bool, rep_ms: float) -> Record:
    out = fn()
    fwd = time_fn(fn, smoke=smoke, rep_ms=rep_ms)
    extra: dict = {}
    try:
        bwd = time_fn(lambda: torch.autograd.grad(out, leaves, retain_graph=True), smoke=smoke, rep_ms=rep_ms)
    except RuntimeError as err:  # a compiled graph may refuse retain_graph; forward+backward still counts
        if is_oom(err):
            raise
        bwd, extra["bwd_error"] = None, f"{type(err).__name__}: {err}"[:300]
    del out

    def both():
        torch.autograd.grad(fn(), leaves)

    total = time_fn(both, smoke=smoke, rep_ms=rep_ms)
    peak = peak_memory_mib(both)
    try:
        extra["kernel_ms"], extra["top_kernels"] = kernel_time_ms(both)
    except Exception as err:  # noqa: BLE001  (the profiler is a diagnostic: never fail the case for it)
        extra["kernel_ms"], extra["kernel_error"] = None, f"{type(err).__name__}: {err}"[:300]
    extra["host_ms"] = host_time_ms(both, reps=3 if smoke else 10)
    if extra["kernel_ms"] is not None:
        extra["idle_ms"] = total.median - extra["kernel_ms"]
    mcd = case.m * case.c * case.d
    flops_fwd, flops_total = 2 * mcd, (8 if case.cols_grad else 6) * mcd
    extra["tflops_fwd"] = flops_fwd / fwd.median / 1e9
    extra["tflops_total"] = flops_total / total.median / 1e9
    if bwd is not None:
        extra["tflops_bwd"] = (flops_total - flops_fwd) / bwd.median / 1e9
    return Record(provider="", case={}, fwd=fwd, bwd=bwd, total=total, peak_mem_mib=peak, extra=extra)


def _targets(records: list[Record], ceilings) -> list[str]:
    """The issue's targets (bf16, D = 256, forward + backward), judged on this run's numbers."""
    get = {(r.provider, r.case["case"], r.case["M"], r.case["C"]): r for r in records
           if r.case.get("dtype") == "bfloat16" and r.case.get("D") == 256 and r.error is None}
    lines = []

    def speed(key, base, want):
        t, b = get.get(("triton",) + key), get.get((base,) + key)
        if t is not None and b is not None:
            x = b.total.median / t.total.median
            lines.append(f"{key[0]} {key[1]}x{key[2]}: triton {x:.2f}x {base} (target >= {want}x): "
                         f"{'met' if x >= want else 'MISSED'}")

    speed(("square", 8192, 8192), "eager", 3.0)
    speed(("square", 8192, 8192), "compile", 1.5)
    speed(("dist", 1024, 32768), "compile", 2.0)
    for m in (16384, 32768, 65536):
        t = get.get(("triton", "square", m, m))
        if t is not None:
            pct = 100 * t.extra["tflops_total"] / ceilings.matmul_tflops
            lines.append(f"square {m}: triton at {pct:.0f}% of the measured matmul rate (target >= 60%): "
                         f"{'met' if pct >= 60 else 'MISSED'}")
    t = get.get(("triton", "square", 65536, 65536))
    if t is not None and t.peak_mem_mib is not None:
        lines.append(f"square 65536: triton peak extra memory {t.peak_mem_mib:.0f} MiB (target < 1024): "
                     f"{'met' if t.peak_mem_mib < 1024 else 'MISSED'}")
    keys = {k[1:] for k in get}
    slow = []
    for key in sorted(keys):
        a = get.get(("auto",) + key)
        base = [get[(p,) + key].total.median for p in ("eager", "compile") if (p,) + key in get]
        if a is not None and base:
            # 5 %: do_bench's run-to-run spread on identical work; auto runs the same kernels as one of them
            if a.total.median > 1.05 * min(base):
                slow.append(f"{key[0]} {key[1]}x{key[2]} ({a.total.median:.3f} vs {min(base):.3f} ms)")
    lines.append("auto never slower than min(eager, compile) (+5 %): " + ("met" if not slow else "MISSED at " + "; ".join(slow)))
    for key in (("square", 8192, 8192), ("dist", 1024, 32768)):  # not targets: the calls with the host out of the way
        tg, eg, e = (get.get((p,) + key) for p in ("triton[graph]", "eager[graph]", "eager"))
        if tg is not None:
            line = f"{key[0]} {key[1]}x{key[2]} replayed from a CUDA graph: triton {tg.total.median:.3f} ms"
            if e is not None:
                line += f", {e.total.median / tg.total.median:.2f}x eager's call"
            if eg is not None:
                line += f", {eg.total.median / tg.total.median:.2f}x eager replayed"
            lines.append(line)
    lines.append(_suggest_threshold(get))
    return lines


def _suggest_threshold(get: dict) -> str:
    """The smallest rows × cols from which the kernels beat eager and compile (where measured) at
    every larger swept shape: the value for fastssl.ops.dispatch.AUTO_SIZE_RULES["contrastive"]."""
    wins = []
    for key in {k[1:] for k in get}:
        t = get.get(("triton",) + key)
        base = [get[(p,) + key].total.median for p in ("eager", "compile") if (p,) + key in get]
        if t is not None and base:
            wins.append((key[1] * key[2], t.total.median <= min(base), f"{key[0]} {key[1]}x{key[2]}"))
    if not wins:
        return "auto threshold: no shape with both triton and eager rows"
    wins.sort()
    threshold = None
    for size, won, _ in reversed(wins):
        if not won:
            break
        threshold = size
    losers = [name for _, won, name in wins if not won]
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    if threshold is None:
        return f"auto threshold: the kernels lose at the largest swept shape ({', '.join(losers)}); keep the placeholder"
    return (f"auto threshold suggested for {name}: AUTO_SIZE_RULES['contrastive'].min_size = {threshold} "
            f"(rows x cols; kernels lose at: {', '.join(losers) or 'none'})")


def _shape(r: Record) -> str:
    return f"{r.case['M']}x{r.case['C']}"


_COLUMNS = [
    Column("case", 7, lambda r: r.case["case"]), Column("dtype", 9, lambda r: r.case["dtype"]),
    Column("D", 5, lambda r: r.case["D"]), Column("MxC", 13, _shape), Column("provider", 18, lambda r: r.provider),
    Column("fwd", 8, lambda r: ms(r.fwd), ".3f"), Column("bwd", 8, lambda r: ms(r.bwd), ".3f"),
    Column("tot", 8, lambda r: ms(r.total), ".3f"), Column("kern", 8, lambda r: r.extra.get("kernel_ms"), ".3f"),
    Column("host", 7, lambda r: r.extra.get("host_ms"), ".3f"),
    Column("MiB", 8, lambda r: r.peak_mem_mib, ".0f"),
    Column("TF/s", 7, lambda r: r.extra.get("tflops_total"), ".0f"),
    Column("%mm", 5, lambda r: r.extra.get("pct_matmul"), ".0f"),
    Column("xeager", 7, lambda r: r.extra.get("speedup_vs_eager"), ".2f"),
    Column("xcomp", 7, lambda r: r.extra.get("speedup_vs_compile"), ".2f"),
]


def _add_args(p) -> None:
    p.add_argument("--quick", action="store_true", help="bf16, D=256, the issue's shapes; < 4 min on one H200")
    p.add_argument("--variants", action="store_true", help="also time triton[old|nosplit|twopass] at every case")
    p.add_argument("--sizes", default=None, help="comma-separated 2N values of the square case (overrides)")
    p.add_argument("--dims", default=None, help="comma-separated D values (overrides the sweep)")
    p.add_argument("--dtypes", default=None, help="comma-separated dtypes: bfloat16,float32,float16")
    p.add_argument("--cases", default=None, help="comma-separated subset of square,dist,mmoco,queue")
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no new row after this many seconds (--quick: 52, for a 75 s cap with imports)")
    p.add_argument("--compile-at", default=None,
                   help="--quick: shapes that get a torch.compile row, after all other rows, e.g. 'square 8192x8192'")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], _add_args)
    if args.providers == "eager,compile,triton":  # bench.common's default: add auto here
        args.providers = "eager,compile,triton,auto"
    t_start = time.perf_counter()
    budget = args.budget_s if args.budget_s is not None else (52.0 if args.quick else float("inf"))
    dev = device()
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    if hasattr(torch._dynamo.config, "automatic_dynamic_shapes"):  # one static graph per shape, no mark_dynamic
        torch._dynamo.config.automatic_dynamic_shapes = False
    ceilings = measure_ceilings(smoke=args.smoke)
    print(f"device {torch.cuda.get_device_name() if dev.type == 'cuda' else dev}; matmul ceiling "
          f"{ceilings.matmul_tflops:.1f} TFLOP/s ({'bf16' if dev.type == 'cuda' else 'fp32'}), copy {ceilings.copy_gbps:.0f} GB/s",
          flush=True)
    rep_ms = 30 if args.quick else 100
    records: list[Record] = []
    meta = {"temperature": TAU, "flops_fwd": "2*M*C*D", "flops_total": "8*M*C*D (6*M*C*D when the columns need no grad)",
            "quick": bool(args.quick), "kernel_ms": "device time of all kernels of one fwd+bwd (torch.profiler)",
            "host_ms": "CPU time to issue one fwd+bwd"}
    cases = _cases(args)
    # compile rows last: each costs a warm-up of up to a minute
    plan = [(case, p, None) for case in cases for p in providers if p != "compile" and (p != "auto" or case.auto)]
    plan += [(case, "triton", v) for case in cases for v in case.variants if "triton" in providers]
    plan.sort(key=lambda r: cases.index(r[0]))  # stable: a case's providers, then its variants
    plan += [(case, "compile", None) for case in cases if "compile" in providers and case.compile]
    if dev.type == "cuda":  # the two target shapes from a CUDA graph: the calls with the host out of the way
        plan += [(case, p, "graph") for case in cases if f"{case.kind} {case.m}x{case.c}" in TARGET_SHAPES
                 and case.dtype == "bfloat16" and case.d == 256 for p in ("eager", "triton") if p in providers]
    built: dict = {}
    first: dict = {}
    for case, provider, variant in plan:
        name = provider if variant is None else f"{provider}[{variant}]"
        if time.perf_counter() - t_start > budget:
            records.append(Record(provider=name, case=case.meta(), error="skipped: over the time budget"))
            continue
        if case not in built:  # inputs of one case at a time
            built.clear()
            free_memory()
            torch.manual_seed(0)
            try:
                built[case] = _build(case, dev)
            except Exception as err:  # noqa: BLE001  (OOM allocating the inputs: record, go on)
                records.append(Record(provider=name, case=case.meta(), error=f"inputs: {type(err).__name__}: {err}"[:300]))
                continue
        leaves, fns, eager_fn, bind = built[case]
        if provider == "compile":
            torch._dynamo.reset()  # a fresh compile per shape: no recompile limit, no stale graphs
            fn = bind(torch.compile(eager_fn, dynamic=False))
        else:
            fn = fns[provider]

        def run(fn=fn, variant=variant, case=case, leaves=leaves):
            if variant == "graph":
                t = graph_replay(lambda: torch.autograd.grad(fn(), leaves), args.smoke, rep_ms)
                flops = (8 if case.cols_grad else 6) * case.m * case.c * case.d
                return Record(provider="", case={}, total=t,
                              extra={"host_ms": float("nan"), "graph": True, "tflops_total": flops / t.median / 1e9})
            with _options(variant):
                # forward sanity on the benchmark's own inputs (the unit tests are the real check)
                loss = fn().detach().float()
                torch.testing.assert_close(loss, first.setdefault(case, loss), rtol=2e-2, atol=2e-2)
                del loss
                return measure(fn, leaves, case, args.smoke, rep_ms)

        t0 = time.perf_counter()
        rec = run_guarded(name, case.meta(), run)
        rec.extra["seconds"] = round(time.perf_counter() - t0, 1)
        records.append(rec)
        line = f"  {case.kind:6} {case.m}x{case.c} D={case.d} {case.dtype:8} {name:18}"
        top = "; ".join(f"{k[:28]} {t:.0f}us x{n:g}" for k, t, n in rec.extra.get("top_kernels", [])[:4])
        print(line + (f" ERROR {rec.error[:100]}" if rec.error else
                      f" tot {rec.total.median:8.3f} ms  kern {rec.extra.get('kernel_ms') or float('nan'):8.3f}"
                      f"  host {rec.extra['host_ms']:7.3f}  ({rec.extra['seconds']} s)"
                      + (f"  [{top}]" if provider == "triton" and top else "")), flush=True)
        # after every row: a time cap keeps what was measured
        write_results("contrastive", records, ceilings, args, meta={**meta, "seconds": round(time.perf_counter() - t_start, 1)})
    built.clear()
    free_memory()
    derive_speedups(records, ceilings.matmul_tflops)
    try:
        targets = _targets(records, ceilings) if not args.smoke and dev.type == "cuda" else []
    except Exception as err:  # noqa: BLE001  (never lose the measurements to the summary)
        targets = [f"targets not judged: {type(err).__name__}: {err}"]
    path = write_results("contrastive", records, ceilings, args, meta={
        **meta, "targets": targets, "seconds": round(time.perf_counter() - t_start, 1)})
    print_table(records, _COLUMNS)
    for line in targets:
        print(line, flush=True)
    png = plot(
        path,
        [("forward + backward", lambda r: r.total.median if r.total else None, "ms"),
         ("kernels only (profiler)", lambda r: r.extra.get("kernel_ms"), "ms"),
         ("peak extra memory", lambda r: r.peak_mem_mib, "MiB")],
        x_key="shape",
        series_key=lambda c: f"D={c['D']} {c['dtype']}",
    )
    print(f"\nwrote {path} and {png} in {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
