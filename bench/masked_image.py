"""MAE / CAN / DAC step throughput: the eager reference vs the fastssl path.

    python bench/masked_image.py [--cpu-quickstart] [--profile] [--methods mae,can,dac] [--smoke]
    (``python bench/throughput.py --mae ...`` forwards here)

One step = the method's forward (masking, encoder, decoder, every loss) + backward + AdamW step +
zero_grad, on random images already on the device (no data loader). Providers, same weights:
  eager     the method as MAE's official code writes it (``bench/eager/masked_image.py``: timm's ViT
            on dense batches, embed-every-patch-then-gather input, ``torch.gather`` unshuffle),
            holding copies of the fastssl method's weights
  fastssl   the method: one packed encoder call, pixels gathered before the patch embedding, token
            ops with backend "auto" (Triton on CUDA, reference on CPU)
  compile   torch.compile of the fastssl model (recorded as an error where it does not compile)
Sizes: ``--cpu-quickstart`` (default on CPU): the fmnist configs (ViT-tiny, 28 px / patch 7, B = 128,
fp32, the configs' decoders and heads); on CUDA ViT-B/16 at 224 px, B = 128, bf16 autocast, MAE's
decoder (512 × 8); ``--smoke``: timm's test ViT at 16 px. CPU timing alternates the providers step
by step (``rounds`` rounds of ``bench.common.time_rounds``), so a machine whose load drifts biases
none of them; the median and 20/80 % quantiles per provider are reported. ``--profile`` adds
torch.profiler's top ops per method and provider (self CPU time over 2 steps) to the JSON and prints
them as Markdown tables.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

if "--cpu-quickstart" in sys.argv:  # the quickstart's CPU path even on a GPU machine: hide CUDA before torch loads
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.common import (  # noqa: E402
    Record, device, make_train_step, measure_ceilings, parse_args, peak_memory_mib, plot, time_fn, time_rounds, write_results,
)
from fastssl.config import load_config  # noqa: E402
from fastssl.data.batch import Batch  # noqa: E402
from fastssl.engine.params import optimizer_groups  # noqa: E402
from fastssl.methods.can import CAN  # noqa: E402
from fastssl.methods.base import StepContext, StepOutput  # noqa: E402
from fastssl.methods.dac import DAC  # noqa: E402
from fastssl.methods.mae import MAE  # noqa: E402
from fastssl.models.encoder import build_vit  # noqa: E402

METHODS = {"mae": MAE, "can": CAN, "dac": DAC}
PROVIDERS = ("eager", "fastssl", "compile")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Case:
    arch: str
    img: int
    patch: int
    batch: int
    amp: bool
    gpu_heads: bool  # the ImageNet configs' decoder and heads instead of the fmnist ones


CPU_QUICKSTART = Case("vit_tiny_patch16_224", 28, 7, 128, False, False)
GPU = Case("vit_base_patch16_224", 224, 16, 128, True, True)
SMOKE = Case("test_vit", 16, 4, 8, False, False)


def build(name: str, case: Case, eager: bool, dev: torch.device):
    """The fastssl method (``eager``: its eager twin, same weights) and an AdamW over its parameters."""
    folder = "imagenet" if case.gpu_heads else "fmnist"
    cfg = load_config(os.path.join(ROOT, "configs", folder, f"{name}.yaml"), ["data.root=."] if case.gpu_heads else []).method
    if hasattr(cfg, "gather_distributed"):
        cfg = cfg.model_copy(update={"gather_distributed": False})
    if case.arch == "test_vit":
        cfg = cfg.model_copy(update={"decoder": cfg.decoder.model_copy(update={"embed_dim": 32, "depth": 1, "num_heads": 2})})
    torch.manual_seed(0)
    enc = build_vit(case.arch, img_size=case.img, patch_size=case.patch)
    model = METHODS[name](cfg, enc).to(dev).train()
    if eager:
        from bench.eager import build_eager

        ref = EagerStep(build_eager(model), model.crops())
        return ref, torch.optim.AdamW([p for p in ref.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.05)
    opt = torch.optim.AdamW(optimizer_groups(model.param_groups(), 0.05)[0], lr=1e-4, fused=dev.type == "cuda")
    return model, opt


class EagerStep(torch.nn.Module):
    """An eager twin (its forward returns the loss) with the method's ``crops()`` and ``StepOutput``."""

    def __init__(self, ref: torch.nn.Module, crops):
        super().__init__()
        self.ref, self._crops = ref, crops

    def crops(self):
        return self._crops

    def forward(self, batch, ctx) -> StepOutput:
        return StepOutput(loss=self.ref(batch, ctx))


def make_batch(model, case: Case, dev: torch.device) -> Batch:
    g = torch.Generator().manual_seed(1)
    crops = {c.name: torch.randn(c.count, case.batch, 3, c.size or case.img, c.size or case.img, generator=g).to(dev)
             for c in model.crops()}
    idx = torch.arange(case.batch, device=dev)
    return Batch(crops, idx, idx)


def make_step(fwd, opt, batch: Batch, amp: bool, dev: torch.device):
    ctx = StepContext(step=0, steps_per_epoch=100, total_steps=100, seed=0)
    return make_train_step(fwd, batch, ctx, opt, dev.type, amp)


def profile_table(step, top: int = 12) -> list[dict]:
    """Top ops by self CPU time over two steps (after one warm-up step)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        for _ in range(2):
            step()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    return [{"op": e.key, "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 2e3,
             "pct": 100 * e.self_cpu_time_total / total} for e in rows]


def run(args) -> None:
    dev = device()
    case = SMOKE if args.smoke else GPU if dev.type == "cuda" else CPU_QUICKSTART
    if args.smoke and dev.type == "cpu":
        torch.set_num_threads(1)
    methods = [m.strip() for m in (args.methods or "mae,can,dac").split(",") if m.strip()]
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    rounds = 2 if args.smoke else args.rounds
    records: list[Record] = []
    profiles: dict = {}
    name_of_run = "throughput-masked-image" + ("-quickstart" if dev.type == "cpu" and not args.smoke else "")
    ceilings = measure_ceilings(smoke=True)
    for name in methods:
        steps, models = {}, {}
        for prov in providers:
            model, opt = build(name, case, prov == "eager", dev)
            fwd = torch.compile(model, dynamic=False) if prov == "compile" else model
            batch = make_batch(model, case, dev)
            step = make_step(fwd, opt, batch, case.amp, dev)
            try:
                loss0 = step().item()  # warm-up (compile), the same weights and inputs for every provider
            except Exception as err:  # noqa: BLE001  (compile may not run here: record it)
                records.append(Record(provider=prov, case={"method": name, **case.__dict__}, error=f"{type(err).__name__}: {err}"[:500]))
                print(f"  {name} {prov}: {records[-1].error.splitlines()[0][:120]}", flush=True)
                continue
            steps[prov], models[prov] = step, (model, loss0)
        if dev.type == "cuda":
            timings = {k: time_fn(fn, rep_ms=2000) for k, fn in steps.items()}
        else:
            timings = time_rounds(steps, rounds)  # each provider once per round, in turn
        for prov, t in timings.items():
            extra = {"images_per_s": case.batch / (t.median / 1e3), "first_loss": models[prov][1]}
            if "eager" in timings:
                extra["speedup_vs_eager"] = timings["eager"].median / t.median
            rec = Record(provider=prov, case={"method": name, **case.__dict__}, total=t,
                         peak_mem_mib=peak_memory_mib(steps[prov]), extra=extra)
            records.append(rec)
            print(f"  {name} {prov}: {t.median:.0f} ms ({t.p20:.0f}-{t.p80:.0f}), {extra['images_per_s']:.1f} images/s, "
                  f"x{extra.get('speedup_vs_eager', 1.0):.2f} vs eager, first loss {extra['first_loss']:.4f}", flush=True)
        if args.profile:
            for prov in ("eager", "fastssl"):
                if prov in steps:
                    profiles[f"{name}/{prov}"] = profile_table(steps[prov])
        del steps, models
        # after every method: a run cut by a time cap (scripts/gpu_session.sh) keeps the methods it finished
        path = write_results(name_of_run, records, ceilings, args, meta={
            "step": "method forward (masking, encoder, decoder, losses) + backward + AdamW + zero_grad",
            "rounds": rounds, "threads": torch.get_num_threads(), "profiles": profiles,
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None})
    print(f"\nwrote {path}")
    for key, rows in profiles.items():
        print(f"\n{key} (top ops by self CPU time, 2 steps)\n| op | calls | self CPU ms/step | % |\n|---|---|---|---|")
        for r in rows:
            print(f"| {r['op']} | {r['calls']} | {r['self_cpu_ms']:.1f} | {r['pct']:.1f} |")
    try:
        plot(path, [("throughput", lambda r: r.extra.get("images_per_s"), "images/s")], x_key="method",
             series_key=lambda c: c["arch"])
    except Exception as err:  # noqa: BLE001  (a plot is a convenience)
        print(f"no plot: {err}")


def _add_args(p) -> None:
    p.set_defaults(providers="eager,fastssl,compile" if torch.cuda.is_available() else "eager,fastssl")  # compile on CPU: minutes a method
    p.add_argument("--cpu-quickstart", action="store_true", help="the fmnist configs' size on the CPU, even on a GPU machine")
    p.add_argument("--methods", default=None, help="a subset of mae,can,dac")
    p.add_argument("--rounds", type=int, default=5, help="on CPU: alternating timing rounds per provider")
    p.add_argument("--profile", action="store_true", help="torch.profiler top ops per method and provider")


def main(argv: list[str] | None = None) -> None:
    run(parse_args(__doc__.splitlines()[0], _add_args, argv))


if __name__ == "__main__":
    main()
