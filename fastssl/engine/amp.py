"""How bf16 training reaches DeepSpeed (``engine.amp``): torch.autocast over fp32 weights, or DeepSpeed's bf16.

- ``autocast``: the method keeps fp32 weights; DeepSpeed's ``torch_autocast`` section runs its forward
  under ``torch.autocast(bf16)`` (matmuls, convolutions and attention in bf16; norms, softmax and the
  residual stream in fp32) and steps the configured optimizer, torch's fused AdamW on CUDA, as it is.
  This is the model step ``bench/throughput.py`` times. At ZeRO 0 the loop clips the gradients itself
  with torch's multi-tensor ``clip_grad_norm_`` (DeepSpeed's ZeRO 0 clipping is one norm and one
  multiply per parameter after a host sync).
- ``deepspeed``: DeepSpeed casts the model to bf16 and keeps fp32 master weights in its optimizer
  wrapper. At ZeRO 0 that is its unfused fp16/bf16 wrapper: a per-parameter fp32 copy, update and
  copy-back, and a gradient norm read on the host every step. At ZeRO 1/2 it is the ZeRO optimizer
  over flat fp32 partitions.
- ``auto``: ``autocast`` at ZeRO 0 on CUDA, ``deepspeed`` otherwise (CPU runs and ZeRO 1/2 keep what they
  ran before; notes/gpu.md has the measurements that decide it).

fp32 runs have nothing to cast; fp16 always goes through DeepSpeed's loss-scaling wrapper (the config
refuses ``engine.amp=autocast`` with fp16).
"""
from __future__ import annotations

import torch

AUTOCAST, DEEPSPEED, NONE = "autocast", "deepspeed", "none"


def resolve_precision(precision: str, cuda: bool | None = None) -> str:
    """``engine.precision`` on this machine (``cuda``: on a machine with / without CUDA): ``auto`` is
    bf16 on CUDA, fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if (torch.cuda.is_available() if cuda is None else cuda) else "fp32"
    return precision


def own_weights(engine_cfg, cuda: bool | None = None) -> bool:
    """Whether the optimizer steps the model's own weights (ZeRO 0 in fp32 or under autocast: torch's
    AdamW as it is). Elsewhere DeepSpeed steps an fp32 copy (its bf16 wrapper, the ZeRO partitions),
    and gives a weight without a gradient a zero one instead of skipping it."""
    return engine_cfg.zero_stage == 0 and resolve_amp(engine_cfg, cuda) != DEEPSPEED


def resolve_amp(engine_cfg, cuda: bool | None = None) -> str:
    """``autocast``, ``deepspeed`` or ``none`` (fp32) for an ``EngineConfig``, on this machine (or, with
    ``cuda``, on one with / without CUDA)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    precision = resolve_precision(engine_cfg.precision, cuda)
    if precision == "fp32":
        return NONE
    if engine_cfg.amp != "auto":
        return engine_cfg.amp
    return AUTOCAST if precision == "bf16" and engine_cfg.zero_stage == 0 and cuda else DEEPSPEED


def dtypes(engine_cfg) -> tuple[torch.dtype, torch.dtype]:
    """(the weights' dtype, the dtype matmuls run in): (fp32, bf16) under autocast, (bf16, bf16) under
    DeepSpeed's bf16, (fp32, fp32) in fp32. Inputs are cast to the first; attention backends are
    picked for the second."""
    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_precision(engine_cfg.precision), torch.float32)
    return (torch.float32 if resolve_amp(engine_cfg) == AUTOCAST else compute), compute


def loop_clips(engine_cfg, clip_grad: float | None) -> float | None:
    """The max norm the training loop clips with itself (None: DeepSpeed clips, or nothing does)."""
    return clip_grad if clip_grad is not None and engine_cfg.zero_stage == 0 and resolve_amp(engine_cfg) == AUTOCAST else None


class AutocastForward(torch.nn.Module):
    """``module`` called under torch.autocast: the evaluation's feature pass over an fp32 model runs in
    the training's dtype (the kNN and the linear probe then work on fp32 features, outside it)."""

    def __init__(self, module: torch.nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.module, self.device_type, self.dtype = module, device_type, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.module(x)


def clip_gradients(module: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """Scale the gradients to a global L2 norm of at most ``max_norm`` (the maths of DeepSpeed's
    ``gradient_clipping``: coefficient min(1, max_norm / (norm + 1e-6))) in a few multi-tensor kernels on
    CUDA, no host sync. Called after the gradients are reduced over the ranks (``engine.backward`` at
    the accumulation boundary), before ``engine.step``."""
    grads = [p for p in module.parameters() if p.grad is not None]
    return torch.nn.utils.clip_grad_norm_(grads, max_norm)


def forget_autocast_of_earlier_engines() -> None:
    """DeepSpeed 0.19.8 records that an engine enabled ``torch_autocast`` in a module global that nothing
    clears; a later engine in the same process (benchmark rows, tests) would then take its ZeRO gradient
    buckets from that setting. Each engine built here starts from the state a fresh process has."""
    import deepspeed.runtime.torch_autocast as ds_autocast

    ds_autocast.TORCH_AUTOCAST_INITIALIZED = False
    ds_autocast.TORCH_AUTOCAST_DTYPE = None
