"""MoCo v2's loss takes its queue as unit keys (``info_nce(..., unit_queue=True)``): it holds only keys
that were normalised on the way in, so skipping the per-call normalisation changes nothing but rounding.

Checked on the method itself: after steps whose keys are far from unit length, every queue row is a
unit vector, and the method's loss equals the op's loss that renormalises the queue."""
from __future__ import annotations

import torch

from fastssl import ops
from fastssl.data.batch import Batch
from fastssl.methods.base import StepContext
from fastssl.methods.mocov2 import MoCoV2, MoCoV2Config
from fastssl.models.heads import HeadConfig
from fastssl.models.resnet import ResNetTaps


def test_the_queue_stays_unit_and_the_loss_is_the_renormalising_one():
    torch.manual_seed(3)
    head = HeadConfig(hidden_dim=16, out_dim=8, norm="none")
    method = MoCoV2(MoCoV2Config(head=head, queue_size=12, gather_distributed=False, backend="reference"),
                    ResNetTaps.from_timm("test_resnet", small_stem=True))
    for step in range(4):  # 4 × 6 keys: the 12 slots are overwritten twice
        views = 5.0 * torch.randn(2, 6, 3, 32, 32)  # large inputs: keys far from unit length before the norm
        batch = Batch({"views": views}, torch.zeros(6, dtype=torch.long), torch.arange(6))
        method(batch, StepContext(step, 10, 10, 0))
        method.after_step(StepContext(step, 10, 10, 0))
    keys = method.queue.keys
    torch.testing.assert_close(keys.norm(dim=1), torch.ones(12), atol=1e-6, rtol=0)
    q, k = 3.0 * torch.randn(6, 8), 2.0 * torch.randn(6, 8)
    for backend in ("reference", "triton"):
        got = ops.info_nce(q, k, 0.2, queue=keys, unit_queue=True, backend=backend)
        want = ops.info_nce(q, k, 0.2, queue=keys, backend=backend)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    method.cfg = method.cfg.model_copy(update={"backend": "triton"})
    torch.testing.assert_close(method.loss(q, k, method.queue), ops.info_nce(q, k, 0.2, queue=keys), atol=1e-6, rtol=0)
