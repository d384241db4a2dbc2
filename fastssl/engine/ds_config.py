"""The DeepSpeed JSON config, derived from the training config (plus the user's ``deepspeed:`` block)."""
from __future__ import annotations

import copy
from typing import Any

import torch

from fastssl.engine.amp import AUTOCAST, loop_clips, resolve_amp, resolve_precision
from fastssl.engine.schedule import StepPlan


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def deepspeed_config(cfg, plan: StepPlan, world_size: int) -> dict[str, Any]:
    """micro-batch, accumulation, precision, ZeRO stage, clipping and AdamW at the peak LR.

    The optimizer is torch's AdamW (``torch_adam``): DeepSpeed's fused Adam would JIT-compile a CUDA/C++
    extension on first use, which a CPU machine cannot and a GPU machine need not pay for; on CUDA it
    is torch's ``fused=True`` implementation (DeepSpeed passes the extra key through to torch).
    The LR schedule is ours (``fastssl.engine.schedule.lr_scheduler``, handed to ``deepspeed.initialize``):
    DeepSpeed's WarmupCosineLR spends its first two steps at LR 0.
    Mixed precision follows ``engine.amp`` (``fastssl.engine.amp``): DeepSpeed's ``bf16`` section (a bf16
    model, fp32 master weights in its optimizer wrapper) or its ``torch_autocast`` section (an fp32 model,
    the forward under torch.autocast, the optimizer stepped as it is).
    """
    o, e = cfg.optim, cfg.engine
    precision = resolve_precision(e.precision)
    autocast = resolve_amp(e) == AUTOCAST
    if autocast:  # DeepSpeed's own casting off: the weights stay fp32 and autocast picks the dtype per op
        precision = "fp32"
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": o.batch_size,
        "gradient_accumulation_steps": o.grad_accum,
        "train_batch_size": o.batch_size * o.grad_accum * world_size,
        # check_grad_overflow: DeepSpeed's bf16 tests every gradient for inf/NaN before each step
        # (amax, amin and two isfinite per weight tensor, ~13 kernel ops, then a host read: about 2000
        # launches per ViT-B step at ZeRO 1/2, bench/train_host_ops.py) and *skips* the step on a hit.
        # bf16 needs no loss scaling, and a skipped step is a silent one: a finite loss over non-finite
        # gradients would "train" without updating. Off, non-finite gradients reach the weights and the
        # loop's non-finite-loss check stops the run at the next check step (as under autocast).
        "bf16": {"enabled": True, "check_grad_overflow": False} if precision == "bf16" else {"enabled": False},
        "fp16": {"enabled": precision == "fp16"},
        # DeepSpeed casts parameters to bf16/fp16 but keeps buffers fp32 by default; BatchNorm needs
        # its running statistics in its weight's dtype, so buffers follow the parameters.
        "data_types": {"buffer_dtype": precision} if precision in ("bf16", "fp16") else {},
        "zero_optimization": {"stage": e.zero_stage},
        "zero_allow_untested_optimizer": True,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": plan.peak_lr, "betas": list(o.betas), "eps": 1e-8, "weight_decay": o.weight_decay, "torch_adam": True},
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        # DeepSpeed's throughput timer is on and synchronised by default: from its second step on, the
        # engine's forward and step each call the accelerator's synchronize (torch.cuda.synchronize), two
        # host waits per optimizer step that keep the host from queuing the next step's launches. fastssl
        # measures its own images/s (fastssl.engine.session.Throughput, synced at log steps only).
        "timers": {"throughput": {"enabled": False}},
    }
    if torch.cuda.is_available():  # torch's fused (one multi-tensor kernel) AdamW: no per-parameter launches
        ds["optimizer"]["params"]["fused"] = True
    if autocast:
        ds["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    # Always said: DeepSpeed 0.19 clips at 1.0 when the key is absent (GRADIENT_CLIPPING_DEFAULT), which
    # would clip runs with optim.clip_grad=null, and clip a second time, at 1.0, where the loop clips
    # (engine.amp=autocast at ZeRO 0, with a per-parameter norm loop of DeepSpeed's on top). 0 = off.
    deepspeed_clips = o.clip_grad is not None and loop_clips(e, o.clip_grad) is None  # (else the loop clips, multi-tensor)
    ds["gradient_clipping"] = float(o.clip_grad) if deepspeed_clips else 0.0
    return _merge(ds, cfg.deepspeed)
