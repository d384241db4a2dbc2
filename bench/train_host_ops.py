"""Host work per optimizer step: the trainer against the bare model step, per method (runs on CPU).

The H200 rows of ``bench/train.py`` (DeepSpeed's bf16 at ZeRO 0) put the trainer well behind the bare
model step where the GPU step is short: MAE +64.5 % (106 vs 64 ms per step), DAC +51 %, SimCLR +5 %.
A GPU step that short is bound by the host when the host issues more work than the GPU executes,
and what the host issues is the same on any machine. So this bench counts it on the CPU, for the
GPU's configuration (bf16, ZeRO 0, 1 and 2, torch's fused AdamW as ``fastssl/engine/ds_config.py`` asks for on
CUDA): every torch op dispatched per optimizer step (a ``TorchDispatchMode``: autograd's and the
optimizer's included), the kernel ops among them (all but views and bare allocations: on the GPU each
is at least one launch) and the host–device syncs (``_local_scalar_dense``: ``.item()``, ``bool()`` or ``float()`` of a
tensor; ``nonzero``), for
  bare       ``bench/train.py``'s bare step: forward + backward + torch's fused AdamW + ``after_step``
             under bf16 autocast, no DeepSpeed, no loop;
  autocast   ``fastssl/train.py`` with ``engine.amp=autocast`` (fp32 weights, DeepSpeed steps torch's
             AdamW as it is, the loop clips with one multi-tensor norm): the GPU default at ZeRO 0;
  ds-bf16    ``fastssl/train.py`` with ``engine.amp=deepspeed`` (DeepSpeed's bf16 model and its
             optimizer wrapper): what the H200 rows ran;
  *-z1, *-z2 the same at ZeRO 1 (what ``configs/imagenet/*.yaml`` ship) and ZeRO 2, where
             ``engine.amp=auto`` takes ds-bf16: DeepSpeed's ZeRO optimizer over flat fp32 partitions.
Real architectures (ViT-B/16, ResNet-50: the parameter count per tensor list is what per-parameter
loops scale with) on small synthetic batches (B = 2 at 64 px; SwAV's local crops 32 px): the op
counts do not depend on the batch or the resolution, the step time here does and is not reported.
Trainer steps 2-4 of 5 are counted (the first allocates optimizer state; the last reads the loss).

    python bench/train_host_ops.py            # every method: bench/results/train-host-ops-cpu.{json,md}
    python bench/train_host_ops.py --methods mae,simclr --variants autocast,ds-bf16-z2
    python bench/train_host_ops.py --smoke    # timm's test models, MAE unless --methods (tests/bench)
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from bench.train_measure import lean_finish, bare_step_fn  # noqa: E402
from bench.train_plan import METHODS, RESNET_METHODS, tiny_overrides  # noqa: E402

RESULTS = _ROOT / "bench" / "results"
SYNCS = ("_local_scalar_dense", "nonzero")
STEPS, COUNTED = 5, (2, 3, 4)  # trainer steps run, and the ones counted
# trainer variant -> (engine.amp, engine.zero_stage)
VARIANTS = {"autocast": ("autocast", 0), "ds-bf16": ("deepspeed", 0), "autocast-z1": ("autocast", 1),
            "ds-bf16-z1": ("deepspeed", 1), "autocast-z2": ("autocast", 2), "ds-bf16-z2": ("deepspeed", 2)}


# Ops that allocate without writing: host work, no kernel.
_ALLOCS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}


class OpCount(TorchDispatchMode):
    """Counts every torch op dispatched while active, by name, and which of them launch nothing on a
    GPU (views and bare allocations: host work only)."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()
        self.no_kernel: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.ops[name] += 1
        if func.is_view or name in _ALLOCS:
            self.no_kernel.add(name)
        return func(*args, **(kwargs or {}))


def overrides(method: str, amp: str, out_dir: Path, smoke: bool, zero: int = 0) -> list[str]:
    o = ["data.synthetic=true", "eval.enabled=false", f"run.output_dir={out_dir}", "run.resume=never",
         "engine.progress=false", "engine.precision=bf16", f"engine.zero_stage={zero}", f"engine.amp={amp}",
         "engine.compile=false", "optim.batch_size=2", f"optim.max_steps={STEPS}", "engine.log_every_steps=1000",
         "engine.ckpt_every_steps=1000000", "optim.warmup_epochs=0",
         # the optimizer ds_config.py asks for on CUDA (torch's fused AdamW), so the count is the GPU's
         "deepspeed.optimizer.params.fused=true"]
    if method == "simclr":
        o.append("method.loss=dcl")
    if smoke:
        return o + tiny_overrides(method)
    o.append("data.image_size=64")
    if method == "swav":
        o.append("method.local_size=32")
    return o


def per_step(mode: OpCount, steps: int) -> dict:
    ops = mode.ops
    kernels = sum(v for k, v in ops.items() if k not in mode.no_kernel)
    return {"ops": sum(ops.values()) / steps, "kernel_ops": kernels / steps, "syncs": sum(ops[s] for s in SYNCS) / steps,
            "by_op": {k: v / steps for k, v in ops.most_common()}, "no_kernel": sorted(mode.no_kernel)}


def trainer_ops(method: str, variant: str, smoke: bool) -> dict:
    """Ops per counted step of ``fastssl.train.main`` (DeepSpeed, the loop, the method)."""
    from fastssl import train as cli
    from fastssl.engine import loop, session

    amp, zero = VARIANTS[variant]
    mode, box, holder = OpCount(), {"done": 0, "on": False}, {}
    orig_done, orig_finish = session.Throughput.step_done, loop.finish

    def step_done(self):
        orig_done(self)
        box["done"] += 1
        if box["done"] == COUNTED[0] - 1:
            mode.__enter__()
            box["on"] = True
        elif box["done"] == COUNTED[-1] and box["on"]:
            mode.__exit__(None, None, None)
            box["on"] = False

    with tempfile.TemporaryDirectory(prefix="fastssl-host-ops-") as tmp:
        argv = ["--config", str(_ROOT / "configs" / "imagenet" / f"{method}.yaml"), *overrides(method, amp, Path(tmp) / "run", smoke, zero)]
        session.Throughput.step_done = step_done
        loop.finish = lean_finish(holder)
        try:
            code = cli.main(argv)
        finally:
            if box["on"]:
                mode.__exit__(None, None, None)
            session.Throughput.step_done, loop.finish = orig_done, orig_finish
    if code != 0 or box["done"] < COUNTED[-1]:
        raise RuntimeError(f"{method} {variant}: fastssl/train.py exited with {code} after {box['done']} steps")
    out = per_step(mode, len(COUNTED))
    out["optimizer"] = holder.get("engine", {}).get("optimizer")
    return out


def bare_ops(method: str, smoke: bool) -> dict:
    """Ops per step of the bare model step (bench/train.py's, with torch's fused AdamW)."""
    from fastssl.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(str(_ROOT / "configs" / "imagenet" / f"{method}.yaml"), overrides(method, "autocast", Path(tmp), smoke))
    model, full = bare_step_fn(cfg, torch.device("cpu"), True, fused=True)
    full()
    mode = OpCount()
    with mode:
        for _ in COUNTED:
            full()
    out = per_step(mode, len(COUNTED))
    out["param_tensors"] = sum(1 for p in model.parameters() if p.requires_grad)
    return out


def markdown(rows: list[dict], variants: list[str]) -> str:
    head = " | ".join(f"{v} kernel ops (vs bare) | {v} syncs" for v in variants)
    lines = ["# Host work per optimizer step: the trainer vs the bare model step (`python bench/train_host_ops.py`)", "",
             "Kernel ops (torch ops dispatched per step but views and bare allocations: each at least one launch on a GPU)",
             "and host-device syncs; bf16, torch's fused AdamW, one rank, real architectures on small synthetic batches,",
             "counted on CPU. All ops (views included) per variant are in the JSON.", "",
             f"| method | trainable tensors | bare kernel ops | {head} | largest extra ops of the last variant |",
             "|---|---|---|" + "---|---|" * len(variants) + "---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | error: {r['error'][:120]} |" + "|" * (2 * len(variants) + 2))
            continue
        b = r["bare"]
        cells = []
        for v in variants:
            t = r[v]
            cells.append(f"{t['kernel_ops']:.0f} ({t['kernel_ops'] - b['kernel_ops']:+.0f}) | {t['syncs']:.0f}")
        last = r[variants[-1]]
        extra = Counter({k: n - b["by_op"].get(k, 0) for k, n in last["by_op"].items() if k not in last["no_kernel"]})
        top = ", ".join(f"{k} +{n:.0f}" for k, n in extra.most_common(3) if n > 0)
        lines.append(f"| {r['method']} | {b['param_tensors']} | {b['kernel_ops']:.0f} | {' | '.join(cells)} | {top} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=None, help="comma-separated (default: every method; --smoke: mae)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"trainer variants among {', '.join(VARIANTS)}")
    p.add_argument("--smoke", action="store_true", help="timm's test models (tests/bench): the script works and the counts hold")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    methods = args.methods.split(",") if args.methods else ["mae"] if args.smoke else list(METHODS)
    variants = args.variants.split(",")
    if unknown := sorted(set(variants) - set(VARIANTS)):
        p.error(f"unknown variants {unknown}; choose among {', '.join(VARIANTS)}")
    stem = args.out_dir / ("train-host-ops-smoke" if args.smoke else "train-host-ops-cpu")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for m in methods:
        t0 = time.perf_counter()
        row = {"method": m, "arch": "resnet50" if m in RESNET_METHODS else "vit_base_patch16_224"}
        try:
            row["bare"] = bare_ops(m, args.smoke)
            for v in variants:
                row[v] = trainer_ops(m, v, args.smoke)
        except Exception as err:  # noqa: BLE001 - a method that fails is a row, the others go on
            row["error"] = f"{type(err).__name__}: {err}"[:800]
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        doc = {"benchmark": "train_host_ops", "device": "cpu", "torch": torch.__version__, "smoke": args.smoke,
               "counted_steps": list(COUNTED), "variants": variants, "rows": rows}
        stem.with_suffix(".json").write_text(json.dumps(doc, indent=1))
        stem.with_suffix(".md").write_text(markdown(rows, variants))
        print(markdown(rows, variants).splitlines()[-1], flush=True)
    print(f"wrote {stem}.{{json,md}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
