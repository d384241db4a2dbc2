"""Eager references of every registered method: each step written the way the method's official
PyTorch code writes it (timm's ViT on dense batches, timm's ResNet, ``torch.nn`` heads, losses on full
logits matrices, per-parameter momentum loops), with no fastssl op, kernel or packing.

    ref = build_eager(method)          # a fastssl method built by the registry: same weights
    loss = ref(batch, ctx)             # the same Batch / StepContext the method takes
    ref.after_step(ctx)                # where the official code updates after the optimizer step

Only the benchmark (``bench/methods.py``, ``bench/test_bench_methods.py``) uses them: they are not
on the training path.
"""
from __future__ import annotations

from torch import nn


def build_eager(method: nn.Module) -> nn.Module:
    """The eager reference of ``method`` (a fastssl method instance), holding copies of its weights,
    on its device, in train mode."""
    from bench.eager.masked import EagerMasked
    from bench.eager.masked_image import EagerCAN, EagerDAC, EagerMAE
    from bench.eager.twoview import EagerBYOL, EagerMoCoV2, EagerMoCoV3, EagerSimCLR, EagerSimSiam, EagerSwAV

    name = method.cfg.name
    if getattr(method.cfg, "accel", None) is not None:
        from bench.eager.accel import EagerAccel

        ref = EagerAccel(method)
    else:
        table = {"simclr": EagerSimCLR, "byol": EagerBYOL, "simsiam": EagerSimSiam, "mocov3": EagerMoCoV3,
                 "mmoco": EagerMasked, "mbyol": EagerMasked, "mae": EagerMAE, "can": EagerCAN, "dac": EagerDAC,
                 "mocov2": EagerMoCoV2, "swav": EagerSwAV}
        if name not in table:
            raise KeyError(f"no eager reference for method {name!r}")
        ref = table[name](method)
    device = next(method.parameters()).device
    return ref.to(device).train()


def after_step(ref: nn.Module, ctx) -> None:
    hook = getattr(ref, "after_step", None)
    if hook is not None:
        hook(ctx)
