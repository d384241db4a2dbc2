"""Shared benchmark plumbing: timing, peak memory, device ceilings, JSON + PNG output.

Every ``bench/<name>.py`` compares providers (eager, torch.compile of the eager code, triton)
over a size sweep and writes ``bench/results/<name>-<device>.json`` plus a PNG. ``--smoke`` runs a
tiny sweep on whatever device is present (CPU included) so the script is known to work end to end;
smoke numbers are not performance numbers and are written under a ``-smoke`` name.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Timing:
    """Milliseconds: median and the 20% / 80% quantiles."""

    median: float
    p20: float
    p80: float


@dataclass
class Ceilings:
    """Measured in the same run: dense bf16 (fp32 on CPU) matmul TFLOP/s and copy GB/s (read + write)."""

    matmul_tflops: float
    copy_gbps: float


@dataclass
class Record:
    provider: str
    case: dict
    fwd: Timing | None = None
    bwd: Timing | None = None
    total: Timing | None = None
    peak_mem_mib: float | None = None
    extra: dict = field(default_factory=dict)
    error: str | None = None


def parse_args(description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None,
               argv: list[str] | None = None) -> argparse.Namespace:
    """The options every bench takes, plus ``extra``'s; ``argv`` (default: the command line) lets
    ``bench/throughput.py`` forward its flags to another bench's ``main``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true", help="tiny sweep that runs anywhere (CPU too); not a measurement")
    p.add_argument("--providers", default="eager,compile,triton", help="comma-separated subset to run")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    if extra is not None:
        extra(p)
    return p.parse_args(argv)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu-{platform.machine()}"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], *, smoke: bool = False, rep_ms: float = 100, reps: int | None = None,
            host: bool = False) -> Timing:
    """Time ``fn`` with device events (``triton.testing.do_bench``) on CUDA, a host clock on CPU.

    ``rep_ms``: CUDA timing budget; do_bench repeats ``fn`` about rep_ms / (its time) times, so a
    function that takes ~100 ms (a whole training step) needs a larger budget for real quantiles.
    ``reps``: host-clock samples after the one warm-up call (default 10, 3 with ``smoke``).
    ``host``: the host clock even where CUDA is present, for work that runs on the CPU (a CPU-only
    model, a data loader): device events would time an idle stream.
    """
    if torch.cuda.is_available() and not host:
        import triton.testing

        med, p20, p80 = triton.testing.do_bench(fn, warmup=25, rep=rep_ms if not smoke else 10, quantiles=[0.5, 0.2, 0.8])
        return Timing(med, p20, p80)
    fn()  # warm-up (compilation, allocator)
    return time_rounds({"fn": fn}, reps if reps is not None else 3 if smoke else 10)["fn"]


def time_rounds(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, Timing]:
    """Host clock, no warm-up: each function once per round, in turn; median and 20/80 % quantiles per
    function. With several functions a machine whose load drifts (a shared CPU) biases none of them.
    Each call is followed by a device sync, so a function that queues CUDA work is timed in full."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            samples[k].append((time.perf_counter() - t0) * 1e3)
    return {k: quantiles(s) for k, s in samples.items()}


def quantiles(samples: list[float]) -> Timing:
    """Median and 20 / 80 % quantiles (nearest rank) of host-timed samples."""
    s = sorted(samples)
    q = lambda f: s[min(len(s) - 1, int(f * len(s)))]  # noqa: E731
    return Timing(q(0.5), q(0.2), q(0.8))


def peak_memory_mib(fn: Callable[[], object]) -> float | None:
    """Peak device memory allocated by ``fn`` above what was allocated before it (CUDA only)."""
    if not torch.cuda.is_available():
        return None
    sync()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    sync()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def is_oom(err: BaseException) -> bool:
    """An out-of-memory error, as torch raises it or as a compiled kernel reports it."""
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def free_memory() -> None:
    """Drop what the last case left behind (cycles, cached CUDA blocks) before the next one starts."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_guarded(provider: str, case: dict, fn: Callable[[], Record]) -> Record:
    """``fn()`` as the record of (provider, case); a failure (OOM at a large size, a provider that does
    not compile) becomes a record with ``error`` instead of ending the sweep. Frees memory after."""
    try:
        rec = fn()
    except Exception as err:  # noqa: BLE001  (record and go on: one failing case must not hide the rest)
        rec = Record(provider=provider, case={}, error=("OOM: " if is_oom(err) else "") + f"{type(err).__name__}: {err}"[:500])
    rec.provider, rec.case = provider, case
    free_memory()
    sync()
    return rec


@dataclass
class Column:
    """One column of a results table: header, width, the value of a record (None: '-'), its format."""

    header: str
    width: int
    value: Callable[[Record], object]
    spec: str = ""


def ms(t: Timing | None) -> float | None:
    return t.median if t is not None else None


def print_table(records: list[Record], columns: list[Column]) -> None:
    """Print the records as a fixed-width table; a failed record shows its error after the key columns
    (those whose value does not need a measurement, i.e. the columns before the first None)."""
    def cell(col: Column, r: Record) -> str:
        v = col.value(r)
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return f"{'-':>{col.width}}"
        return f"{v:>{col.width}{col.spec}}"

    print("\n" + "".join(f"{c.header:>{c.width}}" for c in columns))
    for r in records:
        if r.error:
            keys = []
            for c in columns:
                try:
                    v = c.value(r)
                except (AttributeError, KeyError, TypeError):
                    break
                if v is None:
                    break
                keys.append(cell(c, r))
            print("".join(keys) + f"  ERROR {r.error.splitlines()[0][:80]}")
            continue
        print("".join(cell(c, r) for c in columns))


def measure_ceilings(*, smoke: bool = False) -> Ceilings:
    """A large matmul and a large copy on this device, timed like the kernels under test."""
    dev = device()
    n = 1024 if smoke else 8192
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    t_mm = time_fn(lambda: a @ b, smoke=smoke).median
    numel = (1 << 20 if smoke else 1 << 28)
    src = torch.randn(numel, device=dev, dtype=torch.float32)
    dst = torch.empty_like(src)
    t_cp = time_fn(lambda: dst.copy_(src), smoke=smoke).median
    return Ceilings(matmul_tflops=2 * n**3 / t_mm / 1e9, copy_gbps=2 * 4 * numel / t_cp / 1e6)


def write_results(name: str, records: list[Record], ceilings: Ceilings, args: argparse.Namespace, meta: dict | None = None) -> Path:
    """Write ``<out>/<name>-<device>[-smoke].json``; returns its path."""
    args.out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "-smoke" if args.smoke else ""
    path = args.out_dir / f"{name}-{_slug(device_name())}{suffix}.json"
    doc = {
        "benchmark": name,
        "device": device_name(),
        "torch": torch.__version__,
        "smoke": bool(args.smoke),
        "ceilings": asdict(ceilings),
        "meta": meta or {},
        "records": [asdict(r) for r in records],
    }
    path.write_text(json.dumps(doc, indent=1))
    return path


def _bars(ax, series: dict[str, list[tuple[str, float]]]) -> None:
    """Categorical x (in first-seen order): one bar per series within each category's group."""
    cats = list(dict.fromkeys(x for pts in series.values() for x, _ in pts))
    width = 0.8 / max(len(series), 1)
    for j, (label, pts) in enumerate(series.items()):  # first-seen order: the baseline provider first
        at = dict(pts)
        xs = [i for i, c in enumerate(cats) if c in at]
        ax.bar([i + j * width for i in xs], [at[cats[i]] for i in xs], width, label=label)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(cats))], cats,
                  rotation=30 if len(cats) > 6 else 0, ha="right" if len(cats) > 6 else "center")


def plot(path_json: Path, panels: list[tuple[str, Callable[[Record], float | None], str]], x_key: str, series_key: Callable[[dict], str]) -> Path:
    """One PNG beside the JSON: a panel per (title, value-of-record, y label), log-log over ``x_key``;
    grouped bars (one group per value, one bar per series) when ``x_key`` names a category such as a method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doc = json.loads(path_json.read_text())
    records = [Record(**{**r, **{k: Timing(**r[k]) if r[k] else None for k in ("fwd", "bwd", "total")}}) for r in doc["records"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (title, value, ylabel) in zip(axes[0], panels):
        series: dict[str, list[tuple[float, float]]] = {}
        for r in records:
            v = value(r)
            if v is not None and r.error is None:
                series.setdefault(series_key(r.case) + f" [{r.provider}]", []).append((r.case[x_key], v))
        if any(isinstance(x, str) for pts in series.values() for x, _ in pts):
            _bars(ax, series)
        else:
            for label, pts in sorted(series.items()):
                pts.sort()
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
        ax.set_xlabel(x_key)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{doc['benchmark']} on {doc['device']}" + (" (smoke, not a measurement)" if doc["smoke"] else ""))
    fig.tight_layout()
    out = path_json.with_suffix(".png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def time_grad_case(fn: Callable[[], torch.Tensor], leaves, flops_fwd: float, flops_total: float, *, smoke: bool) -> Record:
    """Time ``fn`` (forward), its backward alone, both together; peak memory of both; TFLOP/s from the
    given FLOP counts. Gradients go to ``leaves`` through ``autograd.grad`` (not ``.backward``: no
    read-modify-write of accumulated ``.grad`` inside the timing)."""
    out = fn()
    fwd = time_fn(fn, smoke=smoke)
    extra: dict = {}

    def backward():
        torch.autograd.grad(out, leaves, retain_graph=True)

    def both():
        torch.autograd.grad(fn(), leaves)

    try:
        bwd = time_fn(backward, smoke=smoke)
    except RuntimeError as err:  # a compiled graph may refuse retain_graph; forward+backward still counts
        if is_oom(err):
            raise
        bwd, extra["bwd_error"] = None, f"{type(err).__name__}: {err}"[:300]
    del out
    total = time_fn(both, smoke=smoke)
    peak = peak_memory_mib(both)
    extra["tflops_fwd"] = flops_fwd / fwd.median / 1e9
    extra["tflops_total"] = flops_total / total.median / 1e9
    if bwd is not None:
        extra["tflops_bwd"] = (flops_total - flops_fwd) / bwd.median / 1e9
    return Record(provider="", case={}, fwd=fwd, bwd=bwd, total=total, peak_mem_mib=peak, extra=extra)


def pick_list(arg: str | None, default: list, cast=int) -> list:
    """A comma-separated command-line list, or ``default`` when not given."""
    return [cast(v) for v in arg.split(",") if v.strip()] if arg else default


def by_case(records: list[Record]) -> list[dict[str, Record]]:
    """The records grouped by case (every provider of one shape together), in first-seen order."""
    groups: dict = {}
    for r in records:
        groups.setdefault(tuple(sorted(r.case.items())), {})[r.provider] = r
    return list(groups.values())


def derive_speedups(records: list[Record], ceiling: float, *, rate: str = "tflops_total", pct: str = "pct_matmul") -> None:
    """Per case: ``extra[pct]``, the share of ``ceiling`` (the rate measured in the same run) that
    ``extra[rate]`` reaches (and ``extra[pct + "_kernel"]`` from ``extra["kernel_" + rate]`` where a row
    has kernel-only times), and the speed-ups over the eager and compile providers; idempotent."""
    for group in by_case(records):
        for r in group.values():
            if r.error is not None:
                continue
            r.extra[pct] = 100 * r.extra[rate] / ceiling
            if r.extra.get(f"kernel_{rate}"):
                r.extra[f"{pct}_kernel"] = 100 * r.extra[f"kernel_{rate}"] / ceiling
            for base in ("eager", "compile"):
                b = group.get(base)
                if b is not None and b is not r and b.error is None:
                    r.extra[f"speedup_vs_{base}"] = b.total.median / r.total.median


def make_train_step(fwd: Callable, batch, ctx, opt: torch.optim.Optimizer, device_type: str, amp: bool) -> Callable[[], torch.Tensor]:
    """One optimizer step of ``fwd(batch, ctx).loss`` (bf16 autocast when ``amp``), as a closure to time."""

    def step() -> torch.Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
            loss = fwd(batch, ctx).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step
