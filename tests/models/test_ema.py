"""ema_update_ against the formula applied parameter by parameter."""
import copy

import pytest
import torch
from torch import nn

from fastssl.models.ema import cosine_momentum
from fastssl.models.ema import ema_update_


def net():
    return nn.Sequential(nn.Linear(7, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))


@pytest.mark.parametrize("m", [0.0, 0.5, 0.996, 1.0])
def test_matches_formula(m):
    online, target = net(), net()
    online(torch.randn(9, 7))  # move BatchNorm statistics
    before = copy.deepcopy(target)
    ema_update_(target, online, m)
    for t, t0, o in zip(target.parameters(), before.parameters(), online.parameters()):
        torch.testing.assert_close(t, m * t0 + (1 - m) * o)
    for t, o in zip(target.buffers(), online.buffers()):
        torch.testing.assert_close(t, o)


def test_end_of_schedule_freezes_target_and_bad_momentum_is_refused():
    online, target = net(), net()
    before = copy.deepcopy(target)
    ema_update_(target, online, cosine_momentum(0.99, 1.0))  # the schedule ends at m = 1
    for t, t0 in zip(target.parameters(), before.parameters()):
        assert torch.equal(t, t0)
    with pytest.raises(ValueError, match="momentum"):
        ema_update_(target, online, 1.5)
