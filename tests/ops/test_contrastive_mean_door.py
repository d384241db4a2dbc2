"""The kernels' losses take their mean inside their own autograd node (``fastssl.ops.dispatch.mean_door``).

Every contrastive loss returns the mean of a per-row loss. Behind the Triton kernels that mean is
computed in the loss's eager door, and its backward hands the kernels the scalar gradient
expanded to the rows with a 1/M folded into their final scale (no ``MeanBackward`` node, no
division launch per call). Checked here, on odd sizes, fp32 and bf16, with an upstream gradient
other than 1 (so a missing or doubled 1/M shows):
- ``mean=True`` against the per-row path's ``.mean()`` (the custom op's own autograd, as under
  torch.compile) and against the float64 loop references, value and every gradient;
- the losses' graphs hold the door and no ``MeanBackward`` node (on the previous main they did).
"""
from __future__ import annotations

import pytest
import torch
from _contrastive_loop_ref import check_fp32, rows_loop
from _helpers import backend_device, fresh_seed as _seed, rand_rows as _rand

import fastssl.ops.contrastive as C
from fastssl.ops import dcl, info_nce, nt_xent

UPSTREAM = 2.5  # d(outer)/d(loss): a gradient of 1 would hide a scale applied twice or not at all
DEV = backend_device("triton")  # CUDA where there is a GPU, the interpreter on CPU otherwise


def _grads(fn, *inputs):
    """fn(*leaves) scaled by UPSTREAM, its value and the gradient of every leaf that requires one."""
    leaves = [x.detach().clone().requires_grad_(x.requires_grad) for x in inputs]
    out = fn(*leaves)
    (out * UPSTREAM).backward()
    return [out.detach().cpu()] + [x.grad.cpu() for x in leaves if x.requires_grad]


def _unit(x: torch.Tensor, dtype: torch.dtype, grad: bool = True) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1).to(dtype).requires_grad_(grad)


def _dev(*xs: torch.Tensor) -> list:
    return [x.to(DEV) for x in xs]


def _same(name: str, got: list, want: list, dtype: torch.dtype) -> None:
    """The door against the per-row path: the same kernels, so equal up to where 1/M is applied (an
    fp32 rounding, then the gradient's cast)."""
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    for i, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g.float(), w.float(), rtol=tol, atol=tol * w.abs().max().item(), msg=f"{name} output {i}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", ["rows_cols", "self_exclude_pos_weighted"])
def test_mean_door_equals_the_mean_of_the_rows(case, dtype):
    seed = _seed()
    m, c, d, tau = 37, 53, 40, 0.2
    if case == "rows_cols":
        rows, cols = _unit(_rand(m, d), dtype), _unit(_rand(c, d), dtype)
        pos = torch.randint(0, c, (m,), dtype=torch.int32)
        excl = torch.where(torch.rand(m) < 0.5, torch.randint(0, c, (m,), dtype=torch.int32), -1).to(torch.int32)

        def run(mean):
            def fn(r, k):
                out = C.triton_contrastive_rows(r, k, pos.to(DEV), excl.to(DEV), tau, mean=mean)
                return out if mean else out.mean()
            return _grads(fn, *_dev(rows, cols))

        def ref(r, k):
            return rows_loop(r, k, pos, excl, tau).mean()

        ref_out = _grads(ref, rows.double(), cols.double())
    else:  # rows is cols (the symmetric backward), DCLW's weights, the positive excluded
        rows = _unit(_rand(m, d), dtype)
        pos = ((torch.arange(m) + 5) % m).to(torch.int32)
        excl = torch.arange(m, dtype=torch.int32)
        w = torch.rand(m) + 0.5

        def run(mean):
            def fn(r):
                out = C.triton_contrastive_rows(r, r, *_dev(pos, excl), tau, w.to(DEV), exclude_pos=True, mean=mean)
                return out if mean else out.mean()
            return _grads(fn, *_dev(rows))

        def ref(r):
            return rows_loop(r, r, pos, excl, tau, w.double(), exclude_pos=True).mean()

        ref_out = _grads(ref, rows.double())
    door, per_row = run(True), run(False)
    name = f"{case} {dtype} seed={seed}"
    _same(name, door, per_row, dtype)
    if dtype == torch.float32:  # the independent reference, in float64
        for i, (g, r) in enumerate(zip(door, ref_out)):
            check_fp32(f"{name} output {i} vs float64 loop", g, r, scale=1 / tau)


def _queue_loop(rows, keys, queue, tau):
    """The queue op's contract on rows and keys as given (no normalisation), one row at a time:
    mean_a of log(e^(s_pos) + Σ_j e^(rows[a]·queue[j]/τ)) − s_pos, s_pos = rows[a]·keys[a]/τ."""
    out = []
    for a in range(rows.shape[0]):
        s_pos = torch.dot(rows[a], keys[a]) / tau
        out.append(torch.log(torch.exp(s_pos) + torch.exp(queue @ rows[a] / tau).sum()) - s_pos)
    return torch.stack(out).mean()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_queue_mean_door_equals_the_mean_of_the_rows(dtype):
    """MoCo v2's queue op, the keys' gradient included (its O(M·D) path outside the kernels takes the 1/M too)."""
    seed = _seed()
    m, k, d, tau = 19, 131, 24, 0.2
    rows, keys = _unit(_rand(m, d), dtype), _unit(_rand(m, d), dtype)
    queue = _unit(_rand(k, d), dtype, grad=False)
    pos = torch.arange(m, dtype=torch.int32)

    def run(mean):
        def fn(r, kk):
            out = C.triton_queue_rows(r, kk, *_dev(pos, queue), tau, mean=mean)
            return out if mean else out.mean()
        return _grads(fn, *_dev(rows, keys))

    door, per_row = run(True), run(False)
    name = f"queue {dtype} seed={seed}"
    _same(name, door, per_row, dtype)
    if dtype == torch.float32:
        ref = _grads(lambda r, kk: _queue_loop(r, kk, queue.double(), tau), rows.double(), keys.double())
        for i, (g, r) in enumerate(zip(door, ref)):
            check_fp32(f"{name} output {i} vs float64 loop", g, r, scale=1 / tau)


LOSSES = {
    "nt_xent": lambda a, b: nt_xent(a, b, 0.1, backend="triton"),
    "dclw": lambda a, b: dcl(a, b, 0.1, weight_sigma=0.5, backend="triton"),
    "info_nce_chunks": lambda a, b: info_nce(torch.stack([a, 2 * a]), b, 0.2, backend="triton"),
    "info_nce_queue": lambda a, b: info_nce(a, b, 0.2, queue=torch.randn(29, a.shape[1], device=a.device), backend="triton"),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_the_losses_have_no_mean_node_of_their_own(name):
    a, b = (torch.randn(9, 16, device=DEV, requires_grad=True) for _ in range(2))
    loss = LOSSES[name](a, b)
    assert loss.ndim == 0 and loss.dtype == torch.float32
    node = type(loss.grad_fn).__name__  # NT-Xent takes its one-node door (test_contrastive_one_node.py)
    assert node.startswith("MeanDoor") or node.startswith("_TwoViewDoor"), node
    seen, todo = set(), [loss.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        assert "MeanBackward" not in type(node).__name__, f"{name}: a MeanBackward node in the graph"
        todo.extend(nxt for nxt, _ in node.next_functions)
    loss.backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()
