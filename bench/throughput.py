"""End-to-end training throughput: one SimCLR/DCL optimizer step, in images/s.

One step is what the trainer does per batch, minus DeepSpeed and DALI: both views [B,3,H,W] through
the encoder + projector in one call (``SimCLR.forward``), the contrastive loss, backward, AdamW step,
zero_grad. Inputs are random tensors already on the device, so this isolates model + loss +
optimizer. The model is built as ``fastssl.methods.registry`` builds it (``build_vit`` wrapped in
``SimCLR``); the optimizer is torch's AdamW over ``fastssl.engine.params.optimizer_groups`` (fused on
CUDA). Precision: bf16 autocast over fp32 weights on CUDA (the trainer's DeepSpeed bf16 mode keeps
bf16 weights with fp32 master copies instead; the matmuls run in bf16 either way), fp32 on CPU.

Providers:
  eager           plain model, loss backend="reference" (full 2B×2B logits in PyTorch)
  triton          plain model, loss backend="triton" (fused tiles, no logits matrix)
  compile         torch.compile(model), reference loss (one compile per case)
  compile+triton  torch.compile(model), Triton loss (recorded as an error if it does not compile)

FLOPs per step (nanoGPT's estimate_mfu() counting; biases/norms ride along in the parameter count):
  per view of one image   6·P_enc·T            every weight is used once per token: 2 FLOPs fwd + 4 bwd
                        + 12·L·D·T²           attention QKᵀ and A·V: 2·(2·T²·D) per layer fwd, ×3 with bwd
                        + 6·P_proj            the projector runs once per image (the CLS embedding)
  per step                2·B·(per view)       two views of B images
                        + 8·(2B)²·D_proj       the contrastive loss (2·M²·D fwd + 6·M²·D bwd, M = 2B)
P_enc = encoder parameters without pos_embed/cls_token (nanoGPT's non-embedding count), T = patches + 1,
L = depth, D = embed width. MFU = FLOPs / step time / the bf16 (CPU: fp32) matmul rate measured in this
run (``bench.common.measure_ceilings``), so it is relative to what this device reaches on one big GEMM.
Images/s counts B images per step (each seen as two views), as the trainer's progress bar does.

    python bench/throughput.py                 # ViT-S/16 + ViT-B/16 at 224 px, B ∈ {128,256,512}, dcl + nt_xent (long:
                                               #   split it with --archs/--losses/--name to fit 10-minute calls)
    python bench/throughput.py --quick         # ViT-S/16, B ∈ {256,512}, dcl; compile providers at B=256 only (< 4 min, H100)
    python bench/throughput.py --smoke         # timm test_vit, 16 px, patch 4, B=8, fp32: runs anywhere, not a measurement
    python bench/throughput.py --cpu-quickstart  # the README quickstart's step on CPU: vit_tiny, 28 px / patch 7, B=128, fp32, dcl
The other step benches are scripts of their own; these flags of this script forward to them (the rest
of the command line is theirs):
    --accel     bench/accel_step.py     Accel PB / HP / PB+HP vs standard (SimCLR, MoCo v2, SwAV on a ResNet)
    --masked    bench/masked_step.py    M-MoCo / M-BYOL n/m sweep: packed vs eager per-chunk batches
    --compile   bench/compile_step.py   engine.compile off/on per method at the configs/fmnist shapes
    --mae       bench/masked_image.py   MAE / CAN / DAC: eager reference vs fastssl (+ compile on CUDA)
"""
from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

if "--cpu-quickstart" in sys.argv:  # the quickstart's CPU path even on a GPU machine: hide CUDA before torch loads
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

if not torch.cuda.is_available():  # the Triton loss runs in the interpreter on CPU (smoke only)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bench.common import (  # noqa: E402
    Column, Record, by_case, device, free_memory, make_train_step, measure_ceilings, parse_args, peak_memory_mib, plot, print_table, run_guarded, sync,
    time_fn, write_results,
)
from fastssl.data.batch import Batch  # noqa: E402
from fastssl.engine.params import optimizer_groups  # noqa: E402
from fastssl.methods.base import StepContext  # noqa: E402
from fastssl.methods.simclr import SimCLR, SimCLRConfig  # noqa: E402
from fastssl.models.encoder import build_vit  # noqa: E402

ALL_PROVIDERS = "eager,triton,compile,compile+triton"
PROVIDERS = {  # name -> (loss backend, torch.compile the model?)
    "eager": ("reference", False),
    "triton": ("triton", False),
    "compile": ("reference", True),
    "compile+triton": ("triton", True),
}
VIT_S, VIT_B = ("vit_small_patch16_224", 224, 16), ("vit_base_patch16_224", 224, 16)


@dataclass
class Sweep:
    archs: list[tuple[str, int, int]]  # (timm name, image size, patch size)
    batches: list[int]                 # per-GPU batch B (images; 2B views per step)
    losses: list[str]
    amp: bool                          # bf16 autocast (CUDA) or fp32
    compile_batches: list[int] | None = None  # compile providers only at these B (None: all)
    rep_ms: float = 1500               # CUDA timing budget per case: ~5 samples of a 300 ms step, ~50 of a 30 ms one


FULL = Sweep([VIT_S, VIT_B], [128, 256, 512], ["dcl", "nt_xent"], amp=True)
QUICK = Sweep([VIT_S], [256, 512], ["dcl"], amp=True, compile_batches=[256])  # each compile costs ~a minute
SMOKE = Sweep([("test_vit", 16, 4)], [8], ["dcl"], amp=False)
CPU_QUICKSTART = Sweep([("vit_tiny_patch16_224", 28, 7)], [128], ["dcl"], amp=False)  # configs/quickstart.yaml


def build(arch: str, img: int, patch: int, loss: str, backend: str, dev: torch.device):
    """The trainer's model (same seed -> same weights for every provider) and its AdamW."""
    torch.manual_seed(0)
    encoder = build_vit(arch, img_size=img, patch_size=patch)
    model = SimCLR(SimCLRConfig(loss=loss, backend=backend, gather_distributed=False), encoder).to(dev).train()
    opt = torch.optim.AdamW(optimizer_groups(model.param_groups(), 0.05)[0], lr=1e-4, fused=dev.type == "cuda")
    return model, opt


def step_flops(model: SimCLR, batch: int) -> float:
    """Model FLOPs of one fwd+bwd step (see the module docstring for the terms)."""
    enc = model.encoder
    tokens = enc.grid[0] * enc.grid[1] + 1  # patches + CLS
    p_enc = sum(p.numel() for n, p in enc.named_parameters() if n not in ("pos_embed", "cls_token"))
    p_proj = sum(p.numel() for p in model.projector.parameters())
    per_view = 6 * p_enc * tokens + 12 * len(enc.blocks) * enc.embed_dim * tokens**2 + 6 * p_proj
    return 2 * batch * per_view + 8 * (2 * batch) ** 2 * model.cfg.head.out_dim


def make_step(fwd, opt, v1: torch.Tensor, v2: torch.Tensor, amp: bool):
    b = v1.shape[0]
    index = torch.arange(b, device=v1.device)
    batch = Batch({"views": torch.stack([v1, v2])}, index, index)
    ctx = StepContext(step=0, steps_per_epoch=1, total_steps=1, seed=0)
    return make_train_step(fwd, batch, ctx, opt, v1.device.type, amp)


def run_case(arch, img, patch, loss, batch, provider, sweep: Sweep, views, first_loss: dict, smoke: bool) -> Record:
    dev = views[0].device
    backend, compiled = PROVIDERS[provider]
    model, opt = build(arch, img, patch, loss, backend, dev)
    fwd = torch.compile(model, dynamic=False) if compiled else model
    step = make_step(fwd, opt, *views, sweep.amp)
    # First step: compiles, creates AdamW state; its loss comes from the same weights and inputs for every
    # provider, so it must agree (a sanity check on the benchmark itself; the unit tests are the real check).
    loss0 = step().detach().float()
    if not torch.isfinite(loss0):
        raise FloatingPointError(f"non-finite first loss {loss0.item()}")
    ref = first_loss.setdefault("loss", loss0)
    torch.testing.assert_close(loss0, ref, rtol=2e-2, atol=2e-2)
    sync()
    static_mib = torch.cuda.memory_allocated() / 2**20 if dev.type == "cuda" else None  # weights, AdamW state, inputs
    t = time_fn(step, smoke=smoke, rep_ms=sweep.rep_ms)
    peak = peak_memory_mib(step)  # above static_mib: activations, gradients, loss workspace
    flops = step_flops(model, batch)
    extra = {
        "images_per_s": batch / (t.median / 1e3),
        "tflops": flops / t.median / 1e9,
        "flops_per_step": flops,
        "static_mib": static_mib,
        "first_loss": loss0.item(),
    }
    return Record(provider=provider, case={}, total=t, peak_mem_mib=peak, extra=extra)


def _derive(records: list[Record], ceiling_tflops: float) -> None:
    """MFU against the measured matmul rate; speed-up over eager of the same case."""
    for group in by_case(records):
        base = group.get("eager")
        for r in group.values():
            if r.error is not None:
                continue
            r.extra["mfu_pct"] = 100 * r.extra["tflops"] / ceiling_tflops
            if base is not None and base.error is None:
                r.extra["speedup_vs_eager"] = base.total.median / r.total.median


_COLUMNS = [
    Column("arch", 24, lambda r: r.case["arch"]), Column("loss", 6, lambda r: r.case["loss"]),
    Column("B", 5, lambda r: r.case["batch"]), Column("provider", 16, lambda r: r.provider),
    Column("step ms", 9, lambda r: r.total.median if r.total else None, ".1f"),
    Column("p20-p80", 16, lambda r: f"{r.total.p20:.1f}-{r.total.p80:.1f}" if r.total else None),
    Column("img/s", 9, lambda r: r.extra.get("images_per_s"), ".0f"), Column("peak MiB", 10, lambda r: r.peak_mem_mib, ".0f"),
    Column("TFLOP/s", 9, lambda r: r.extra.get("tflops"), ".3g"), Column("MFU%", 6, lambda r: r.extra.get("mfu_pct"), ".0f"),
    Column("x eager", 8, lambda r: r.extra.get("speedup_vs_eager"), ".2f"),
]


FORWARDS = {"--accel": "accel_step", "--masked": "masked_step", "--compile": "compile_step", "--mae": "masked_image"}


def _add_args(p) -> None:
    p.set_defaults(providers=ALL_PROVIDERS)
    for flag, module in FORWARDS.items():  # for --help only: main() forwards these before parsing
        p.add_argument(flag, action="store_true", help=f"run bench/{module}.py with the rest of the command line")
    p.add_argument("--quick", action="store_true", help="ViT-S/16, B in 256/512, dcl; compile providers at B=256 only")
    p.add_argument("--cpu-quickstart", action="store_true", help="the README quickstart's step on CPU (eager, fp32); prints images/s")
    p.add_argument("--archs", default=None, help="comma-separated timm names (224 px, patch 16) overriding the sweep's")
    p.add_argument("--batches", default=None, help="comma-separated per-GPU batch sizes overriding the sweep's")
    p.add_argument("--losses", default=None, help="comma-separated subset of dcl,nt_xent,dclw")
    p.add_argument("--name", default="throughput", help="results file stem (to keep split runs apart)")

def forward(argv: list[str]) -> bool:
    """Run the bench a forwarding flag names (see the module docstring) with the rest of ``argv``;
    False when ``argv`` names none."""
    for flag, module in FORWARDS.items():
        if flag in argv:
            importlib.import_module(f"bench.{module}").main([a for a in argv if a != flag])
            return True
    return False


def main() -> None:
    if forward(sys.argv[1:]):
        return
    args = parse_args(__doc__.splitlines()[0], _add_args)
    sweep = SMOKE if args.smoke else CPU_QUICKSTART if args.cpu_quickstart else QUICK if args.quick else FULL
    if args.cpu_quickstart:
        args.providers = "eager"
    split = lambda text: [x.strip() for x in text.split(",") if x.strip()]  # noqa: E731
    if args.archs:
        sweep = replace(sweep, archs=[(a, 224, 16) for a in split(args.archs)])
    if args.batches:
        sweep = replace(sweep, batches=[int(b) for b in split(args.batches)], compile_batches=None)
    if args.losses:
        sweep = replace(sweep, losses=split(args.losses))
    providers = split(args.providers)
    unknown = set(providers) - set(PROVIDERS)
    if unknown:
        raise SystemExit(f"unknown providers {sorted(unknown)}; choose from {ALL_PROVIDERS}")
    dev = device()
    if args.smoke and dev.type == "cpu":  # tiny ops: OpenMP threads only spin against the other work on a shared CPU
        torch.set_num_threads(1)
    sweep = replace(sweep, amp=sweep.amp and dev.type == "cuda")
    amp = sweep.amp
    # Small ceilings on CPU: an 8192² fp32 matmul takes minutes on a few cores (1024² reaches the same rate).
    ceilings = measure_ceilings(smoke=args.smoke or dev.type == "cpu")
    print(f"device {torch.cuda.get_device_name() if dev.type == 'cuda' else dev} ({torch.get_num_threads()} threads); "
          f"matmul ceiling {ceilings.matmul_tflops:.2f} TFLOP/s ({'bf16' if amp else 'fp32'})", flush=True)

    records: list[Record] = []
    for arch, img, patch in sweep.archs:
        for batch in sweep.batches:
            torch.manual_seed(1)
            views = tuple(torch.randn(batch, 3, img, img, device=dev) for _ in range(2))
            for loss in sweep.losses:
                first_loss: dict = {}
                case = {"arch": arch, "img": img, "patch": patch, "batch": batch, "loss": loss,
                        "precision": "bf16-autocast" if amp else "fp32"}
                for provider in providers:
                    if PROVIDERS[provider][1] and sweep.compile_batches is not None and batch not in sweep.compile_batches:
                        continue
                    torch._dynamo.reset()  # a fresh compile per case: no recompile limit, no stale graphs
                    rec = run_guarded(provider, case, lambda provider=provider: run_case(
                        arch, img, patch, loss, batch, provider, sweep, views, first_loss, args.smoke))
                    records.append(rec)
                    print(f"  {arch} B={batch} {loss} {provider}: "
                          + (rec.error.splitlines()[0][:100] if rec.error else f"{rec.extra['images_per_s']:.1f} images/s"), flush=True)
            del views
            free_memory()

    _derive(records, ceilings.matmul_tflops)
    name = "throughput-cpu-quickstart" if args.cpu_quickstart else args.name
    path = write_results(name, records, ceilings, args, meta={
        "step": "SimCLR forward (2 views) + contrastive loss + backward + AdamW (fused on CUDA) + zero_grad",
        "flops_per_step": "2*B*(6*P_enc*T + 12*L*D*T^2 + 6*P_proj) + 8*(2B)^2*D_proj",
        "quick": bool(args.quick), "cpu_quickstart": bool(args.cpu_quickstart), "threads": torch.get_num_threads(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None})
    png = plot(
        path,
        [("one optimizer step", lambda r: r.total.median if r.total else None, "ms"),
         ("throughput", lambda r: r.extra.get("images_per_s"), "images/s"),
         ("MFU (vs measured matmul rate)", lambda r: r.extra.get("mfu_pct"), "%")],
        x_key="batch",
        series_key=lambda c: f"{c['arch']} {c['loss']}",
    )
    print_table(records, _COLUMNS)
    print(f"\nwrote {path} and {png}")


if __name__ == "__main__":
    main()
