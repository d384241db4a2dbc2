"""Every fastssl custom op (``fastssl::*``, registered in ``fastssl/ops/<family>.py``):

- passes ``torch.library.opcheck`` (schema, fake function, autograd registration and, through
  ``test_aot_dispatch_dynamic``, the backward formula under symbolic shapes);
- runs inside ``torch.compile(fullgraph=True)`` (``aot_eager``: the fake functions and the registered
  autograd, no C++ build; a graph break raises) and gives the values and gradients of its eager door.

A new op gets a line in ``OPS`` (and one in the opcheck tests). The ops' maths is checked against
independent references in each family's own test file; here only the op plumbing is.
"""
from __future__ import annotations

import importlib

import pytest
import torch

import fastssl.ops.contrastive as contrastive_ops
import fastssl.ops.contrastive_doors as contrastive_doors
import fastssl.ops.tokens as token_ops

patchify_ops = importlib.import_module("fastssl.ops.patchify")  # the package's ``patchify`` is the function
DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _opcheck(op, args):
    # test_aot_dispatch_dynamic re-runs the op under symbolic shapes and checks the backward formula
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor",
                                                "test_aot_dispatch_dynamic"))


def test_contrastive_ops_pass_opcheck():
    rows = torch.randn(7, 5, requires_grad=True)
    cols = torch.randn(9, 5, requires_grad=True)
    pos = torch.randint(0, 9, (7,), dtype=torch.int32)
    excl = torch.full((7,), -1, dtype=torch.int32)
    w = torch.rand(7)
    _opcheck(contrastive_doors._rows_op, (rows, cols, pos, excl, w, 0.2, True))
    _opcheck(contrastive_doors._rows_self_op, (rows, pos % 7, excl, None, 0.1, False))


def test_queue_and_unit_ops_pass_opcheck():
    rows = torch.nn.functional.normalize(torch.randn(6, 5), dim=1).requires_grad_()
    queue = torch.nn.functional.normalize(torch.randn(11, 5), dim=1)
    keys = torch.nn.functional.normalize(torch.randn(4, 5), dim=1).requires_grad_()
    pos = torch.tensor([0, 1, 2, 3, 0, 1], dtype=torch.int32)
    _opcheck(contrastive_doors._queue_op, (rows, keys, pos, queue, 0.2))
    x1 = torch.randn(4, 7, requires_grad=True)
    x2 = torch.randn(3, 7, requires_grad=True)
    _opcheck(contrastive_doors._unit_op, (x1, x2))
    _opcheck(contrastive_doors._unit_op, (x1, None))


def test_token_and_patchify_ops_pass_opcheck():
    x = torch.randn(3, 10, 6, requires_grad=True)
    ids = torch.stack([torch.randperm(10)[:4] for _ in range(3)])
    pos = torch.randn(10, 6, requires_grad=True)
    _opcheck(token_ops._gather_op, (x, ids, pos))
    kept = torch.randn(3, 4, 6, requires_grad=True)
    mt = torch.randn(1, 1, 6, requires_grad=True)
    _opcheck(token_ops._scatter_op, (kept, ids, 10, mt, pos))
    imgs = torch.randn(2, 3, 8, 12, requires_grad=True)
    _opcheck(patchify_ops._patchify_op, (imgs, 4))
    keep = torch.stack([torch.randperm(6)[:3] for _ in range(2)])  # 8×12 px, patch 4: 6 patches
    torch.library.opcheck(patchify_ops._patchify_noise_op, (imgs.detach(), 4, torch.rand(2), keep, True, torch.tensor(7)),
                          test_utils=("test_schema", "test_faketensor"))


def _unit(n: int, d: int, grad: bool = True) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, d), dim=1).to(DEV).requires_grad_(grad)


def _rows(a, b):  # fastssl::contrastive_rows (rows and cols two tensors)
    pos = torch.arange(a.shape[0], device=DEV) % b.shape[0]
    return contrastive_ops.triton_contrastive_rows(a, b, pos, torch.full_like(pos, -1), 0.2).mean()


def _rows_self(a):  # fastssl::contrastive_rows_self (rows is cols)
    pos = (torch.arange(a.shape[0], device=DEV) + 1) % a.shape[0]
    excl = torch.arange(a.shape[0], device=DEV)
    return contrastive_ops.triton_contrastive_rows(a, a, pos, excl, 0.1, exclude_pos=True).mean()


def _queue(q, k):  # fastssl::queue_rows
    queue = torch.nn.functional.normalize(torch.arange(40.0, device=DEV).reshape(8, 5).sin(), dim=1)
    return contrastive_ops.triton_queue_rows(q, k, torch.arange(q.shape[0], device=DEV), queue, 0.2).mean()


def _rows_mean(a, b):  # the mean door eagerly; the op and a mean under compile
    pos = torch.arange(a.shape[0], device=DEV) % b.shape[0]
    return 1.3 * contrastive_ops.triton_contrastive_rows(a, b, pos, torch.full_like(pos, -1), 0.2, mean=True)


def _rows_self_mean(a):
    pos = (torch.arange(a.shape[0], device=DEV) + 1) % a.shape[0]
    excl = torch.arange(a.shape[0], device=DEV)
    return 1.3 * contrastive_ops.triton_contrastive_rows(a, a, pos, excl, 0.1, exclude_pos=True, mean=True)


def _queue_mean(q, k):
    queue = torch.nn.functional.normalize(torch.arange(40.0, device=DEV).reshape(8, 5).sin(), dim=1)
    return 1.3 * contrastive_ops.triton_queue_rows(q, k, torch.arange(q.shape[0], device=DEV), queue, 0.2, mean=True)


def _unit_rows(x1, x2):  # fastssl::unit_rows
    return (contrastive_ops.fused_unit_rows(x1, x2) * torch.arange(5.0, device=DEV)).sum()


def _gather_scatter(x, pos):  # fastssl::gather_tokens, fastssl::scatter_tokens
    ids = torch.tensor([[0, 5, 2], [7, 1, 3]], device=DEV)
    kept = token_ops.triton_gather_tokens(x, ids, pos)
    return token_ops.triton_scatter_tokens(kept * 2, ids, 8, pos[0], pos).square().sum()


def _patchify(imgs):  # fastssl::patchify
    return patchify_ops.triton_patchify(imgs, 4).square().sum()


OPS = {
    "contrastive_rows": (_rows, lambda: (_unit(6, 5), _unit(9, 5))),
    "contrastive_rows_self": (_rows_self, lambda: (_unit(7, 5),)),
    "queue_rows": (_queue, lambda: (_unit(6, 5), _unit(6, 5))),
    "contrastive_rows mean": (_rows_mean, lambda: (_unit(6, 5), _unit(9, 5))),
    "contrastive_rows_self mean": (_rows_self_mean, lambda: (_unit(7, 5),)),
    "queue_rows mean": (_queue_mean, lambda: (_unit(6, 5), _unit(6, 5))),
    "unit_rows": (_unit_rows, lambda: (torch.randn(4, 5, device=DEV, requires_grad=True),
                                       torch.randn(3, 5, device=DEV, requires_grad=True))),
    "gather_scatter_tokens": (_gather_scatter, lambda: (torch.randn(2, 8, 6, device=DEV, requires_grad=True),
                                                        torch.randn(8, 6, device=DEV, requires_grad=True))),
    "patchify": (_patchify, lambda: (torch.randn(2, 3, 8, 12, device=DEV, requires_grad=True),)),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_compiled_call_is_one_graph_and_matches_the_eager_door(name):
    fn, make = OPS[name]
    torch.manual_seed(0)
    inputs = make()
    results = []
    for compiled in (False, True):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        call = fn
        if compiled:
            torch._dynamo.reset()
            call = torch.compile(fn, fullgraph=True, backend="aot_eager")
        out = call(*leaves)
        results.append([out.detach()] + list(torch.autograd.grad(out, leaves)))
    for eager, comp in zip(*results):
        torch.testing.assert_close(comp, eager, rtol=1e-6, atol=1e-6)


def test_compiled_patchify_noise_is_one_graph_and_matches_the_eager_call():
    """No autograd: the eager call runs the op's body; the seed comes from torch's RNG in both."""
    imgs, sigma = torch.randn(2, 3, 8, 12, device=DEV), torch.rand(2, device=DEV)
    keep = torch.tensor([[0, 4, 2], [5, 1, 3]], device=DEV)

    def fn(x, s):
        return patchify_ops.triton_patchify_noise(x, 4, s, keep, True)

    torch._dynamo.reset()
    results = []
    for call in (fn, torch.compile(fn, fullgraph=True, backend="aot_eager")):
        torch.manual_seed(5)
        results.append(call(imgs, sigma))
    for eager, comp in zip(*results):
        torch.testing.assert_close(comp, eager, rtol=0, atol=0)
