"""Channels-last memory layout for ResNet encoders (``engine.channels_last``), one of issue 20's levers.

cuDNN's bf16 / fp16 tensor-core convolutions take NHWC operands; an NCHW model makes it transpose
activations around every convolution (or pick slower kernels). ``apply`` converts every 4-D parameter
and buffer of the method (the encoder's convolution weights; linear heads are 2-D and untouched) to
``torch.channels_last``; the encoder then lays its input out the same way (``ResNetTaps.stem``), so
activations stay NHWC through the network, and gradients take their weights' layout (autograd's
gradient layout contract), hence the optimizer state too (``zeros_like`` keeps it).

Where it applies: ZeRO 0 with the optimizer stepping the module's own weights (``engine.amp``
autocast, or fp32), converted *after* ``deepspeed.initialize``. Found on CPU: DeepSpeed's set-up
broadcasts every weight as ``p.data.view(torch.uint8)``, which a channels-last tensor refuses; its
bf16 wrapper keeps NCHW fp32 master copies (their moments would not share the weights' strides);
and ZeRO 1/2 make the weights views of flat buffers, which a later conversion would cut loose. The
config refuses ``true`` there in one line; ``auto`` is on for a ResNet on CUDA where it applies
(the GPU default, ZeRO 0 autocast) and off elsewhere (a CPU run keeps its numbers).

A resume may change the layout (``resume_rules``): weights are copied into the model's layout at
load, and ``relayout_optimizer_state`` gives any optimizer state tensor loaded in another layout its
weight's strides, so the elementwise multi-tensor kernels of AdamW pair the right elements.
"""
from __future__ import annotations

import torch
from torch import nn


def problem(engine_cfg, arch: str, cuda: bool | None = None) -> str | None:
    """Why ``engine.channels_last=true`` cannot apply to this run on this machine (one line), or None.
    The config refuses what it can see (``config_pairs``); this adds ``engine.amp=auto`` resolving to
    DeepSpeed's bf16 wrapper (bf16 on CPU, or ZeRO 1/2)."""
    from fastssl.engine import amp

    if engine_cfg.channels_last is not True or resolve(engine_cfg, arch, cuda):
        return None
    return (f"engine.channels_last=true needs ZeRO 0 with the optimizer over the model's own weights "
            f"(engine.amp=autocast, or fp32); this run's bf16 goes through {amp.resolve_amp(engine_cfg, cuda)}; "
            "use engine.channels_last=auto or engine.amp=autocast")


def resolve(engine_cfg, arch: str, cuda: bool | None = None) -> bool:
    """Whether this run lays the encoder out channels-last (``engine.channels_last`` on this machine)."""
    from fastssl.engine import amp
    from fastssl.models.encoder import encoder_family

    cuda = torch.cuda.is_available() if cuda is None else cuda
    fits = (encoder_family(arch) == "resnet" and engine_cfg.zero_stage == 0
            and amp.resolve_amp(engine_cfg, cuda) in (amp.AUTOCAST, amp.NONE))
    if engine_cfg.channels_last == "auto":
        return fits and cuda
    return bool(engine_cfg.channels_last) and fits


def apply(module: nn.Module) -> nn.Module:
    """In place: every 4-D parameter and buffer in channels-last layout (the same Parameter objects)."""
    return module.to(memory_format=torch.channels_last)


def relayout_optimizer_state(optimizer) -> int:
    """Give every state tensor shaped like its parameter the parameter's strides (after a checkpoint
    written in another layout is loaded); returns how many were changed. Looks through DeepSpeed's
    wrappers (``.optimizer``) to the torch optimizer that holds the state."""
    seen, changed = set(), 0
    while optimizer is not None and id(optimizer) not in seen:
        seen.add(id(optimizer))
        if isinstance(optimizer, torch.optim.Optimizer):
            for p, state in optimizer.state.items():
                for key, value in state.items():
                    if isinstance(value, torch.Tensor) and value.shape == p.shape and value.dim() == 4 \
                            and value.stride() != p.stride():
                        state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)
                        changed += 1
        optimizer = getattr(optimizer, "optimizer", None)
    return changed
