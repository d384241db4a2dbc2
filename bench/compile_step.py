"""engine.compile off/on per method: one optimizer step, images/s after warm-up, and the compile time.

    python bench/compile_step.py [--methods simclr,byol] [--smoke]
    (``python bench/throughput.py --compile ...`` forwards here)

Each method is built from ``configs/fmnist/<name>.yaml`` (the quickstart shape: ViT-tiny, 28 px,
patch 7, B = 128, the method's own heads and crops) by the registry, as the trainer builds it. A
step is what the trainer does per batch, minus DeepSpeed and DALI: ``method(batch, ctx)`` on
random crops already on the device, backward, AdamW step, zero_grad, then ``after_step`` (EMA
targets). Providers:
  eager     the method as built
  compile   ``fastssl.engine.compile.compile_regions`` (every block and head compiled in place,
            torch.compile mode "default", Inductor), as ``engine.compile: true`` does
Losses use the config's backend ("auto": the eager reference on CPU, Triton on CUDA).

Reported per (method, provider): ``first_step_s`` (the first step; for compile it holds the
compile of every region, forward and backward graphs: what the quickstart pays once),
``images_per_s`` from the median of the timed steps after four untimed ones, and for compile the
graphs compiled in all and from the fourth step on (``recompiles``, 0 expected). The first step is
timed once on the host clock (what a user waits); the rest with ``bench.common.time_fn``. Inductor's
on-disk caches are disabled (``TORCHINDUCTOR_FORCE_DISABLE_CACHES=1``), so every compile time is
a cold one. Eager and compile of one method run back to back, so a shared machine's load hits both.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import Record, device, measure_ceilings, parse_args, plot, time_fn, write_results  # noqa: E402
from fastssl.config import load_config  # noqa: E402
from fastssl.data.batch import Batch  # noqa: E402
from fastssl.engine.compile import compile_regions, compile_stats  # noqa: E402
from fastssl.engine.params import optimizer_groups  # noqa: E402
from fastssl.methods.base import AfterStep, StepContext  # noqa: E402
from fastssl.methods.registry import build_method, method_names  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _method(name: str, dev: torch.device, smoke: bool):
    overrides = ["model.arch=test_vit", "data.image_size=16", "model.patch_size=4"] if smoke else []
    cfg = load_config(REPO / "configs" / "fmnist" / f"{name}.yaml", overrides)
    torch.manual_seed(0)
    method = build_method(cfg).to(dev).train()
    batch = 8 if smoke else cfg.optim.batch_size
    opt = torch.optim.AdamW(optimizer_groups(method.param_groups(), 0.05)[0], lr=1e-4)
    return method, opt, batch


def _step_fn(method, opt, batch: int, dev: torch.device):
    g = torch.Generator().manual_seed(1)
    crops = {c.name: torch.randn(c.count, batch, 3, c.size or 28, c.size or 28, generator=g).to(dev) for c in method.crops()}
    index = torch.arange(batch, device=dev)
    data = Batch(crops, index, index)
    after = method.after_step if isinstance(method, AfterStep) else None
    state = {"step": 0}

    def step() -> float:
        ctx = StepContext(state["step"], 100, 1000, seed=0)
        loss = method(data, ctx).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if after is not None:
            after(ctx)
        state["step"] += 1
        return loss.item()  # also waits for the device

    return step


def _case(name: str, provider: str, dev: torch.device, smoke: bool, timed: int) -> Record:
    torch._dynamo.reset()
    method, opt, batch = _method(name, dev, smoke)
    if provider == "compile":
        compile_regions(method, "default", dev, torch.float32)
    step = _step_fn(method, opt, batch, dev)
    t0 = time.perf_counter()
    loss0 = step()
    first = time.perf_counter() - t0
    for _ in range(2):
        step()
    graphs_before = compile_stats().graphs
    # host clock, as before time_fn served here: step() ends in loss.item(), which waits for the device
    t = time_fn(step, reps=timed, host=True)
    stats = compile_stats()
    extra = {"first_step_s": first, "images_per_s": batch / (t.median / 1e3), "first_loss": loss0,
             "load_average": os.getloadavg()}
    if provider == "compile":
        extra.update(graphs=stats.graphs, recompiles=stats.graphs - graphs_before, graph_breaks=stats.graph_breaks)
    case = {"method": name, "batch": batch, "precision": "fp32"}
    return Record(provider=provider, case=case, total=t, extra=extra)


def run(args) -> None:
    os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")  # cold compiles: what a first run pays
    dev = device()
    names = [m for m in (args.methods or ",".join(method_names())).split(",") if m]
    timed = 3 if args.smoke else 5
    records = []
    ceilings = measure_ceilings(smoke=True)
    meta = {"step": "method forward + loss + backward + AdamW + zero_grad + after_step, configs/fmnist/<method>.yaml shapes",
            "threads": torch.get_num_threads(), "timed_steps": timed, "inductor_caches": "disabled (cold compiles)"}
    for name in names:
        for provider in ("eager", "compile"):
            rec = _case(name, provider, dev, args.smoke, timed)
            records.append(rec)
            e = rec.extra
            print(f"{name:8s} {provider:8s} first step {e['first_step_s']:7.1f} s   {e['images_per_s']:7.1f} images/s"
                  + (f"   graphs {e['graphs']} (+{e['recompiles']} while timed)" if provider == "compile" else "")
                  + f"   load {e['load_average'][0]:.1f}", flush=True)
            path = write_results("throughput-compile", records, ceilings, args, meta=meta)  # after every case: partial runs keep rows
    print(f"wrote {path}")
    plot(path, [("images/s after warm-up", lambda r: r.extra.get("images_per_s"), "images/s"),
                ("first step (compile included)", lambda r: r.extra.get("first_step_s"), "s")],
         x_key="method", series_key=lambda c: f"B={c['batch']}")


def _add_args(p) -> None:
    p.add_argument("--methods", default=None, help="comma-separated methods (default: all registered)")


def main(argv: list[str] | None = None) -> None:
    run(parse_args(__doc__.splitlines()[0], _add_args, argv))


if __name__ == "__main__":
    main()
