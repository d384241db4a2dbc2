"""The trainer itself, per method: images/s and MFU of ``fastssl/train.py`` on synthetic batches.

Each row is one ``python fastssl/train.py --config configs/imagenet/<method>.yaml data.synthetic=true
eval.enabled=false ...`` run (``fastssl.train.main``: the real CLI, the DeepSpeed engine, the method,
logging), bf16 on one device, DeepSpeed ZeRO 0 or 2, with or without ``engine.compile``, bf16 by
``engine.amp`` (``autocast``: fp32 weights under torch.autocast, torch's AdamW stepped by DeepSpeed as it
is; ``deepspeed``: DeepSpeed's bf16 model and optimizer wrapper; ``auto``: autocast at ZeRO 0 on CUDA;
fastssl/engine/amp.py). Rows run in
a child process, several in one (``--rows-per-process``: imports and CUDA start-up, ~15 s on the GPU
machine, are paid once); the parent watches every row: past its cap (``--row-timeout``) or the
sweep's budget (``--budget``) the child is killed, the row recorded as an error, and a fresh child
takes the rows after it. The JSON is rewritten after every row, so a cap keeps what was measured.

Per row, in order:
  ceilings   bf16 matmul TFLOP/s and copy GB/s (``bench.common.measure_ceilings``), once per process:
             every row of a process is measured against the same rate
  flops      model FLOPs of one optimizer step (once per method and shape in a process), counted by
             ``torch.utils.flop_counter.FlopCounterMode`` over the method's eager forward + backward on
             one synthetic batch of the row's shape
             (matmuls, convolutions, attention; elementwise work, norms and the optimizer are not FLOPs
             here, as in nanoGPT's and PaLM's MFU). The count runs the losses on their eager reference,
             attention as one SDPA call per run of equal-length sequences on SDPA's math path (two
             batched matmuls forward, four backward: 12·L·D·T² per view), so every FLOP is an aten op
             the counter sees and the count is the same on every device; the trainer itself runs the
             fused kernels (same maths). notes/gpu.md lists the count per method.
  trainer    ``fastssl.train.main`` for ``warmup + steps`` optimizer steps, the loss read every
             ``warmup`` steps only; images/s = the trainer's steady rate between the first log step
             (after ``warmup`` steps: compilation, allocator, autotuning) and the last. The run ends
             with its summary only (``--full-finish``: the CLI's own end, final checkpoint, encoder
             export and curves, which the tests cover and a speed row need not pay for).
             ``--profile N``: N steps under torch.profiler (device-busy time vs wall per step, kernel
             launches per step, top device and host ops).
  bare       (``--bare``, default on) the model step of ``bench/throughput.py`` at the same shape, for
             this method: forward + backward + torch fused AdamW + ``after_step``, bf16 autocast, no
             DeepSpeed, timed with ``triton.testing.do_bench``; with ``engine.compile`` the same regions.
             Measured once per method, shape and compile setting in a process: rows that differ only in
             ZeRO stage or ``engine.amp`` share it (``bare_shared``)
  derived    MFU = flops / trainer step time / matmul rate; trainer overhead = bare rate / trainer rate - 1

Shapes: the imagenet templates at ViT-B/16 224 px (``--arch``; ResNet methods keep ResNet-50), bf16,
B = 256 per GPU for every method unless ``ROW_BATCH`` says otherwise; SimCLR runs its DCL loss.

    python bench/train.py --quick        # GPU: the plan of ``quick_rows`` (the amp lever on SimCLR first)
    python bench/train.py                # GPU: every method, eager and compile, ZeRO 0
    python bench/train.py --smoke        # anywhere: timm test_vit / test_resnet, 16 px, B=8, 3 steps; not a measurement
    python bench/train.py --methods simclr --variants compile --profile 3 --steps 6
    python bench/train.py --flops        # FLOPs per method only (CPU will do): bench/results/train-flops.json
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import Ceilings, Column, Record, RESULTS, Timing, device_name, plot, print_table  # noqa: E402

# Priority order: the target first, then every method (a cap cuts the tail, not the head).
METHODS = ("simclr", "mocov3", "byol", "simsiam", "mae", "mmoco", "mbyol", "can", "dac", "swav", "mocov2")
RESNET_METHODS = ("swav", "mocov2")
# --quick, after the SimCLR rows: the methods whose trainer overhead over the bare step was largest
# under DeepSpeed's bf16 wrapper first (H200, bench/results/train-nvidia-h200.json: MAE +64 %, DAC +51 %,
# MoCo v2 +23 %, CAN +12 %, SwAV +9 %), then those already near it (a cap cuts the tail).
QUICK_ORDER = ("mae", "dac", "mocov2", "can", "swav", "mocov3", "byol", "simsiam", "mmoco", "mbyol")
ROW_BATCH: dict[str, int] = {}  # per-method batch where memory or time needs a smaller one (none so far)
# Overrides that make every method tiny (timm's test models, 16 px): the smoke rows and the CPU tests.
TINY_MODEL = ["data.image_size=16", "model.patch_size=4", "model.arch=test_vit"]
TINY_RESNET = ["data.image_size=16", "model.arch=test_resnet", "model.small_stem=true"]
TINY_HEADS: dict[str, list[str]] = {
    "simclr": ["method.head.hidden_dim=64", "method.head.out_dim=32"],
    "byol": ["method.projector.hidden_dim=64", "method.projector.out_dim=32", "method.predictor.hidden_dim=64", "method.predictor.out_dim=32"],
    "simsiam": ["method.projector.hidden_dim=64", "method.projector.out_dim=32", "method.predictor.hidden_dim=16", "method.predictor.out_dim=32"],
    "mocov3": ["method.projector.hidden_dim=64", "method.projector.out_dim=32", "method.predictor.hidden_dim=64", "method.predictor.out_dim=32"],
    "mmoco": ["method.projector.hidden_dim=64", "method.projector.out_dim=32", "method.predictor.hidden_dim=64", "method.predictor.out_dim=32",
              "method.n_chunks=4", "method.target_chunks=2"],
    "mbyol": ["method.projector.hidden_dim=64", "method.projector.out_dim=32", "method.predictor.hidden_dim=64", "method.predictor.out_dim=32",
              "method.n_chunks=4"],
    "mae": ["method.decoder.embed_dim=32", "method.decoder.depth=1", "method.decoder.num_heads=2"],
    "can": ["method.decoder.embed_dim=32", "method.decoder.depth=1", "method.decoder.num_heads=2",
            "method.projector.hidden_dim=64", "method.projector.out_dim=32"],
    "dac": ["method.decoder.embed_dim=32", "method.decoder.depth=1", "method.decoder.num_heads=2",
            "method.projector.hidden_dim=64", "method.projector.out_dim=32", "method.predictor.hidden_dim=16", "method.predictor.out_dim=32"],
    "mocov2": ["method.head.hidden_dim=64", "method.head.out_dim=32", "method.queue_size=64"],
    "swav": ["method.head.hidden_dim=64", "method.head.out_dim=32", "method.n_prototypes=20", "method.n_local=2", "method.local_size=8",
             "method.queue_length=32"],
}


def tiny_overrides(method: str) -> list[str]:
    """Overrides that shrink ``configs/imagenet/<method>.yaml`` to a CPU-sized run (timm test models, 16 px)."""
    return (TINY_RESNET if method in RESNET_METHODS else TINY_MODEL) + TINY_HEADS[method]


def row_overrides(row: dict, out_dir: Path) -> list[str]:
    """The CLI overrides of one row: synthetic data, no evaluation, its shape, engine settings and step counts."""
    o = ["data.synthetic=true", "eval.enabled=false", f"run.output_dir={out_dir}", "run.resume=never",
         "engine.progress=false", "engine.precision=" + row["precision"], f"engine.zero_stage={row['zero']}",
         "engine.amp=" + row.get("amp", "auto"),
         f"engine.compile={str(row['compile']).lower()}", f"optim.batch_size={row['batch']}",
         *(["engine.channels_last=false"] if row.get("nchw") else []),
         f"optim.max_steps={row['warmup'] + row['steps']}", f"engine.log_every_steps={row['warmup']}",
         f"engine.ckpt_every_steps={10**6}", "optim.warmup_epochs=0"]
    if row["method"] == "simclr":
        o.append("method.loss=dcl")
    if row["tiny"]:
        o += tiny_overrides(row["method"])
    elif row["method"] not in RESNET_METHODS:
        o.append(f"model.arch={row['arch']}")
    return o + row.get("extra", [])


# ---------------------------------------------------------------------------------------------------
# child: one row
# ---------------------------------------------------------------------------------------------------

def _model_and_batch(cfg, dev: torch.device):
    from fastssl.data.synthetic import SyntheticLoader
    from fastssl.methods.base import StepContext
    from fastssl.methods.registry import build_method

    torch.manual_seed(cfg.run.seed)
    method = build_method(cfg).to(dev).train()
    loader = SyntheticLoader(cfg.data, batch_size=cfg.optim.batch_size, device=dev, seed=1, crops=method.crops())
    batch = next(iter(loader))
    return method, batch, StepContext(0, 1000, 10**6, cfg.run.seed)


def reference_config(cfg):
    """``cfg`` with the method's ops on their eager reference: every FLOP is then an aten op that
    ``FlopCounterMode`` sees (a fused Triton loss is opaque to it; the maths is the same)."""
    cfg = cfg.model_copy(deep=True)
    if "backend" in type(cfg.method).model_fields:
        cfg.method.backend = "reference"
    return cfg


def reference_attention(method) -> None:
    """Attention as one SDPA call per run of equal-length sequences: counted exactly (a varlen or
    xformers kernel is opaque to the counter; a masked call over a whole pack would over-count)."""
    from fastssl.models.vit.attention import AttentionDispatch

    for m in method.modules():
        dispatch = getattr(m, "dispatch", None)
        if isinstance(dispatch, AttentionDispatch):
            dispatch.set_backend("sdpa_grouped")


def count_flops(method, batch, ctx, amp: bool) -> tuple[float, dict[str, float]]:
    """FLOPs of one eager forward + backward of ``method`` on ``batch``, in total and per aten op."""
    from torch.utils.flop_counter import FlopCounterMode

    from torch.nn.attention import SDPBackend, sdpa_kernel

    counter = FlopCounterMode(display=False)
    device_type = next(iter(batch.crops.values())).device.type
    # SDPA's math path: attention becomes two batched matmuls (QKᵀ, A·V) forward and four backward,
    # 12·L·D·T² per view as in nanoGPT's count, the same on every device (the counter knows no CPU
    # flash kernel, and counts cuDNN's backward as 2.5 forwards).
    with counter, sdpa_kernel(SDPBackend.MATH):
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
            loss = method(batch, ctx).loss
        loss.backward()
    method.zero_grad(set_to_none=True)
    per_op = {str(k).removeprefix("aten."): float(v)
              for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return float(counter.get_total_flops()), per_op


def bare_step_fn(cfg, dev: torch.device, amp: bool, fused: bool | None = None):
    """(method, step): the bare model step of this method and shape as a closure: forward + backward +
    torch AdamW (``fused``: default on CUDA) + ``after_step``, bf16 autocast when ``amp``, no DeepSpeed."""
    from bench.common import make_train_step
    from fastssl.engine import layout
    from fastssl.engine.compile import compile_regions
    from fastssl.engine.params import optimizer_groups
    from fastssl.methods.base import AfterStep

    method, batch, ctx = _model_and_batch(cfg, dev)
    if layout.resolve(cfg.engine, cfg.model.arch, dev.type == "cuda"):
        layout.apply(method)  # the trainer row's memory layout (engine.channels_last), so the two compare
    if cfg.engine.compile:
        compile_regions(method, cfg.engine.compile_mode, dev, torch.bfloat16 if amp else torch.float32)
    fused = dev.type == "cuda" if fused is None else fused
    opt = torch.optim.AdamW(optimizer_groups(method.param_groups(), cfg.optim.weight_decay)[0], lr=1e-5, fused=fused)
    step = make_train_step(method, batch, ctx, opt, dev.type, amp)
    after = method.after_step if isinstance(method, AfterStep) else None

    def full():
        step()
        if after is not None:
            after(ctx)

    return method, full


def bare_step(cfg, dev: torch.device, amp: bool, smoke: bool) -> dict:
    """bench/throughput.py's model step for this method and shape: images/s without DeepSpeed or the loop."""
    from bench.common import time_fn

    _, full = bare_step_fn(cfg, dev, amp)
    t0 = time.perf_counter()
    full()  # compile (if any), optimizer state, allocator
    first_s = time.perf_counter() - t0
    t = time_fn(full, smoke=smoke, rep_ms=1000)
    return {"bare_images_per_s": cfg.optim.batch_size / (t.median / 1e3), "bare_step_ms": asdict(t), "bare_first_step_s": first_s}


def _lean_finish(holder: dict):
    """``fastssl.engine.loop.finish`` for a speed row: the summary only. The final checkpoint, the encoder
    export and the curves cost seconds per row and are not what a row measures (the CLI tests cover them)."""
    from fastssl.engine.loop import RunSummary

    def finish(s, eval_init):
        s.metrics.close()
        summary = RunSummary(s.state.global_step, s.speed.images_per_second, eval_init, [], None,
                             s.speed.steady_images_per_second)
        holder["summary"] = summary
        # Which optimizer path DeepSpeed took (engine.amp): torch's AdamW itself, or a wrapper around it.
        holder["engine"] = {"optimizer": type(s.engine.optimizer).__name__, "weights_dtype": str(s.dtype).removeprefix("torch."),
                            "autocast": str(s.autocast).removeprefix("torch.") if s.autocast else None, "loop_clips": s.clip_grad}
        return summary

    return finish


def _profiled_steps(res: dict, steps: int):
    """Profile ``steps`` optimizer steps of the trainer after its first log step: device-busy time per
    step against the wall time, kernel launches per step, the top device and host ops. Answers where a
    trainer step loses time to the bare step (host-bound launches, DeepSpeed's optimizer, syncs)."""
    from torch.profiler import ProfilerActivity, profile, schedule

    from fastssl.engine import session

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    wait = res["row"]["warmup"]
    prof = profile(activities=acts, schedule=schedule(wait=wait, warmup=1, active=steps, repeat=1))
    orig = session.Throughput.step_done
    box: dict = {}

    def step_done(self):
        orig(self)
        prof.step()
        box.setdefault("t", []).append(time.perf_counter())

    def report():
        session.Throughput.step_done = orig
        prof.stop()
        ev = prof.key_averages()
        dev_attr = "self_device_time_total" if hasattr(ev[0], "self_device_time_total") else "self_cuda_time_total"
        kernels = [e for e in ev if str(getattr(e, "device_type", "")).endswith("CUDA")]  # device events only
        dev_us = sum(getattr(e, dev_attr) for e in kernels)
        times = box.get("t", [])
        span = times[wait + 1 + steps - 1] - times[wait] if len(times) >= wait + 1 + steps else None
        launches = sum(e.count for e in ev if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
        top_dev = sorted(kernels, key=lambda e: -getattr(e, dev_attr))[:12]
        top_cpu = sorted(ev, key=lambda e: -e.self_cpu_time_total)[:12]
        res["profile"] = {
            "steps": steps, "device_ms_per_step": dev_us / 1e3 / steps,
            "wall_ms_per_step": 1e3 * span / steps if span else None,
            "kernel_launches_per_step": launches / steps,
            "top_device_ms_per_step": {e.key[:80]: round(getattr(e, dev_attr) / 1e3 / steps, 3) for e in top_dev},
            "top_host_self_ms_per_step": {e.key[:80]: round(e.self_cpu_time_total / 1e3 / steps, 3) for e in top_cpu},
        }

    session.Throughput.step_done = step_done
    prof.start()
    return report


def run_row(row: dict, shared: dict) -> dict:
    """One row (see the module docstring); ``shared`` carries the ceilings across rows of one process."""
    from bench.common import measure_ceilings
    from fastssl.config import load_config
    from fastssl.engine import loop

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = row["precision"] == "bf16"  # the bare step and the FLOP count under bf16 autocast
    res: dict = {"row": row, "phases": {}}

    def phase(name, fn):
        t0 = time.perf_counter()
        try:
            fn()
            res["phases"][name] = round(time.perf_counter() - t0, 2)
        except Exception as err:  # noqa: BLE001  (record, go on with the next phase)
            res.setdefault("errors", {})[name] = f"{type(err).__name__}: {err}"[:800]
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    smoke = row["tiny"]
    torch._dynamo.reset()  # every row compiles from scratch: no graphs or recompile counts from the last one
    with tempfile.TemporaryDirectory(prefix="fastssl-bench-train-") as tmp:
        out_dir = Path(tmp) / "run"
        argv = ["--config", str(ROOT / "configs" / "imagenet" / f"{row['method']}.yaml"), *row_overrides(row, out_dir)]
        res["command"] = "python fastssl/train.py " + " ".join(argv[:2] + [a for a in argv[2:] if not a.startswith("run.output_dir")])
        cfg = load_config(argv[1], argv[2:])

        def ceilings():
            if "ceilings" not in shared:  # once per process: one reference for every row's MFU
                shared["ceilings"] = asdict(measure_ceilings(smoke=smoke or dev.type == "cpu"))
            res["ceilings"] = shared["ceilings"]

        shape = (row["method"], row["arch"], row["batch"], row["tiny"], tuple(row.get("extra", [])))

        def flops():  # the same for every ZeRO stage, amp mode and compile setting of one shape
            if ("flops", shape) not in shared:
                method, batch, ctx = _model_and_batch(reference_config(cfg), dev)
                reference_attention(method)
                total, per_op = count_flops(method, batch, ctx, amp)
                shared["flops", shape] = {"flops_per_step": total, "flops_per_op": per_op,
                                          "params": sum(p.numel() for p in method.parameters())}
            res.update(shared["flops", shape])

        def trainer():
            from fastssl import train as cli

            holder: dict = {}
            full_finish = loop.finish
            if row.get("lean", True):
                loop.finish = _lean_finish(holder)
            report = _profiled_steps(res, row["profile"]) if row.get("profile") else None
            try:
                code = cli.main(argv)
            finally:
                loop.finish = full_finish
                if report is not None:
                    report()
            res["exit_code"] = code
            res.update(holder.get("engine", {}))
            if "summary" in holder:
                summary = asdict(holder["summary"])
            else:
                summary = json.loads((out_dir / "summary.json").read_text())
            res["trainer_images_per_s"] = summary.get("steady_images_per_second")
            res["trainer_images_per_s_all"] = summary.get("images_per_second")
            lines = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
            train_lines = [x for x in lines if x.get("kind") == "train"]
            if train_lines:
                last = train_lines[-1]
                res["last_loss"] = last.get("loss")
                res.update({k: last[k] for k in ("compile_graphs", "recompiles", "graph_breaks") if k in last})
            ckpts = out_dir / "checkpoints"
            res["checkpoints"] = sorted(p.name for p in ckpts.iterdir() if p.is_dir()) if ckpts.is_dir() else []
            res["encoder_exported"] = (out_dir / "encoder.pt").is_file()
            if code != 0:
                raise RuntimeError(f"fastssl/train.py exited with {code}")

        def bare():  # no DeepSpeed in it: one measurement serves every ZeRO stage and amp mode
            key = ("bare", shape, row["compile"], row.get("nchw", False))
            if key in shared:
                res.update(shared[key], bare_shared=True)
            else:
                shared[key] = bare_step(cfg, dev, amp, smoke)
                res.update(shared[key])

        phase("ceilings", ceilings)
        phase("flops", flops)
        phase("trainer", trainer)
        if row.get("bare", True):
            phase("bare", bare)
    return res


def run_rows(rows: list[dict], progress: Path) -> None:
    """Rows one after another in this process (the imports and CUDA start-up are paid once); after
    each row ``progress`` holds every result so far and the start time of the row in progress, which
    the parent watches to enforce each row's cap."""
    state: dict = {"results": [], "current": None}
    shared: dict = {}  # across the rows of this process: the ceilings, FLOP counts and bare steps

    def save():
        tmp = progress.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, default=str))
        tmp.replace(progress)

    for i, row in enumerate(rows):
        state["current"] = {"index": i, "started": time.time()}
        save()
        state["results"].append(run_row(row, shared))
    state["current"] = None
    save()


# ---------------------------------------------------------------------------------------------------
# parent: the sweep
# ---------------------------------------------------------------------------------------------------

AMP_LABEL = {"autocast": "autocast", "deepspeed": "ds-bf16"}  # (fp32 rows carry no label)


def resolved_amp(precision: str, zero: int, amp: str, cuda: bool) -> str:
    """What ``engine.amp`` becomes in the row's run (fastssl.engine.amp.resolve_amp)."""
    from types import SimpleNamespace

    from fastssl.engine.amp import resolve_amp

    return resolve_amp(SimpleNamespace(precision=precision, zero_stage=zero, amp=amp), cuda)


def quick_rows(row) -> list[dict]:
    """--quick, in priority order (a cap cuts the tail): the amp lever on SimCLR/DCL, the issue's target
    (ZeRO 0 autocast against DeepSpeed's bf16 wrapper; the bare step measured once serves both), ZeRO 2
    both ways, compile at ZeRO 0 and 2; then every other method at ZeRO 0 with autocast; then their
    ZeRO 2 rows (the bare step is shared: no extra cost) and compile rows without the bare step.
    MAE, the shortest step, also runs ZeRO 2 both ways right after its ZeRO 0 row: whether ``auto``
    should take autocast at ZeRO 1/2 too (where the shipped configs run; ZeRO 1 and 2 issue the same
    host work on one rank, ``bench/train_host_ops.py``) is decided where the host matters most."""
    rows = [row("simclr", "eager", 0, "autocast"), row("simclr", "eager", 0, "deepspeed"),
            row("simclr", "eager", 2), row("simclr", "eager", 2, "autocast"),
            row("simclr", "compile", 0, "autocast"), row("simclr", "compile", 2)]
    for m in QUICK_ORDER:
        rows.append(row(m, "eager", 0, "autocast"))
        if m in RESNET_METHODS:  # the channels-last lever (on by default there): the same row in NCHW beside it
            rows.append(row(m, "eager", 0, "autocast", nchw=True))
        if m == "mae":
            rows += [row(m, "eager", 2), row(m, "eager", 2, "autocast")]
    rows += [row(m, "eager", 2) for m in QUICK_ORDER if m != "mae"]
    rows += [row(m, "compile", 0, "autocast", bare=False) for m in QUICK_ORDER]
    rows += [row(m, "compile", 2, bare=False) for m in QUICK_ORDER]
    return rows


def make_rows(args, cuda: bool | None = None) -> list[dict]:
    """The rows of this invocation, on this machine (``cuda=True``: as they would be on a GPU machine)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else list(METHODS)
    variants = [v.strip() for v in args.variants.split(",")]
    zeros = [int(z) for z in args.zero.split(",")]
    amps = [a.strip() for a in args.amp.split(",")]
    base = {"arch": args.arch, "precision": args.precision or ("bf16" if cuda else "fp32"), "tiny": bool(args.smoke),
            "steps": args.steps, "warmup": args.warmup, "extra": args.extra.split(), "bare": args.bare,
            "lean": not args.full_finish, "profile": args.profile}

    def row(method, variant, zero, amp="auto", bare=True, nchw=False):
        batch = args.batch or (8 if args.smoke else ROW_BATCH.get(method, 256))
        resolved = resolved_amp(base["precision"], zero, amp, cuda)
        label = f" {AMP_LABEL[resolved]}" if resolved in AMP_LABEL else ""
        return {**base, "method": method, "compile": variant == "compile", "zero": zero, "batch": batch,
                "amp": amp, "amp_resolved": resolved, "bare": base["bare"] and bare, "nchw": nchw,
                # fastssl.engine.layout.resolve for this row (auto: a ResNet at ZeRO 0 autocast on CUDA)
                "channels_last": (method in RESNET_METHODS and zero == 0 and resolved in ("autocast", "none")
                                  and cuda and not nchw),
                "name": f"{method} {variant} z{zero}{label}" + (" nchw" if nchw else "")
                + (" +" + "+".join(base["extra"]) if base["extra"] else "")}

    if args.quick and not args.methods:
        return quick_rows(row)
    return [row(m, v, z, a) for v in variants for m in methods for z in zeros for a in amps]


def _record(res: dict) -> Record:
    row = res.get("row", {})
    case = {k: row.get(k) for k in ("method", "arch", "batch", "zero", "compile", "precision", "channels_last")}
    case["amp"] = row.get("amp_resolved")
    case["variant"] = ("compile" if row.get("compile") else "eager") + f" z{row.get('zero')}" + \
        (f" {AMP_LABEL[case['amp']]}" if case["amp"] in AMP_LABEL else "") + \
        "".join(" +" + x for x in row.get("extra", []))
    extra = {k: v for k, v in res.items() if k not in ("row", "errors")}
    ips = res.get("trainer_images_per_s")
    total = Timing(*(3 * [1e3 * row["batch"] / ips])) if ips else None
    errors = res.get("errors")
    return Record(provider=case["variant"], case=case, total=total, extra=extra,
                  error="; ".join(f"{k}: {v}" for k, v in errors.items())[:1500] if errors else None)


def derive(res: dict) -> None:
    """MFU of the trainer and of the bare step against the matmul rate measured in the row; overhead."""
    row, c = res["row"], res.get("ceilings")
    flops, ips, bare = res.get("flops_per_step"), res.get("trainer_images_per_s"), res.get("bare_images_per_s")
    if flops and c:
        peak = c["matmul_tflops"] * 1e12
        if ips:
            res["trainer_tflops"] = flops * ips / row["batch"] / 1e12
            res["mfu_pct"] = 100 * flops * ips / row["batch"] / peak
        if bare:
            res["bare_mfu_pct"] = 100 * flops * bare / row["batch"] / peak
    if ips and bare:
        res["trainer_overhead_pct"] = 100 * (bare / ips - 1)


COLUMNS = [
    Column("method", 9, lambda r: r.case["method"]), Column("variant", 20, lambda r: r.provider),
    Column("B", 5, lambda r: r.case["batch"]),
    Column("img/s", 9, lambda r: r.extra.get("trainer_images_per_s"), ".0f"),
    Column("bare img/s", 11, lambda r: r.extra.get("bare_images_per_s"), ".0f"),
    Column("ovh %", 7, lambda r: r.extra.get("trainer_overhead_pct"), ".1f"),
    Column("GFLOP/img", 10, lambda r: r.extra["flops_per_step"] / r.case["batch"] / 1e9 if r.extra.get("flops_per_step") else None, ".1f"),
    Column("MFU %", 7, lambda r: r.extra.get("mfu_pct"), ".1f"),
    Column("bare MFU", 9, lambda r: r.extra.get("bare_mfu_pct"), ".1f"),
    Column("matmul TF", 10, lambda r: r.extra.get("ceilings", {}).get("matmul_tflops"), ".0f"),
]


def write(args, results: list[dict], started: float) -> Path:
    args.out_dir.mkdir(parents=True, exist_ok=True)
    from bench.common import _slug

    path = args.out_dir / f"train-{_slug(device_name())}{'-smoke' if args.smoke else ''}.json"
    records = [_record(r) for r in results]
    ceil = next((r["ceilings"] for r in results if r.get("ceilings")), None)
    doc = {"benchmark": "train", "device": device_name(), "torch": torch.__version__, "smoke": bool(args.smoke),
           "ceilings": ceil or asdict(Ceilings(float("nan"), float("nan"))),
           "meta": {"rows": "fastssl/train.py per method on data.synthetic, one subprocess each",
                    "flops": "FlopCounterMode over one eager forward+backward at the row's shape",
                    "mfu": "flops_per_step * trainer images/s / batch / measured bf16 matmul rate",
                    "overhead": "bare images/s / trainer images/s - 1 (bare: method step + fused AdamW, no DeepSpeed)",
                    "elapsed_s": round(time.time() - started, 1), "argv": sys.argv[1:]},
           "records": [asdict(r) for r in records]}
    path.write_text(json.dumps(doc, indent=1, default=str))
    return path


def _line(res: dict) -> str:
    line = f"  {res['row']['name']:<22} {res.get('wall_s', 0):6.1f} s"
    if res.get("trainer_images_per_s"):
        line += f"  {res['trainer_images_per_s']:8.1f} img/s"
    if res.get("mfu_pct") is not None:
        line += f"  MFU {res['mfu_pct']:.1f} %"
    if res.get("trainer_overhead_pct") is not None:
        line += f"  overhead {res['trainer_overhead_pct']:+.1f} %"
    if res.get("profile"):
        p = res["profile"]
        line += f"  [profile: device {p['device_ms_per_step']:.1f} ms/step, {p['kernel_launches_per_step']:.0f} launches/step]"
    if res.get("errors"):
        line += "  ERROR " + "; ".join(f"{k}: {str(v).splitlines()[0][:90]}" for k, v in res["errors"].items())
    return line


_CHILDREN: list = []


def _stop_children(signum, frame) -> None:
    """SIGTERM / SIGINT (a time cap outside, Ctrl-C): the child runs in its own session, so take it down
    with us, then leave through SystemExit (the JSON is already up to date after every row)."""
    for c in _CHILDREN:
        try:
            os.killpg(c.pid, 9)
        except ProcessLookupError:
            pass
    raise SystemExit(128 + signum)


def run_parent(args) -> None:
    """Run the rows in child processes, ``--rows-per-process`` at a time. The parent watches each row:
    past its cap (or the sweep's budget) the child is killed, that row is recorded as an error, and a
    fresh child takes the rows after it. The JSON is rewritten after every row."""
    import signal

    signal.signal(signal.SIGTERM, _stop_children)
    signal.signal(signal.SIGINT, _stop_children)
    rows = make_rows(args)
    started = time.time()
    results: list[dict] = []
    path = None
    print(f"bench/train.py: {len(rows)} rows, {args.row_timeout:.0f} s per row, {args.budget:.0f} s in all, "
          f"{args.rows_per_process} per process", flush=True)
    todo = list(rows)
    while todo:
        if args.budget - (time.time() - started) < args.min_left:
            results += [{"row": r, "errors": {"skipped": f"the sweep's budget of {args.budget:.0f} s is spent"}} for r in todo]
            break
        group, todo = todo[:args.rows_per_process], todo[args.rows_per_process:]
        progress = Path(tempfile.mkdtemp(prefix="fastssl-bench-rows-")) / "progress.json"
        log = progress.with_name("child.log")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(group), "--result", str(progress)]
        with open(log, "w") as out:  # own session: a kill takes its compile workers too
            child = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        _CHILDREN[:] = [child]
        seen, t_group = 0, time.time()
        row_started = {0: t_group}
        killed_at = None

        def state() -> dict:
            try:
                return json.loads(progress.read_text())
            except (OSError, json.JSONDecodeError):
                return {"results": [], "current": None}

        def tail() -> str:
            try:
                return log.read_text(errors="replace")[-1500:]
            except OSError:
                return ""

        while True:
            rc = child.poll()
            st = state()
            if st.get("current"):
                row_started[st["current"]["index"]] = st["current"]["started"]
            for res in st["results"][seen:]:  # rows finished since the last look
                res["wall_s"] = round(time.time() - row_started.get(seen, t_group), 1)
                if res.get("errors"):
                    res["log_tail"] = tail()
                derive(res)
                results.append(res)
                print(_line(res), flush=True)
                path = write(args, results, started)
                seen += 1
            if rc is not None:
                break
            now = time.time()
            current = seen  # the row in progress
            if current >= len(group):  # every row reported; the child is only finishing (or over budget): end it
                if now - started > args.budget:
                    os.killpg(child.pid, 9)
                    child.wait()
                    break
                time.sleep(0.5)
                continue
            over_row = now - row_started.get(current, t_group) > args.row_timeout
            over_all = now - started > args.budget
            if over_row or over_all:
                os.killpg(child.pid, 9)
                child.wait()
                killed_at = current
                why = f"row time cap of {args.row_timeout:.0f} s reached" if over_row else \
                    f"the sweep's budget of {args.budget:.0f} s is spent"
                res = {"row": group[current], "wall_s": round(now - row_started.get(current, t_group), 1),
                       "errors": {"process": f"{why}; killed\n{tail()}"}}
                results.append(res)
                print(_line(res), flush=True)
                path = write(args, results, started)
                break
            time.sleep(0.5)
        if killed_at is None and seen < len(group):  # the child died inside a row (crash, OOM kill)
            res = {"row": group[seen], "errors": {"process": f"exit {child.returncode}: {tail()}"}}
            results.append(res)
            print(_line(res), flush=True)
            path = write(args, results, started)
            killed_at = seen
        if killed_at is not None:
            todo = group[killed_at + 1:] + todo
    if path is None:
        path = write(args, results, started)
    try:
        png = plot(path, [("trainer images/s", lambda r: r.extra.get("trainer_images_per_s"), "images/s"),
                          ("MFU (vs measured bf16 matmul)", lambda r: r.extra.get("mfu_pct"), "%"),
                          ("trainer overhead vs bare step", lambda r: r.extra.get("trainer_overhead_pct"), "%")],
                   x_key="method", series_key=lambda c: "")
        print_table([_record(r) for r in results], COLUMNS)
        print(f"\nwrote {path} and {png}")
    except Exception as err:  # noqa: BLE001  (the JSON is what matters)
        print_table([_record(r) for r in results], COLUMNS)
        print(f"\nwrote {path} (no PNG: {type(err).__name__}: {err})")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny models at 16 px, B=8, 3 steps: runs on CPU, not a measurement")
    p.add_argument("--quick", action="store_true", help="the amp lever on SimCLR/DCL (ZeRO 0, 2, compile), then every method "
                   "at ZeRO 0, then ZeRO 2 and compile rows (quick_rows)")
    p.add_argument("--methods", default=None, help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--variants", default="eager,compile", help="eager,compile (engine.compile off / on)")
    p.add_argument("--zero", default="0", help="DeepSpeed ZeRO stages, comma-separated (0, 2)")
    p.add_argument("--precision", default=None, choices=("bf16", "fp32"),
                   help="engine.precision of every row (default: bf16 on CUDA, fp32 elsewhere)")
    p.add_argument("--amp", default="auto", help="engine.amp values, comma-separated (auto, autocast, deepspeed)")
    p.add_argument("--plan", action="store_true", help="print the rows this invocation would run on a GPU machine, and stop")
    p.add_argument("--arch", default="vit_base_patch16_224", help="timm ViT for the ViT methods (224 px, patch 16)")
    p.add_argument("--batch", type=int, default=None, help="per-GPU batch for every row (default 256; smoke 8)")
    p.add_argument("--steps", type=int, default=None, help="timed optimizer steps after the warm-up")
    p.add_argument("--warmup", type=int, default=None, help="optimizer steps before timing starts (the first log step)")
    p.add_argument("--row-timeout", type=float, default=float(os.environ.get("TRAIN_ROW_CAP", 120)), help="seconds per row")
    p.add_argument("--rows-per-process", type=int, default=int(os.environ.get("TRAIN_ROWS_PER_PROCESS", 100)),
                   help="rows sharing one child process (start-up paid once; 1: every row in its own process)")
    p.add_argument("--min-left", type=float, default=15, help="start no child with fewer seconds of budget left")
    p.add_argument("--bare", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the bare model step (the trainer overhead); --no-bare saves ~5 s per row")
    p.add_argument("--full-finish", action="store_true",
                   help="end each run as the CLI does (final checkpoint, encoder export, curves) instead of the summary only")
    p.add_argument("--profile", type=int, default=0,
                   help="profile this many trainer steps after the warm-up (device-busy vs wall time, launches, top ops)")
    p.add_argument("--extra", default="", help="space-separated overrides added to every row, e.g. 'optim.clip_grad=null'")
    p.add_argument("--budget", type=float, default=float(os.environ.get("TRAIN_CAP", 480)), help="seconds for the whole sweep")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--flops", action="store_true", help="only the FLOP count per method (any device; writes train-flops.json)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 2 if args.smoke else 9
    if args.warmup is None:
        args.warmup = 1 if args.smoke else 3
    return args


def flops_table(args) -> None:
    """Model FLOPs per step for each method at the rows' shape, counted on this device (CPU will do) at
    three small batches and extrapolated: FLOPs are a quadratic polynomial in B (per-image work is
    linear; contrastive logits are B x B; queue and prototype scores are linear), so three counts fix it."""
    from fastssl.config import load_config

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else list(METHODS)
    table = {}
    for method in methods:
        row = {"method": method, "arch": args.arch, "precision": "fp32", "zero": 0, "compile": False, "tiny": bool(args.smoke),
               "batch": 2, "steps": 1, "warmup": 1}
        t0 = time.perf_counter()
        counts = {}
        for b in (2, 4, 6):
            cfg = reference_config(load_config(ROOT / "configs" / "imagenet" / f"{method}.yaml",
                                               row_overrides({**row, "batch": b}, Path(tempfile.gettempdir()) / "unused")))
            model, batch, ctx = _model_and_batch(cfg, dev)
            reference_attention(model)
            counts[b] = count_flops(model, batch, ctx, amp=False)
            del model, batch
        (f2, p2), (f4, _), (f6, _) = counts[2], counts[4], counts[6]
        c2 = (f6 - 2 * f4 + f2) / 8  # second difference over steps of 2: 2 * c * h^2, h = 2
        c1 = (f4 - f2) / 2 - 6 * c2
        c0 = f2 - 2 * c1 - 4 * c2
        at = args.batch or ROW_BATCH.get(method, 256)
        total = c0 + c1 * at + c2 * at * at
        table[method] = {"batch": at, "flops_per_step": total, "gflops_per_image": total / at / 1e9,
                         "quadratic_share_pct": 100 * c2 * at * at / total, "arch": cfg.model.arch,
                         "image_size": cfg.data.image_size, "crops": {c.name: [c.count, c.size or cfg.data.image_size]
                                                                      for c in _crops_of(cfg)},
                         "ops_at_b2": {k: v / f2 for k, v in p2.items()}, "count_s": round(time.perf_counter() - t0, 1)}
        print(f"  {method:8s} {cfg.model.arch:24s} B={at}: {total / 1e12:8.2f} TFLOP/step  "
              f"{total / at / 1e9:7.1f} GFLOP/image  (B^2 terms {table[method]['quadratic_share_pct']:.2f} %)", flush=True)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / f"train-flops{'-smoke' if args.smoke else ''}.json").write_text(json.dumps(table, indent=1))


def _crops_of(cfg):
    from fastssl.methods.registry import build_method

    with torch.device("meta"):
        return build_method(cfg).crops()


def main(argv=None) -> None:
    args = parse(argv)
    if args.flops:
        flops_table(args)
        return
    if args.child:
        if not torch.cuda.is_available():
            os.environ.setdefault("TRITON_INTERPRET", "1")
            torch.set_num_threads(1)
        run_rows(json.loads(args.child), args.result)
        return
    if args.plan:  # as it runs on a GPU machine (bf16), whatever this machine is
        for i, row in enumerate(make_rows(args, cuda=True), 1):
            print(f"  {i:2d}. {row['name']}" + ("" if row["bare"] else "  (no bare step)"))
        return
    run_parent(args)


if __name__ == "__main__":
    main()
