"""The rows of ``bench/train.py``: which trainer runs a sweep makes, and the CLI overrides of each.

A row is a dict: method, arch, batch, precision, DeepSpeed ZeRO stage, ``engine.amp`` (as asked and as
it resolves on the row's machine), compile on / off, channels-last or NCHW, steps and warm-up, and
whether the bare step and a profile are measured beside it. ``row_overrides`` turns it into the
``dotted.key=value`` list of one ``python fastssl/train.py`` run; ``quick_rows`` is ``--quick``'s
priority order (a time cap cuts the tail). The tiny overrides also serve the CPU tests that run every
method through the CLI.
"""
from __future__ import annotations

from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

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
    ZeRO 2 rows (the bare step is shared: no extra cost, but for the ResNets, whose ZeRO 2 rows run NCHW) and
    compile rows without the bare step.
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
