"""engine.compile and the Triton ops as custom ops, on CPU (the Triton kernels run in the interpreter).

- a whole method step with ``backend: triton`` compiles with ``fullgraph=True``: no graph break;
  its loss and gradients equal the eager step with the reference loss (independent maths);
- ``compile_regions`` (Inductor, the trainer's path): losses equal eager for a few SGD steps,
  state_dict keys and shapes unchanged (no ``_orig_mod.``), nothing recompiled after the first step,
  and a changing batch size recompiles once, not every step.
Kept tiny (timm's test_vit at 16 px / patch 4): compile time dominates on 2 shared cores.
"""
from __future__ import annotations

import pytest
import torch
from _helpers import HostWaits, tiny_method, two_view_batch

from fastssl.engine.compile import CompileWatch, compile_regions, compile_stats
from fastssl.eval.export import encoder_state_dict
from fastssl.methods.base import StepContext

HEAD = {"hidden_dim": 32, "out_dim": 16}
METHODS = {
    "simclr": {"head": HEAD, "gather_distributed": False},  # dcl: rows and cols are one tensor
    "mocov3": {"projector": HEAD, "predictor": HEAD, "gather_distributed": False},  # info_nce: keys without grad
}


def tiny(name: str, tmp_path, **fields):
    return tiny_method(tmp_path, {"name": name, **METHODS[name], **fields})


def batch_of(b: int, seed: int):
    return two_view_batch(b, seed)


def _grads(m) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_step_with_triton_ops_has_no_graph_break(name, tmp_path):
    """fullgraph=True raises at the first graph break; the Triton ops must be single graph nodes."""
    ref = tiny(name, tmp_path, backend="reference")
    tri = tiny(name, tmp_path, backend="triton")
    tri.load_state_dict(ref.state_dict())
    batch, ctx = batch_of(6, seed=1), StepContext(0, 10, 100, seed=0)
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    compiled = torch.compile(tri, fullgraph=True, backend="aot_eager")  # fake impls + registered autograd, no C++ build
    out = compiled(batch, ctx)
    out.loss.backward()
    assert sum(counters["graph_break"].values()) == 0
    assert counters["stats"]["unique_graphs"] == 1
    want = ref(batch, ctx)
    want.loss.backward()
    torch.testing.assert_close(out.loss, want.loss, rtol=1e-5, atol=1e-5)
    got_g, want_g = _grads(tri), _grads(ref)
    assert got_g.keys() == want_g.keys() and got_g
    for k in want_g:
        # Scale-aware bound per tensor: fp32 rounding through six blocks of backward is of the order of
        # the tensor's largest entries, not of each entry (an elementwise rtol failed on one small bias
        # entry, 0.022 ± 1.8e-5, on another x86 CPU with the same code).
        err, scale = (got_g[k] - want_g[k]).abs().max().item(), want_g[k].abs().max().item()
        assert err <= 1e-4 * scale + 1e-6, f"{k}: max |got - want| = {err:.3g}, max |want| = {scale:.3g}"


def train_side_by_side(eager, comp, first_seed: int, steps: int = 3) -> dict:
    """``steps`` optimizer steps of the eager and the compiled method on the same batches, their losses
    equal at every step; returns the compile counters after the last. SGD, not AdamW: Adam's first steps
    move every weight by ~lr·sign(grad), so rounding-level gradient differences where a gradient is ~0
    would become lr-sized weight differences (seen: 6e-4 in the loss)."""
    opts = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (eager, comp)]
    watch = CompileWatch()
    for step in range(steps):
        batch, ctx = batch_of(6, seed=first_seed + step), StepContext(step, 10, 100, seed=0)
        losses = []
        for m, opt in zip((eager, comp), opts):
            loss = m(batch, ctx).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            if hasattr(m, "after_step"):  # EMA targets, queues
                m.after_step(ctx)
            losses.append(loss.detach())
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-4)
        info = watch.metrics()
    return info


def test_compiled_regions_train_like_eager_and_keep_their_names(tmp_path):
    eager = tiny("simclr", tmp_path, backend="reference")
    comp = tiny("simclr", tmp_path, backend="reference")
    comp.load_state_dict(eager.state_dict())
    names_before = {k: tuple(v.shape) for k, v in comp.state_dict().items()}
    enc_before = set(encoder_state_dict(comp.encoder))
    torch._dynamo.reset()
    regions = compile_regions(comp, "default", torch.device("cpu"), torch.float32)
    assert "encoder.blocks" in regions and "projector" in regions  # the block stack is one region
    assert not any(r.startswith("encoder.blocks.") for r in regions)
    info = train_side_by_side(eager, comp, first_seed=10)
    assert info["recompiles"] == 0 and info["graph_breaks"] == 0  # steps 2 and 3 compiled nothing
    # the block stack is one graph: with the head, 2 graphs (train mode)
    assert info["compile_graphs"] <= 3, info
    assert {k: tuple(v.shape) for k, v in comp.state_dict().items()} == names_before
    assert not any("_orig_mod" in k for k in comp.state_dict())
    assert set(encoder_state_dict(comp.encoder)) == enc_before


def test_a_changing_batch_size_recompiles_once_not_every_step(tmp_path):
    method = tiny("simclr", tmp_path, backend="reference")
    torch._dynamo.reset()
    compile_regions(method, "default", torch.device("cpu"), torch.float32, backend="aot_eager")
    graphs = []
    for step, b in enumerate((6, 5, 4, 3, 7)):
        method(batch_of(b, seed=step), StepContext(step, 10, 100, seed=0)).loss.backward()
        graphs.append(compile_stats().graphs)
    # B=6 compiles static graphs; B=5 recompiles them with the token count symbolic; B=4, 3, 7 reuse those.
    assert graphs[2:] == [graphs[1]] * 3, graphs


# ---------------------------------------------------------------- host syncs, without a GPU
# The first GPU run failed before its first step: ``pin_memory`` of the packed offsets inside the
# compiled region (``aten._pin_memory`` has no fake kernel, so Dynamo cannot trace it); the CPU tests
# never took that branch. Two checks that need no GPU:
# - the layout (cu_seqlens, token -> sequence ids, the mask) is built on *fake* CUDA tensors, as
#   Dynamo builds it while tracing on a GPU: today's main fails here with the GPU's error;
# - a whole packed forward + backward of every view kind (class attention and the MAE decoder
#   included) runs on the meta device (an accelerator without data: slicing works there, which fake
#   CUDA does not allow on a CPU-only torch) under a dispatch mode (`_helpers.HostWaits`) that records every op that makes
#   the host wait or copies host memory to the device: offsets computed on the host and copied
#   over (main's route on any device) show up as a cpu -> meta copy.
def test_layouts_build_on_fake_cuda_without_host_copies():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from fastssl.models.vit.layout import AttnLayout

    with FakeTensorMode():
        dev = torch.device("cuda")
        syncs = HostWaits(non_blocking_ok=False)
        with syncs:
            lay = AttnLayout.build((197,) * 128 + (37,) * 384, None, dev)  # multi-crop: 2 × 197 + 6 × 37, B = 64
            cross = AttnLayout.build((1,) * 5, (26, 26, 25, 25, 197), dev)  # class attention
            mask = cross.block_mask  # built from token -> sequence ids on the device
        assert lay.cu_q.device.type == "cuda" and lay.cu_q.shape == (513,) and lay.cu_q.dtype == torch.int32
        assert cross.cu_k.shape == (6,) and mask.shape == (5, 299) and mask.device.type == "cuda"
    assert syncs.seen == []


def _on_meta(module: torch.nn.Module) -> torch.nn.Module:
    return module.to(device="meta", dtype=torch.bfloat16)


@pytest.mark.parametrize("backend", ["sdpa_grouped", "sdpa_mask", "varlen"])
def test_packed_step_on_a_device_has_no_host_sync_or_host_copy(backend):
    from fastssl.models import ChunkedView, ImageView, MaskedView, PackedViT
    from fastssl.models.vit.cross_attention import ClassAttentionHead
    from fastssl.models.decoder import DecoderConfig, MaskedDecoder

    torch.manual_seed(0)
    vit = _on_meta(PackedViT(img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=2, drop_path_rate=0.1,
                             attn_backend=backend))
    head = _on_meta(ClassAttentionHead(24, 2, attn_backend=backend))
    dec = _on_meta(MaskedDecoder(24, (4, 4), 4, 3, DecoderConfig(embed_dim=16, depth=1, num_heads=2), attn_backend=backend))
    for m in (vit, head, dec):
        m.dispatch.resolve(torch.device("meta"), torch.bfloat16)  # before the step, as compile_regions does
    img = lambda s: torch.randn(3, 3, s, s, device="meta", dtype=torch.bfloat16)  # noqa: E731
    ids = torch.randn(3, 16, device="meta").argsort(dim=1)[:, :5]
    views = [ImageView(img(16)), ImageView(img(8)), MaskedView(img(16), ids),
             ChunkedView(img(16), n_chunks=3), ChunkedView(img(16), n_chunks=4, equal=True)]
    syncs = HostWaits(non_blocking_ok=False)
    with syncs:
        out = vit.encode(views, taps=(0,))
        cls = head(out.hidden, out.pack)
        pred, _ = dec(out[2].final.tokens.view(3, 5, 24), out[2].final.cls, ids, backend="reference")
        loss = out.hidden.float().square().mean() + cls.float().mean() + pred.float().mean()
        loss.backward()
    assert syncs.seen == []


def _tiny_resnet(name: str, tmp_path):
    method_cfg = {"mocov2": {"head": HEAD, "queue_size": 12, "gather_distributed": False}}[name]
    return tiny_method(tmp_path, {"name": name, **method_cfg}, arch="test_resnet", batch_size=6)


def test_a_resnet_compiles_its_stem_and_stages_as_one_region_and_trains_like_eager(tmp_path):
    """engine.compile on a ResNet method: the encoder's stem + stages are one region (and the EMA key
    encoder's), names and losses as eager; before, a ResNet encoder was not compiled at all."""
    eager = _tiny_resnet("mocov2", tmp_path)
    comp = _tiny_resnet("mocov2", tmp_path)
    comp.load_state_dict(eager.state_dict())
    names_before = {k: tuple(v.shape) for k, v in comp.state_dict().items()}
    torch._dynamo.reset()
    regions = compile_regions(comp, "default", torch.device("cpu"), torch.float32, backend="aot_eager")
    assert "encoder.stages" in regions and "projector" in regions
    assert sum(r.endswith(".stages") for r in regions) == 2  # the online encoder and the EMA key encoder
    info = train_side_by_side(eager, comp, first_seed=20)
    assert info["recompiles"] == 0 and info["graph_breaks"] == 0
    assert info["compile_graphs"] >= 1
    assert {k: tuple(v.shape) for k, v in comp.state_dict().items()} == names_before
    assert not any("_orig_mod" in k for k in comp.state_dict())
