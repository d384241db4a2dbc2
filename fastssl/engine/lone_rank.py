"""One data-parallel rank at ZeRO 0: no gradient all-reduce.

DeepSpeed's engine reduces the gradients over the data-parallel ranks at every accumulation
boundary (``engine.backward`` → ``allreduce_gradients`` → ``buffered_allreduce_fallback``): it flattens
them into buckets, all-reduces each bucket and copies the results back into every gradient. On one
GPU there is nothing to reduce, yet the work stays: per step, per parameter tensor, a copy into the
bucket, a view and a copy back (with detaches and slices around them), plus the bucket's own
collective. ``bench/train_host_ops.py`` counts the torch ops this adds to a trainer step on top of the
bare model step; on a GPU whose step is short (MAE, DAC: 64 / 86 ms on the H200) each op is host
time the GPU may wait for.

With one rank at ZeRO 0 the reduction is the identity (a sum over one rank; DeepSpeed's averaging
divides by a world size of 1, its pre-divide factor is 1 unless a user's ``deepspeed`` block sets it,
which then keeps the reduction), so it is switched off through DeepSpeed's own flag,
``engine.enable_backward_allreduce``, the one DeepSpeed clears itself when it runs without a process
group. ZeRO 1 and 2 keep it: their optimizer's reduction also fills its flat fp32 partitions.

ZeRO 1/2 on one GPU partition nothing, yet cost host work per step (the ZeRO optimizer's flat-buffer
copies and per-tensor norms: 1.5-1.9× the bare step's kernel launches and 2-4 host reads, vs 1.02×
and none at ZeRO 0, ``bench/train_host_ops.py``); the shipped ImageNet configs run ZeRO 1 for many
GPUs. ``zero_hint`` says so once at start-up, in a line.
"""
from __future__ import annotations


def skip_lone_allreduce(engine, zero_stage: int, ds_cfg: dict) -> bool:
    """Turn DeepSpeed's gradient all-reduce off when it would reduce over one rank at ZeRO 0; whether it did."""
    if zero_stage != 0 or engine.dp_world_size != 1:
        return False
    if float(ds_cfg.get("gradient_predivide_factor", 1.0)) != 1.0:  # a user's factor: scale as DeepSpeed would
        return False
    engine.enable_backward_allreduce = False
    return True


def zero_hint(zero_stage: int, dp_world_size: int, cuda: bool) -> str | None:
    """The start-up line for a one-GPU run at ZeRO 1/2 (None otherwise: several ranks partition, and
    on CPU the host work is not what bounds a step)."""
    if zero_stage == 0 or dp_world_size != 1 or not cuda:
        return None
    return (f"ZeRO {zero_stage} on one GPU partitions nothing but adds host work to every step "
            f"(DeepSpeed's partition copies and norms); engine.zero_stage=0 takes the shortest step")
