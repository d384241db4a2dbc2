"""Every method's training step: the eager reference vs fastssl vs fastssl + engine.compile.

One step = forward (every view, the method's losses) + backward + AdamW step + zero_grad + the
method's after-step hook (momentum targets, queues), on random crops already on the device (no data
loader), at the same model, batch and views for every provider:

  eager     ``bench/eager``: the method as its official PyTorch code writes it — timm's ViT on dense
            batches (one call per view where the official code does that), timm's ResNet, torch.nn
            heads, losses on full logits matrices, per-parameter momentum loops; no fastssl op,
            kernel or packing. Built from the fastssl method, so it holds the same weights; torch's
            AdamW with its defaults (foreach).
  fastssl   the method as ``fastssl.methods.registry`` builds it from the config: one packed ViT
            call for all views, the ``fastssl.ops`` ops (backend "auto": Triton on CUDA, reference
            on CPU), fused multi-tensor EMA; AdamW over its parameter groups (fused on CUDA). Its
            step also computes the method's logged metrics (collapse monitors, M-MoCo/M-BYOL's κ),
            as the trainer does; the eager references compute the loss only.
  compile   fastssl with ``engine.compile`` (``fastssl.engine.compile.compile_regions``: every block
            and head compiled in place). Its first step (the compile) is reported as ``first_step_s``.

Sizes: CPU — the ``configs/fmnist/<method>.yaml`` configs (ViT-tiny 28 px / patch 7 or ResNet-18,
B = 128, fp32). CUDA — the ``configs/imagenet`` templates (ViT-S/16 or ViT-B/16 as each template
says, ResNet-50 for the ResNet methods; the Accel rows are the ResNet-50 templates plus the fmnist
Accel settings), bf16 autocast over fp32 weights. ``--smoke``: timm's test ViT / ResNet at 16 px,
B = 8: runs anywhere, not a measurement.

Timing: ``--warmup`` steps per provider (compile included), then ``--rounds`` rounds in which every
provider takes one step in turn (the order rotates each round), so a machine whose load drifts biases
no provider; median and 20/80 % quantiles per provider; a per-method wall cap (``--cap-s``) ends the
rounds early (at least 3). Every step draws its randomness (masks, chunk permutations, Accel's stage)
from ``StepContext(step).generator()``, and round r is step r for every provider, so each provider
meets the same draws. Peak memory: CUDA only, one extra step above what was allocated before it.
The load average is recorded before and after each method.

``--profile``: torch.profiler over 2 steps per method and provider (1 with ``--quick``): the top ops
by self CPU time (and self CUDA time on a GPU) go into the JSON (``meta.profiles``) and are printed as
Markdown; a gzipped Chrome trace per method and provider goes to
``bench/results/methods-<device>-traces/<method>-<provider>.json.gz``.

    python bench/methods.py                      # CPU: every method, eager + fastssl (+ compile: --providers)
    python bench/methods.py --quick --profile    # GPU: every method, eager + fastssl, B <= 128, < 3 min on an H200
    python bench/methods.py                      # GPU: template batches, all three providers (~10+ min)
    python bench/methods.py --smoke              # tiny, anywhere: the smoke test runs this
    python bench/methods.py --methods simclr,mae --rounds 9
"""
from __future__ import annotations

import argparse
import gzip
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

if not torch.cuda.is_available():  # the fastssl ops' Triton code runs in the interpreter on CPU (never by default)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bench.common import (RESULTS, Record, Timing, _slug, device, device_name, free_memory, is_oom,  # noqa: E402
                          measure_ceilings, peak_memory_mib, plot, quantiles, sync, write_results)

ROOT = Path(__file__).resolve().parent.parent
# In run order: first the methods no other benchmark compares with eager code (a --budget-s cut drops the tail).
METHODS = ("simclr", "byol", "simsiam", "mocov3", "mocov2", "swav", "mae", "can", "dac", "mmoco", "mbyol",
           "simclr_resnet", "simclr_accel", "mocov2_accel", "swav_accel")
PROVIDERS = ("eager", "fastssl", "compile")
# The Accel settings of configs/fmnist/*_accel.yaml, for the ResNet-50 GPU rows.
ACCEL = ("method.accel={partial_backprop: true, hard_pairs: true, regions: 2, region_scale: 0.75, "
         "hard_pair_stages: [1, 2], stage_head: {hidden_dim: 512, out_dim: 128, num_layers: 2}}")
RESNET_SIMCLR = ["model.arch=resnet50", "method.loss=nt_xent", "method.temperature=0.2",
                 "method.head={hidden_dim: 2048, out_dim: 128, num_layers: 2}"]


@dataclass
class Spec:
    """Where a method's case comes from: a config file plus overrides, and its batch."""

    name: str
    config: Path
    overrides: list[str] = field(default_factory=list)
    batch: int | None = None  # None: the config's optim.batch_size


def spec(name: str, size: str, batch: int | None = None) -> Spec:
    """``size``: "cpu" (configs/fmnist), "gpu" (configs/imagenet templates) or "smoke"."""
    if name not in METHODS:
        raise SystemExit(f"unknown method {name!r}; choose from {','.join(METHODS)}")
    if size in ("cpu", "smoke"):
        file = {"simclr_resnet": "simclr_resnet18"}.get(name, name)
        s = Spec(name, ROOT / "configs" / "fmnist" / f"{file}.yaml", batch=batch)
        if size == "smoke":
            resnet = name in ("mocov2", "swav") or name.startswith(("simclr_", "mocov2_", "swav_"))
            s.overrides = (["model.arch=test_resnet", "data.image_size=16"] if resnet else
                           ["model.arch=test_vit", "data.image_size=16", "model.patch_size=4"])
            if name in ("mae", "can", "dac"):
                s.overrides.append("method.decoder={embed_dim: 32, depth: 1, num_heads: 2}")
            if name == "swav":
                s.overrides.append("method.local_size=8")
            s.batch = batch or 8
        return s
    base = name.split("_")[0]
    # The template's model, method and optimizer; the data section only has to validate (random crops).
    s = Spec(name, ROOT / "configs" / "imagenet" / f"{base}.yaml", ["data.dataset=fashion-mnist", "data.root=bench/results/no-data"],
             batch=batch)
    if name in ("simclr_resnet", "simclr_accel"):
        s.overrides += RESNET_SIMCLR
    if name.endswith("_accel"):
        s.overrides.append(ACCEL)
        if base == "swav":
            s.overrides.append("method.n_local=0")
    return s


def make_batch(method, image_size: int, b: int, dev: torch.device):
    """Random crops of every name ``method.crops()`` asks for: ``[count, B, 3, S, S]`` (same seed for every provider)."""
    from fastssl.data.batch import Batch

    g = torch.Generator().manual_seed(1)
    crops = {c.name: torch.randn(c.count, b, 3, c.size or image_size, c.size or image_size, generator=g).to(dev)
             for c in method.crops()}
    index = torch.arange(b, device=dev)
    return Batch(crops, index, index)


@dataclass
class Runner:
    """One provider's model, optimizer and step closure for one method."""

    provider: str
    step: callable
    first_loss: float | None = None
    first_step_s: float | None = None
    build_s: float = 0.0
    info: dict = field(default_factory=dict)


def build_runner(s: Spec, provider: str, dev: torch.device, amp: bool, shared: dict) -> Runner:
    """The provider's step for case ``s``; ``shared`` carries the batch between providers of a method."""
    from fastssl.config import load_config
    from fastssl.engine.params import optimizer_groups
    from fastssl.methods.base import StepContext
    from fastssl.methods.registry import build_method

    t0 = time.perf_counter()
    # The eager reference copies the weights of a freshly built method and leaves it untouched, so the
    # next provider takes that method instead of building another (a ViT-B build costs seconds).
    cfg, method = shared.pop("fresh", (None, None))
    if method is None:
        cfg = load_config(s.config, s.overrides)
        torch.manual_seed(0)
        method = build_method(cfg).to(dev).train()
    b = s.batch or cfg.optim.batch_size
    if "batch" not in shared:
        shared["batch"] = make_batch(method, cfg.data.image_size, b, dev)
        enc = method.encoder
        shared["case"] = {"method": s.name, "arch": cfg.model.arch, "img": cfg.data.image_size,
                          "patch": getattr(enc, "patch_size", None), "batch": b,
                          "precision": "bf16-autocast" if amp else "fp32", "config": str(s.config.relative_to(ROOT)),
                          "overrides": s.overrides}
    batch = shared["batch"]
    lr, wd = 1e-4, cfg.optim.weight_decay
    info: dict = {}
    if provider == "eager":
        from bench.eager import after_step, build_eager

        ref = build_eager(method)
        shared["fresh"] = (cfg, method)
        opt = torch.optim.AdamW([p for p in ref.parameters() if p.requires_grad], lr=lr, weight_decay=wd)
        fwd = lambda ctx: ref(batch, ctx)  # noqa: E731
        after = lambda ctx: after_step(ref, ctx)  # noqa: E731
    else:
        from fastssl.methods.base import AfterStep

        if provider == "compile":
            from fastssl.engine.compile import compile_regions

            info["regions"] = len(compile_regions(method, "default", dev, torch.bfloat16 if amp else torch.float32))
        opt = torch.optim.AdamW(optimizer_groups(method.param_groups(), wd)[0], lr=lr, fused=dev.type == "cuda")
        fwd = lambda ctx: method(batch, ctx).loss  # noqa: E731
        after = method.after_step if isinstance(method, AfterStep) else (lambda ctx: None)
    state = {"step": 0}

    def step() -> torch.Tensor:
        ctx = StepContext(state["step"], steps_per_epoch=100, total_steps=1000, seed=0)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = fwd(ctx)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        after(ctx)
        state["step"] += 1
        return loss

    return Runner(provider, step, build_s=time.perf_counter() - t0, info=info)


def timed(fn) -> float:
    """Wall milliseconds of ``fn()`` with the device drained before and after."""
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return (time.perf_counter() - t0) * 1e3


# Where a step's time goes, by kind of op (first match wins; patterns are substrings of aten op names).
CATEGORIES = (
    ("autograd engine", ("autograd::",)),  # self time of the engine's wrappers: per-op overhead
    ("attention", ("attention", "sdpa", "_efficient_attention", "_flash", "softmax")),
    ("matmul", ("mm", "addmm", "bmm", "matmul", "linear", "einsum", "baddbmm")),
    ("conv", ("conv", "cudnn_convolution", "mkldnn_convolution")),
    ("norm", ("layer_norm", "batch_norm", "native_layer_norm", "native_batch_norm", "norm")),
    ("optimizer", ("adam", "foreach", "optimizer", "lerp")),
    ("loss", ("cross_entropy", "nll_loss", "log_softmax", "logsumexp", "fastssl::", "triton")),
    ("elementwise", ("add", "mul", "div", "sub", "relu", "gelu", "threshold", "sqrt", "exp", "pow", "neg", "sigmoid",
                     "sum", "mean", "max", "min", "clamp")),
    ("data movement", ("copy", "cat", "index", "gather", "scatter", "stack", "clone", "contiguous", "pad",
                       "split", "unbind", "fill", "zero", "empty", "to", "masked", "where", "select", "slice")),
)


def categorize(events, key) -> dict[str, float]:
    """Share (%) of the profiled self time per op category (``CATEGORIES``; "other": the rest)."""
    totals: dict[str, float] = {}
    for e in events:
        name = e.key.lower()
        cat = next((c for c, pats in CATEGORIES if any(p in name for p in pats)), "other")
        totals[cat] = totals.get(cat, 0.0) + key(e)
    whole = sum(totals.values()) or 1.0
    return {c: round(100 * v / whole, 1) for c, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def profile_steps(step, steps: int, trace: Path | None, top: int = 15) -> tuple[list[dict], dict[str, float]]:
    """torch.profiler over ``steps`` steps: the top ops by self CPU time (self CUDA time on a GPU),
    per step, and the share of each op category; the Chrome trace gzipped to ``trace``."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        sync()
    events = prof.key_averages()
    dev_time = lambda e: getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0))  # noqa: E731
    key = dev_time if cuda else (lambda e: e.self_cpu_time_total)
    total = sum(key(e) for e in events) or 1
    rows = []
    for e in sorted(events, key=key, reverse=True)[:top]:
        row = {"op": e.key, "calls": e.count // steps, "self_cpu_ms": e.self_cpu_time_total / 1e3 / steps}
        if cuda:
            row["self_cuda_ms"] = dev_time(e) / 1e3 / steps
        row["pct"] = 100 * key(e) / total
        rows.append(row)
    cats = categorize(events, key)
    if trace is not None:
        trace.parent.mkdir(parents=True, exist_ok=True)
        raw = trace.with_suffix("")  # .json
        prof.export_chrome_trace(str(raw))
        with open(raw, "rb") as src, gzip.open(trace, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst)
        raw.unlink()
    return rows, cats


def accel_warmup(n_stages: int = 4, limit: int = 32) -> int:
    """Steps from 0 until every stage 1 … n has been drawn by partial back-prop (the draws are fixed by
    the step index: ``StepContext(step).generator()``, seed 0)."""
    from fastssl.methods.accel import draw_stage
    from fastssl.methods.accel_config import AccelConfig
    from fastssl.methods.base import StepContext

    seen = set()
    for k in range(limit):
        seen.add(draw_stage(AccelConfig(), n_stages, StepContext(k, steps_per_epoch=100, total_steps=1000, seed=0).generator()))
        if len(seen) == n_stages:
            return k + 1
    return limit


def run_method(s: Spec, providers: list[str], dev: torch.device, amp: bool, args, traces: Path | None
               ) -> tuple[list[Record], dict, dict]:
    """Every provider of one method: build, warm up, alternate timed rounds, peak memory, profile.
    A provider that fails is recorded with its error; the others go on."""
    shared: dict = {}
    runners: dict[str, Runner] = {}
    records: list[Record] = []
    errors: dict[str, str] = {}
    load_before = os.getloadavg()
    t_method = time.perf_counter()

    def fail(prov: str, err: BaseException) -> None:
        errors[prov] = ("OOM: " if is_oom(err) else "") + f"{type(err).__name__}: {err}"[:500]
        runners.pop(prov, None)
        print(f"  {s.name} {prov}: {errors[prov].splitlines()[0][:160]}", flush=True)
        free_memory()

    warmup = args.warmup
    if s.name.endswith("_accel") and "compile" in providers:  # partial back-prop: a compiled step meets a new graph at
        warmup = max(warmup, accel_warmup())  # every new stage: warm up until each has been drawn (same count for all)
    for prov in providers:
        try:
            r = build_runner(s, prov, dev, amp, shared)
            t0 = time.perf_counter()
            loss = r.step()
            r.first_loss = float(loss.detach().float())
            sync()
            r.first_step_s = time.perf_counter() - t0
            if not torch.isfinite(torch.tensor(r.first_loss)):
                raise FloatingPointError(f"non-finite first loss {r.first_loss}")
            for _ in range(warmup - 1):
                r.step()
            runners[prov] = r
        except Exception as err:  # noqa: BLE001  (one provider failing must not end the method)
            fail(prov, err)
    samples: dict[str, list[float]] = {p: [] for p in runners}
    for rnd in range(args.rounds):
        if rnd >= 3 and time.perf_counter() - t_method > args.cap_s:
            break
        order = list(runners)
        order = order[rnd % len(order):] + order[:rnd % len(order)] if order else order
        for prov in order:
            try:
                samples[prov].append(timed(runners[prov].step))
            except Exception as err:  # noqa: BLE001
                fail(prov, err)
                samples.pop(prov, None)
    profiles: dict = {}
    categories: dict = {}
    for prov, r in list(runners.items()):
        try:
            peak = peak_memory_mib(r.step)
            if args.profile:
                trace = traces / f"{s.name}-{prov}.json.gz" if traces is not None else None
                profiles[f"{s.name}/{prov}"], categories[f"{s.name}/{prov}"] = profile_steps(r.step, args.profile_steps, trace)
        except Exception as err:  # noqa: BLE001
            fail(prov, err)
            continue
        t = quantiles(samples[prov])
        b = shared["case"]["batch"]
        extra = {"images_per_s": b / (t.median / 1e3), "first_loss": r.first_loss, "first_step_s": r.first_step_s,
                 "build_s": r.build_s, "warmup_steps": warmup, "timed_steps": len(samples[prov]),
                 "min_ms": min(samples[prov]), "samples_ms": samples[prov], **r.info}
        records.append(Record(prov, shared["case"], total=t, peak_mem_mib=peak, extra=extra))
    case = shared.get("case", {"method": s.name})
    for prov, err in errors.items():
        records.append(Record(prov, case, error=err))
    by = {r.provider: r for r in records if r.error is None}
    for r in by.values():
        r.extra["load_average"] = [load_before, os.getloadavg()]
        if "eager" in by:
            r.extra["speedup_vs_eager"] = by["eager"].total.median / r.total.median
            # Round i is step i for every provider (same masks, chunks, Accel stage): the ratio of the
            # summed times over the same steps is the paired comparison (Accel steps vary with the stage).
            e = by["eager"].extra["samples_ms"]
            n = min(len(e), len(r.extra["samples_ms"]))
            r.extra["speedup_vs_eager_paired"] = sum(e[:n]) / sum(r.extra["samples_ms"][:n])
        if "fastssl" in by and r.provider != "fastssl":
            f = by["fastssl"].extra["first_loss"]
            r.extra["first_loss_rel_diff_vs_fastssl"] = abs(r.extra["first_loss"] - f) / max(abs(f), 1e-12)
    del runners, shared
    free_memory()
    return records, profiles, categories


def print_rows(records: list[Record]) -> None:
    print(f"\n{'method':<14}{'arch':<24}{'B':>5} {'provider':<9}{'step ms':>10}{'p20-p80':>17}{'img/s':>9}"
          f"{'x eager':>8}{'peak MiB':>10}{'1st step s':>11}{'1st loss':>10}")
    for r in records:
        c = r.case
        head = f"{c.get('method', '?'):<14}{str(c.get('arch', '')):<24}{c.get('batch', 0):>5} {r.provider:<9}"
        if r.error:
            print(head + f"ERROR {r.error.splitlines()[0][:90]}")
            continue
        e, t = r.extra, r.total
        sp = f"{e['speedup_vs_eager']:8.2f}" if "speedup_vs_eager" in e else f"{'-':>8}"
        pk = f"{r.peak_mem_mib:10.0f}" if r.peak_mem_mib is not None else f"{'-':>10}"
        print(head + f"{t.median:10.1f}{f'{t.p20:.1f}-{t.p80:.1f}':>17}{e['images_per_s']:9.1f}{sp}{pk}"
              f"{e['first_step_s']:11.2f}{e['first_loss']:10.4f}")


def markdown_categories(categories: dict) -> str:
    """Per method and provider: the share of profiled time per op category."""
    cats = [c for c, _ in CATEGORIES] + ["other"]
    lines = ["| method/provider | " + " | ".join(cats) + " |", "|---|" + "---|" * len(cats)]
    for key, shares in categories.items():
        lines.append(f"| {key} | " + " | ".join(f"{shares.get(c, 0.0):.0f}" for c in cats) + " |")
    return "\n".join(lines)


def markdown_summary(records: list[Record], profiles: dict) -> str:
    """One row per method: ms per step of each provider, its speed-up over eager, and (profiled) the
    three ops with the most self time of eager and of fastssl."""
    provs = [p for p in PROVIDERS if any(r.provider == p for r in records)]
    lines = ["| method | arch, B | " + " | ".join(f"{p} median ms (x eager)" for p in provs) + (" | top ops eager / fastssl |" if profiles else " |"),
             "|---|---|" + "---|" * len(provs) + ("---|" if profiles else "")]
    by: dict = {}
    for r in records:
        by.setdefault(r.case.get("method"), {})[r.provider] = r
    for name, rows in by.items():
        ok = [r for r in rows.values() if r.error is None]
        case = ok[0].case if ok else {}
        cells = []
        for p in provs:
            r = rows.get(p)
            if r is None or r.error is not None:
                cells.append("error" if r is not None else "-")
            else:
                cells.append(f"{r.total.median:.0f} (x{r.extra.get('speedup_vs_eager', float('nan')):.2f}, "
                             f"paired x{r.extra.get('speedup_vs_eager_paired', float('nan')):.2f})")
        line = f"| {name} | {case.get('arch', '?')}, {case.get('batch', '?')} | " + " | ".join(cells) + " |"
        if profiles:
            tops = [", ".join(f"{row['op'].removeprefix('aten::')} {row['pct']:.0f}%" for row in profiles.get(f"{name}/{p}", [])[:3])
                    for p in ("eager", "fastssl")]
            line += f" {tops[0]} / {tops[1]} |"
        lines.append(line)
    return "\n".join(lines)


def print_profiles(profiles: dict) -> None:
    for key, rows in profiles.items():
        cuda = rows and "self_cuda_ms" in rows[0]
        print(f"\n{key}: top ops by self {'CUDA' if cuda else 'CPU'} time, per step")
        print("| op | calls | self CPU ms |" + (" self CUDA ms |" if cuda else "") + " % |")
        print("|---|---|---|" + ("---|" if cuda else "") + "---|")
        for r in rows:
            print(f"| {r['op'][:60]} | {r['calls']} | {r['self_cpu_ms']:.2f} |" + (f" {r['self_cuda_ms']:.2f} |" if cuda else "")
                  + f" {r['pct']:.1f} |")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny models at 16 px, B = 8: runs anywhere, not a measurement")
    p.add_argument("--quick", action="store_true", help="GPU: eager + fastssl, B <= 128, 2 warm-up + up to 6 rounds, 8 s cap per method, 175 s in all")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--providers", default=None, help="comma-separated subset of eager,fastssl,compile "
                   "(default: all three on CUDA without --quick; eager,fastssl otherwise)")
    p.add_argument("--batch", type=int, default=None, help="images per step (default: the config's; --quick caps it at 128)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (one step per provider each); default 7 (smoke 2, quick 6)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per provider first (the first includes any compile)")
    p.add_argument("--cap-s", type=float, default=None, help="wall seconds per method after which rounds stop (>= 3 rounds); "
                   "default: none (quick: 10)")
    p.add_argument("--budget-s", type=float, default=None, help="wall seconds for the whole run; methods not started "
                   "by then are recorded as not run (default: none; quick on CUDA: 175)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's). On a shared CPU use 1: "
                   "OpenMP threads spin-wait against other work (measured here: 2 threads 4x slower than 1 at load 5)")
    p.add_argument("--profile", action="store_true", help="torch.profiler top ops + a gzipped Chrome trace per method and provider")
    p.add_argument("--profile-steps", type=int, default=None, help="steps per profile (default 2; quick 1)")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--name", default="methods", help="results file stem")
    p.add_argument("--summarize", type=Path, default=None, help="print the Markdown tables of an existing results JSON and exit")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    if args.providers is None:
        args.providers = "eager,fastssl,compile" if cuda and not args.quick and not args.smoke else "eager,fastssl"
    if args.rounds is None:
        args.rounds = 2 if args.smoke else 6 if args.quick else 7
    if args.cap_s is None:
        args.cap_s = 8.0 if args.quick else float("inf")
    if args.budget_s is None:
        args.budget_s = 175.0 if args.quick and cuda else float("inf")
    if args.quick and cuda:
        args.batch = min(args.batch or 128, 128)
    args.warmup = max(1, args.warmup)
    if args.profile_steps is None:
        args.profile_steps = 1 if args.quick else 2
    return args


def summarize(path: Path) -> None:
    """The Markdown tables of a results JSON written by this script (e.g. one brought back from a GPU)."""
    import json

    doc = json.loads(Path(path).read_text())
    records = [Record(**{**r, "total": Timing(**r["total"]) if r["total"] else None}) for r in doc["records"]]
    m = doc["meta"]
    print(f"{doc['device']}, torch {doc['torch']}, {m.get('size')} sizes, providers {m.get('providers')}, "
          f"load {m.get('load_average_start')} -> {m.get('load_average_end')}\n")
    print(markdown_summary(records, m.get("profiles", {})))
    if m.get("profile_categories"):
        print("\nshare of profiled self time per op category (%)\n" + markdown_categories(m["profile_categories"]))


def main(argv=None) -> Path | None:
    args = parse(argv)
    if args.summarize is not None:
        summarize(args.summarize)
        return None
    dev = device()
    if args.threads:
        torch.set_num_threads(args.threads)
    elif args.smoke and dev.type == "cpu":
        torch.set_num_threads(1)  # tiny ops: extra threads only spin against other work on a shared CPU
    amp = dev.type == "cuda"
    size = "smoke" if args.smoke else "gpu" if dev.type == "cuda" else "cpu"
    providers = [p for p in args.providers.split(",") if p]
    bad = set(providers) - set(PROVIDERS)
    if bad:
        raise SystemExit(f"unknown providers {sorted(bad)}; choose from {','.join(PROVIDERS)}")
    names = [m for m in args.methods.split(",") if m]
    specs = [spec(n, size, args.batch) for n in names]
    ceilings = measure_ceilings(smoke=True)
    traces = None
    if args.profile:
        traces = args.out_dir / f"{args.name}-{_slug(device_name())}{'-smoke' if args.smoke else ''}-traces"
    print(f"device {device_name()} ({torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}); "
          f"providers {providers}; {args.rounds} rounds after {args.warmup} warm-up steps", flush=True)
    records: list[Record] = []
    profiles: dict = {}
    categories: dict = {}
    meta = {"step": "forward + losses + backward + AdamW + zero_grad + after_step, random crops on the device",
            "size": size, "rounds": args.rounds, "warmup": args.warmup, "cap_s": args.cap_s, "budget_s": args.budget_s,
            "quick": args.quick,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "load_average_start": os.getloadavg(),
            "providers": providers, "profiles": profiles, "profile_categories": categories, "optimizer": {"eager": "AdamW (torch defaults)",
                                                                        "fastssl": "AdamW over param groups, fused on CUDA"}}
    path = None
    t_all = time.perf_counter()
    for s in specs:
        t0 = time.perf_counter()
        if t0 - t_all > args.budget_s:
            records += [Record(p, {"method": s.name}, error=f"not run: over --budget-s {args.budget_s:.0f}") for p in providers]
            print(f"  {s.name}: not run (over --budget-s)", flush=True)
            continue
        try:
            recs, profs, cats = run_method(s, providers, dev, amp, args, traces)
        except Exception as err:  # noqa: BLE001  (a method that cannot even be built: record, go on)
            recs, profs, cats = [Record(p, {"method": s.name}, error=f"{type(err).__name__}: {err}"[:500]) for p in providers], {}, {}
        records += recs
        profiles.update(profs)
        categories.update(cats)
        for r in recs:
            msg = r.error.splitlines()[0][:120] if r.error else (
                f"{r.total.median:.1f} ms ({r.total.p20:.1f}-{r.total.p80:.1f}), {r.extra['images_per_s']:.1f} img/s, "
                f"x{r.extra.get('speedup_vs_eager', float('nan')):.2f} vs eager, first loss {r.extra['first_loss']:.4f}")
            print(f"  {s.name:<14}{r.provider:<9}{msg}", flush=True)
        print(f"  {s.name}: {time.perf_counter() - t0:.1f} s, load {os.getloadavg()[0]:.2f}", flush=True)
        meta["load_average_end"] = os.getloadavg()
        meta["wall_s"] = time.perf_counter() - t_all
        path = write_results(args.name, records, ceilings, args, meta=meta)  # after every method: a cut run keeps its rows
    if path is None:
        raise SystemExit("no methods selected")
    print_rows(records)
    if profiles:
        print_profiles(profiles)
    print("\n" + markdown_summary(records, profiles))
    if categories:
        print("\nshare of profiled self time per op category (%)\n" + markdown_categories(categories))
    try:
        png = plot(path, [("step time", lambda r: r.total.median if r.total else None, "ms per step"),
                          ("throughput", lambda r: r.extra.get("images_per_s"), "images/s"),
                          ("speed-up over the eager reference", lambda r: r.extra.get("speedup_vs_eager"), "x eager")],
                   x_key="method", series_key=lambda c: "")
        print(f"\nwrote {path} and {png}" + (f" (traces in {traces})" if traces else ""))
    except Exception as err:  # noqa: BLE001  (a plot is a convenience)
        print(f"\nwrote {path}; no plot: {err}")
    print(f"total {time.perf_counter() - t_all:.0f} s")
    return path


if __name__ == "__main__":
    main()
