"""KeyQueue on one process: FIFO ring order, pointer wrap, checkpoint round trip, dtype casts, errors.
(The order of keys across 2 ranks is tested in tests/ops/test_queue_distributed.py.)"""
from __future__ import annotations

import pytest
import torch

from fastssl.models.queue import KeyQueue


def test_starts_as_the_same_random_unit_keys_for_a_seed():
    a, b, c = KeyQueue(10, 6, seed=1), KeyQueue(10, 6, seed=1), KeyQueue(10, 6, seed=2)
    assert a.keys.shape == (10, 6)
    torch.testing.assert_close(a.keys.norm(dim=1), torch.ones(10))
    assert torch.equal(a.keys, b.keys) and not torch.equal(a.keys, c.keys)
    assert int(a.ptr) == 0 and int(a.filled) == 0 and not a.full()


def test_fifo_ring_order():
    """Batch t goes to slots [t·B, (t+1)·B) mod K: after K/B batches the oldest is overwritten first."""
    size, batch, steps = 8, 2, 7
    queue = KeyQueue(size, 3)
    written = {}
    for step in range(steps):
        keys = torch.arange(batch * 3, dtype=torch.float32).reshape(batch, 3) + 100 * step
        queue.enqueue(keys)
        for i in range(batch):
            written[(step * batch + i) % size] = keys[i]
        assert int(queue.ptr) == (step + 1) * batch % size
        assert int(queue.filled) == min((step + 1) * batch, size)
    for slot, key in written.items():
        assert torch.equal(queue.keys[slot], key)
    assert queue.full()
    # the last K/B = 4 batches are exactly what the queue holds
    assert sorted(queue.keys[:, 0].tolist()) == sorted(100.0 * s + 3 * i for s in range(3, 7) for i in range(batch))


def test_checkpoint_round_trip_resumes_the_ring():
    queue = KeyQueue(6, 4)
    for step in range(2):
        queue.enqueue(torch.full((3, 4), float(step)))
    state = {k: v.clone() for k, v in queue.state_dict().items()}
    assert set(state) == {"keys", "ptr", "filled"}
    resumed = KeyQueue(6, 4, seed=99)
    resumed.load_state_dict(state)
    for q in (queue, resumed):
        q.enqueue(torch.full((3, 4), 7.0))
    assert torch.equal(queue.keys, resumed.keys) and int(resumed.ptr) == int(queue.ptr) == 3


def test_bf16_module_cast_keeps_the_pointer_integer():
    queue = KeyQueue(4, 8).to(torch.bfloat16)
    assert queue.keys.dtype == torch.bfloat16 and queue.ptr.dtype == torch.long
    queue.enqueue(torch.randn(2, 8))  # fp32 keys into a bf16 queue
    assert int(queue.ptr) == 2


def test_keys_take_no_gradient():
    queue = KeyQueue(4, 2)
    k = torch.randn(2, 2, requires_grad=True)
    queue.enqueue(k * 2)
    assert not queue.keys.requires_grad


def test_errors():
    with pytest.raises(ValueError, match="multiple of the global batch"):
        KeyQueue(10, 4).enqueue(torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"keys must be \[n, 4\]"):
        KeyQueue(8, 4).enqueue(torch.randn(2, 5))
    with pytest.raises(ValueError, match=">= 1"):
        KeyQueue(0, 4)
