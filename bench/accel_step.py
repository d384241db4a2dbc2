"""Accel step time: standard vs PB alone, HP alone, PB + HP, for SimCLR, MoCo v2 and SwAV on a
ResNet, one optimizer step (forward, loss, backward, AdamW, zero_grad, after_step) on random inputs,
on the CPU (host clock).

    python bench/accel_step.py [--threads 2] [--methods simclr,mocov2,swav]   # ResNet-18, 32 px, B = 64
    python bench/accel_step.py --smoke     # timm's test ResNet, 16 px, B = 8: runs anywhere, not a measurement
    (``python bench/throughput.py --accel ...`` forwards here)

With PB the step's cost depends on the drawn stage, so each stage s = 1 … n is timed on its own
(the draw is forced by picking a step whose ``ctx.generator()`` draws s) and the expected step time
under the uniform draw is their mean — exact, not sampled. Writes
``bench/results/throughput-accel-<device>.json``; prints a table with the ratio to the standard step.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import parse_args, time_fn  # noqa: E402
from fastssl.data.batch import Batch  # noqa: E402
from fastssl.engine.params import optimizer_groups  # noqa: E402
from fastssl.methods.accel import Accel, draw_stage  # noqa: E402
from fastssl.methods.accel_config import AccelConfig  # noqa: E402
from fastssl.methods.base import StepContext  # noqa: E402
from fastssl.methods.mocov2 import MoCoV2, MoCoV2Config  # noqa: E402
from fastssl.methods.simclr import SimCLR, SimCLRConfig  # noqa: E402
from fastssl.methods.swav import SwAV, SwAVConfig  # noqa: E402
from fastssl.models.heads import HeadConfig  # noqa: E402
from fastssl.models.resnet import ResNetTaps  # noqa: E402

VARIANTS = {"standard": None, "PB": dict(partial_backprop=True, hard_pairs=False),
            "HP": dict(partial_backprop=False, hard_pairs=True), "PB+HP": dict(partial_backprop=True, hard_pairs=True)}


def build(method: str, arch: str, small_stem: bool, batch: int, accel: dict | None, head: HeadConfig):
    enc = ResNetTaps.from_timm(arch, small_stem=small_stem)
    acc = AccelConfig(stage_head=head, **accel) if accel is not None else None
    if method == "simclr":
        model = SimCLR(SimCLRConfig(loss="nt_xent", head=head, backend="reference", accel=acc), enc)
    elif method == "mocov2":
        model = MoCoV2(MoCoV2Config(head=head.model_copy(update={"norm": "none"}), queue_size=16 * batch, backend="reference", accel=acc), enc)
    else:
        model = SwAV(SwAVConfig(head=head, n_local=0, n_prototypes=300, accel=acc), enc)
    return Accel(model, acc) if acc is not None else model  # as build_method wraps it


def _step_for(stage: int | None, cfg: AccelConfig | None) -> int:
    if stage is None:
        return 0
    return next(s for s in range(10_000) if draw_stage(cfg, 4, StepContext(s, 100, 10**6, 0).generator()) == stage)


def time_step(model, batch: Batch, step: int, reps: int) -> float:
    """Median seconds of one optimizer step at ``step`` (its stage draw fixed), after one warm-up step."""
    groups, _ = optimizer_groups(model.param_groups(), 0.05)
    opt = torch.optim.AdamW(groups, lr=1e-4)
    ctx = StepContext(step, 100, 10**6, 0)

    def one_step() -> None:
        out = model(batch, ctx)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if hasattr(model, "after_step"):
            model.after_step(ctx)

    return time_fn(one_step, reps=reps, host=True).median / 1e3  # the models run on the CPU even beside a GPU


def run(args) -> None:
    torch.set_num_threads(args.threads)
    arch, img, b = ("test_resnet", 16, 8) if args.smoke else (args.arch, args.img, args.batch)
    head = HeadConfig(hidden_dim=32 if args.smoke else 512, out_dim=16 if args.smoke else 128)
    torch.manual_seed(0)
    views = torch.randn(2, b, 3, img, img)
    batch = Batch({"views": views, "global": views}, torch.zeros(b, dtype=torch.long), torch.arange(b))
    rows = []
    for method in args.methods.split(","):
        base = None
        for name, accel in VARIANTS.items():
            acc = AccelConfig(**accel) if accel is not None else None
            stages = [1, 2, 3, 4] if acc is not None and acc.partial_backprop else [None]
            per_stage = {}
            for s in stages:
                torch.manual_seed(0)
                model = build(method, arch, args.small_stem, b, accel, head)
                per_stage[s or 4] = time_step(model, batch, _step_for(s, acc), 1 if args.smoke else args.reps)
            ms = 1000 * statistics.mean(per_stage.values())
            base = ms if name == "standard" else base
            rows.append({"method": method, "variant": name, "step_ms": round(ms, 1), "ratio": round(ms / base, 3),
                         "per_stage_ms": {k: round(1000 * v, 1) for k, v in per_stage.items()}})
            print(f"  {method:7s} {name:9s} {ms:9.1f} ms  ×{ms / base:.2f}  " +
                  " ".join(f"s{k}={1000 * v:.0f}" for k, v in per_stage.items()), flush=True)
    meta = {"arch": arch, "small_stem": args.small_stem, "img": img, "batch": b, "threads": torch.get_num_threads(),
            "device": "cpu", "cpu_count": os.cpu_count(), "load_average_after": os.getloadavg(), "reps": args.reps,
            "step": "forward + loss + backward + AdamW + zero_grad + after_step, fp32, random inputs"}
    out = args.out_dir / f"throughput-accel-cpu{'-smoke' if args.smoke else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {out}")
    plot_rows(out)


def plot_rows(path: Path) -> Path:
    """Step time per method (groups) and variant (bars), beside the JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.common import _bars

    doc = json.loads(path.read_text())
    series: dict[str, list[tuple[str, float]]] = {}
    for r in doc["rows"]:
        series.setdefault(r["variant"], []).append((r["method"], r["step_ms"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _bars(ax, series)
    m = doc["meta"]
    ax.set_ylabel("ms per step (PB: mean over the 4 stages)")
    ax.set_title(f"Accel vs standard, {m['arch']} at {m['img']} px, B = {m['batch']}, {m['threads']} threads, CPU")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = path.with_suffix(".png")
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def _add_args(p) -> None:
    p.add_argument("--methods", "--accel-methods", dest="methods", default="simclr,mocov2,swav", help="methods to time")
    p.add_argument("--arch", default="resnet18", help="timm ResNet")
    p.add_argument("--small-stem", action="store_true", help="the 3×3 stride-1 stem")
    p.add_argument("--img", type=int, default=32, help="image side")
    p.add_argument("--batch", type=int, default=64, help="images per step (two views each)")
    p.add_argument("--reps", type=int, default=3, help="timed steps per case (median)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1: shared cores)")


def main(argv: list[str] | None = None) -> None:
    run(parse_args(__doc__.splitlines()[0], _add_args, argv))


if __name__ == "__main__":
    main()
