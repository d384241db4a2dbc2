"""Every contrastive method's step through the Triton kernels, eagerly, equals its step through the
eager reference: the loss and every parameter gradient.

The ops' tests check each loss alone; this runs the paths a training step takes (the losses as one
autograd node each, MoCo v2's queue, M-MoCo's chunks, MoCo v3's symmetrised pair) inside the methods,
with the methods' default ``gather_distributed=True`` on one process (what a one-GPU run has), so a
path that only a method reaches is covered too. timm's test models at 16 px (the kernels run in the
interpreter on CPU, on CUDA where there is a GPU: the method stays on CPU here, so the interpreter).
"""
from __future__ import annotations

import pytest
import torch
from _helpers import tiny_method, two_view_batch

from fastssl.methods.base import StepContext

HEAD = {"hidden_dim": 32, "out_dim": 16}
METHODS = {  # name -> (method fields, arch)
    "simclr_ntxent": ({"name": "simclr", "loss": "nt_xent", "head": HEAD}, "test_vit"),
    "simclr_dclw": ({"name": "simclr", "loss": "dclw", "head": HEAD}, "test_vit"),
    "mocov3": ({"name": "mocov3", "projector": HEAD, "predictor": HEAD}, "test_vit"),
    "mocov2": ({"name": "mocov2", "head": HEAD, "queue_size": 12}, "test_resnet"),
    "mmoco": ({"name": "mmoco", "projector": HEAD, "predictor": HEAD}, "test_vit"),
}


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU method, kernels in the interpreter")
@pytest.mark.parametrize("name", sorted(METHODS))
def test_kernel_step_equals_reference_step(name, tmp_path, monkeypatch):
    import fastssl.ops.contrastive as C

    one_node = []  # the losses' one-node doors, as the methods reach them
    for fn in ("two_view_node", "query_node"):
        real = getattr(C, fn)
        monkeypatch.setattr(C, fn, lambda *a, _real=real, **k: one_node.append(1) or _real(*a, **k))
    fields, arch = METHODS[name]
    built = {}
    for backend in ("reference", "triton"):
        built[backend] = tiny_method(tmp_path / backend, {**fields, "backend": backend}, arch=arch, batch_size=6)
    built["triton"].load_state_dict(built["reference"].state_dict())
    results = {}
    for backend, method in built.items():
        for step in range(2):  # MoCo v2: the second step's loss reads the keys the first enqueued
            ctx = StepContext(step, 10, 100, seed=0)
            method.zero_grad(set_to_none=True)
            out = method(two_view_batch(6, seed=step), ctx)
            out.loss.backward()
            if hasattr(method, "after_step"):
                method.after_step(ctx)
        results[backend] = (out.loss.detach(), {n: p.grad for n, p in method.named_parameters() if p.grad is not None})
    assert one_node, f"{name}: the kernel step never took a one-node loss"
    (loss, grads), (want_loss, want_grads) = results["triton"], results["reference"]
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-5)
    assert grads.keys() == want_grads.keys() and grads
    for k, want in want_grads.items():
        err, scale = (grads[k] - want).abs().max().item(), want.abs().max().item()
        assert err <= 1e-4 * scale + 1e-6, f"{name} {k}: max |got - want| = {err:.3g}, max |want| = {scale:.3g}"
