"""The one backend decision every op family shares (fastssl.ops.dispatch)."""
import importlib

import pytest
import torch

from fastssl.ops.dispatch import Backend, use_triton

# import_module: ``fastssl.ops.patchify`` as an attribute is the function the package re-exports
contrastive_ops = importlib.import_module("fastssl.ops.contrastive")
patchify_ops = importlib.import_module("fastssl.ops.patchify")
token_ops = importlib.import_module("fastssl.ops.tokens")


@pytest.mark.parametrize("backend,device,expected", [
    ("auto", "cpu", False), ("auto", "cuda", True), ("reference", "cuda", False),
    ("reference", "cpu", False), ("triton", "cpu", True), ("triton", "cuda", True),
])
def test_decision_table(backend, device, expected):
    assert use_triton(backend, torch.device(device)) is expected


@pytest.mark.parametrize("bad", ["cuda", "Triton", "", None])
def test_rejects_unknown_backend(bad):
    with pytest.raises(ValueError):
        use_triton(bad, torch.device("cpu"))


def test_every_op_family_uses_it():
    """One Backend type and one decision: no module keeps its own copy."""
    for module in (contrastive_ops, token_ops, patchify_ops):
        assert module.Backend is Backend
        assert module.use_triton is use_triton


def test_ops_route_through_it(monkeypatch):
    """Forcing the decision to 'reference' makes backend='triton' run the reference (the ops ask it)."""
    seen = []

    def spy(backend, device):
        seen.append(backend)
        return False

    for module in (contrastive_ops, token_ops, patchify_ops):
        monkeypatch.setattr(module, "use_triton", spy)
    z = torch.randn(4, 8)
    contrastive_ops.nt_xent(z, torch.randn(4, 8), backend="triton")
    x = torch.randn(2, 4, 8)
    ids = torch.tensor([[0, 2], [1, 3]])
    token_ops.gather_tokens(x, ids, backend="triton")
    patchify_ops.patchify(torch.randn(1, 3, 8, 8), 4, backend="triton")
    assert seen == ["triton"] * 3
