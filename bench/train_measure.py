"""One row of ``bench/train.py``, measured in its child process, and the FLOP count per method.

``run_rows`` runs rows one after another and keeps a progress file the parent watches; ``run_row``
measures one: the ceilings (once per process), the model FLOPs of one optimizer step (``count_flops``:
the method's eager forward + backward under ``FlopCounterMode``), the trainer (``fastssl.train.main``
on synthetic data, optionally profiled) and the bare model step (``bare_step``: forward + backward +
torch's fused AdamW, no DeepSpeed). ``flops_table`` is ``bench/train.py --flops``. The module
docstring of ``bench/train.py`` says what each phase measures and why.
"""
from __future__ import annotations

import gc
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from bench.train_plan import METHODS, ROOT, ROW_BATCH, row_overrides



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


def peak_memory(prefix: str, dev: torch.device) -> dict:
    """Peak device memory since the last ``reset_peak_memory_stats``, GiB: allocated by tensors and held by
    the caching allocator (what another process could not have). Empty off CUDA (no allocator statistics).
    Why: whether a row's shape fits a smaller GPU (an H100's ~78 GiB against the H200's ~139) is read here
    rather than found by an out-of-memory error in a later session."""
    if dev.type != "cuda":
        return {}
    return {f"{prefix}_peak_allocated_gib": torch.cuda.max_memory_allocated(dev) / 2**30,
            f"{prefix}_peak_reserved_gib": torch.cuda.max_memory_reserved(dev) / 2**30}


def reset_peak_memory(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def bare_step(cfg, dev: torch.device, amp: bool, smoke: bool) -> dict:
    """bench/throughput.py's model step for this method and shape: images/s without DeepSpeed or the loop."""
    from bench.common import time_fn

    reset_peak_memory(dev)
    _, full = bare_step_fn(cfg, dev, amp)
    t0 = time.perf_counter()
    full()  # compile (if any), optimizer state, allocator
    first_s = time.perf_counter() - t0
    t = time_fn(full, smoke=smoke, rep_ms=1000)
    return {"bare_images_per_s": cfg.optim.batch_size / (t.median / 1e3), "bare_step_ms": asdict(t), "bare_first_step_s": first_s,
            **peak_memory("bare", dev)}


def lean_finish(holder: dict):
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
    torch._dynamo.utils.counters.clear()  # (reset keeps them: a row's compile_graphs would count the rows before)
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
                loop.finish = lean_finish(holder)
            report = _profiled_steps(res, row["profile"]) if row.get("profile") else None
            reset_peak_memory(dev)  # the whole run: engine set-up, steps, checkpoint (if any)
            try:
                code = cli.main(argv)
            finally:
                loop.finish = full_finish
                if report is not None:
                    report()
                res.update(peak_memory("trainer", dev))
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
            # its memory layout and precision too: a ResNet's ZeRO 2 row runs NCHW where its ZeRO 0 autocast
            # row runs channels-last (engine.layout), so the two may not share a bare step
            key = ("bare", shape, row["compile"], row.get("channels_last", False), row["precision"])
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
