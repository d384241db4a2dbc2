"""``engine.compile``: torch.compile of the encoder's block stacks and of the heads, in place, per region.

What is compiled: the block stack of every ``PackedViT`` (online and EMA target) as *one* region
(``PackedViT.compile_blocks``: blocks 0..max_block with their taps in one graph), every other
``PackedBlock`` (a decoder's), every ``ClassAttentionBlock`` (M-MoCo's cross-attention) and every
``MLPHead`` (projectors and predictors), each with ``nn.Module.compile()``. A ViT with gradient
checkpointing keeps one region per block. Everything else (packing the views into one token
tensor, the attention backend's choice and block masks, the losses, the EMA update) stays eager;
the fastssl Triton ops are custom ops (``fastssl/ops/<family>.py``), so a compiled region that calls
one keeps it in its graph.

Why regions and not the whole method (DeepSpeed's ``engine.compile()`` is ``module.compile()`` on
the whole method): a method's forward builds the pack on the host from Python lists of views and
lengths, which Dynamo would trace as guards on every length, and a new guard set is a new compile.
The block stack sees only ``x [T, D]`` plus the attention layout. Why the stack and not each block
(timm's and DINOv3's way, and this module's first version): every compiled call pays a guard check
and the compiled forward / backward wrappers on the host; twelve per encoder call made the M-MoCo
step host-bound on the H200 (8 chunks, ViT-B, B = 64: 31.0 ms wall over 20.0 ms of kernels, the
eager padded batch 26.3). One region per encoder call pays that once. DeepCompile (DeepSpeed's own
compiler passes) needs ZeRO >= 1 and targets its collectives, not this.

Why in place: ``module.compile()`` keeps the module object and its parameter names, so checkpoints
and ``encoder.pt`` have exactly the keys of an eager run (``torch.compile(module)`` would wrap it
and prefix every key with ``_orig_mod.``).

Variable shapes: ``dynamic=None`` (automatic dynamic). The first call compiles for its exact
shapes; when a size later changes (token count T, the lengths of a layout's runs), Dynamo
recompiles once with that size symbolic, and every further value reuses that graph. A different
*number* of runs (a pack of other view kinds) is a new graph, but there are a handful of those per
method, not one per step. ``compile_stats()`` counts the graphs so the trainer can log them and a
test can assert that steps after the first compile nothing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger("fastssl")

# All regions compiled through ``nn.Module.compile`` share the code object of ``Module._call_impl``;
# Dynamo's per-code-object limit (8) would silently send the 9th distinct graph (block train/eval,
# target, heads with their own guards, a second pack structure...) back to eager.
_RECOMPILE_LIMIT = 64


@dataclass(frozen=True)
class CompileStats:
    """Dynamo's process-wide counts: ``graphs`` compiled so far, ``graph_breaks`` met while tracing."""

    graphs: int
    graph_breaks: int


def compile_stats() -> CompileStats:
    from torch._dynamo.utils import counters

    return CompileStats(int(counters["stats"]["unique_graphs"]), int(sum(counters["graph_break"].values())))


def _region_types() -> tuple[type[nn.Module], ...]:
    from fastssl.models.vit.blocks import PackedBlock
    from fastssl.models.vit.cross_attention import ClassAttentionBlock

    try:  # heads carry their pydantic config; a bare GPU machine (bench/attention.py) may lack pydantic
        from fastssl.models.heads import MLPHead
    except ImportError:
        return PackedBlock, ClassAttentionBlock
    return PackedBlock, ClassAttentionBlock, MLPHead


def resolve_attention(method: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Choose every attention backend of ``method`` now (online and EMA-target ViTs, M-MoCo's
    class-attention head each hold a dispatcher): the choice probes and logs, which a tracer cannot."""
    from fastssl.models.vit.attention import AttentionDispatch

    for m in method.modules():
        dispatch = getattr(m, "dispatch", None)
        if isinstance(dispatch, AttentionDispatch):
            dispatch.resolve(device, dtype)


def compile_regions(method: nn.Module, mode: str, device: torch.device, dtype: torch.dtype,
                    backend: str = "inductor") -> list[str]:
    """Compile (lazily: at the first call) each block and head of ``method`` in place; return their names.

    ``mode``: "default" or "max-autotune-no-cudagraphs" (CUDA graphs are left out: the packed
    layouts and EMA targets change buffers between calls). ``device`` / ``dtype``: where and in
    which precision training runs; what attention backends run there is probed now, because the
    probes (small forwards + backwards) must not run under the tracer; the backend of each pack
    and its block mask are decided in ``PackedViT.forward_packed``, before the compiled blocks. ``backend``: torch.compile's
    (tests use "aot_eager", which skips code generation).
    """
    resolve_attention(method, device, dtype)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, _RECOMPILE_LIMIT)
    kwargs = {} if mode == "default" else {"mode": mode}
    from fastssl.models.resnet import ResNetTaps
    from fastssl.models.vit.model import PackedViT

    stacks = [m for m in method.modules() if isinstance(m, PackedViT) and not m.grad_checkpointing]
    in_stack = {id(b) for v in stacks for b in v.blocks}
    names = []
    for name, m in method.named_modules():
        if any(m is v for v in stacks):
            m.compile_blocks(backend=backend, dynamic=None, **kwargs)
            names.append(f"{name}.blocks" if name else "blocks")
        elif isinstance(m, ResNetTaps):
            m.compile_stages(backend=backend, dynamic=None, **kwargs)
            names.append(f"{name}.stages" if name else "stages")
        elif isinstance(m, _region_types()) and id(m) not in in_stack:
            m.compile(backend=backend, dynamic=None, **kwargs)
            names.append(name)
    log.info("engine.compile: %d regions (%s) compile at their first call", len(names), mode)
    return names


class CompileWatch:
    """What the trainer logs with ``engine.compile``: graphs compiled, and how many of them came
    after the first optimizer step (``recompiles``: stays 0 when shapes do not recompile per step)."""

    def __init__(self) -> None:
        self.after_first: int | None = None

    def metrics(self) -> dict[str, float]:
        now = compile_stats()
        if self.after_first is None:
            self.after_first = now.graphs
            log.info("engine.compile: %d graphs after the first step (%d graph breaks)", now.graphs, now.graph_breaks)
        return {"compile_graphs": now.graphs, "recompiles": now.graphs - self.after_first, "graph_breaks": now.graph_breaks}
