"""Masked MoCo / Masked BYOL: chunking, n = 1 = MoCo v3 / BYOL, the packed chunked forward against
one forward per chunk (outputs and gradients), spherical-mean keys and the chunk-averaged losses
against independent references, the κ metrics."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_method_losses import byol_ref, mocov3_ref  # noqa: E402

from fastssl.data.batch import Batch  # noqa: E402
from fastssl.methods.byol import BYOL, BYOLConfig  # noqa: E402
from fastssl.methods.masked import global_permutations  # noqa: E402
from fastssl.methods.mbyol import MBYOL, MBYOLConfig  # noqa: E402
from fastssl.methods.mmoco import MMoCo, MMoCoConfig  # noqa: E402
from fastssl.methods.base import StepContext  # noqa: E402
from fastssl.methods.mocov3 import MoCoV3, MoCoV3Config  # noqa: E402
from fastssl.models import ChunkedView, MaskedView  # noqa: E402
from fastssl.models.vit.chunks import chunk_sizes  # noqa: E402
from fastssl.models.encoder import build_vit  # noqa: E402

IMG, PATCH = 20, 4  # a 5×5 grid: 25 patches, so n = 4 gives unequal chunks (7, 6, 6, 6)
N_PATCHES = (IMG // PATCH) ** 2


def heads(norm: str, p_layers: int = 3, last: bool = True) -> dict:
    return {"projector": {"hidden_dim": 24, "out_dim": 12, "num_layers": p_layers, "norm": norm, "last_norm": last},
            "predictor": {"hidden_dim": 20, "out_dim": 12, "num_layers": 2, "norm": norm}}


def encoder(seed: int = 0):
    torch.manual_seed(seed)
    return build_vit("test_vit", img_size=IMG, patch_size=PATCH)


def batch(b: int, dtype=torch.float32) -> Batch:
    return Batch({"views": torch.randn(2, b, 3, IMG, IMG, dtype=dtype)}, torch.zeros(b, dtype=torch.long), torch.arange(b))


def encoder_grads(method) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}


# ------------------------------------------------------------------------------------ chunking
@pytest.mark.parametrize("n", [1, 4, 7, 25])
def test_chunks_cover_every_patch_once_per_image(n):
    b = 3
    gen = torch.Generator().manual_seed(torch.seed() & 0xFFFF)
    perm = global_permutations(gen, 2, b, N_PATCHES, torch.device("cpu"))
    assert perm.shape == (2 * b, N_PATCHES)
    assert torch.equal(perm.sort(dim=1).values, torch.arange(N_PATCHES).expand(2 * b, -1))
    vit = encoder()
    out = vit.encode([ChunkedView(torch.randn(2 * b, 3, IMG, IMG), n_chunks=n, perm=perm)])[0]
    assert out.cls.shape == (n, 2 * b, vit.embed_dim)
    sizes = chunk_sizes(N_PATCHES, n)
    per_seq = torch.split(out.patch_ids, list(out.final.seqlens))
    assert sorted(out.final.seqlens) == sorted(s for s in sizes for _ in range(2 * b))
    for img in range(2 * b):
        ids = torch.cat([ids for ids, owner in zip(per_seq, out.owner.tolist()) if owner == img])
        assert torch.equal(ids.sort().values, torch.arange(N_PATCHES)), img


# ------------------------------------------------------------------------------------ n = 1
@pytest.mark.parametrize("pair", ["mocov3", "byol"])
def test_one_chunk_equals_the_unmasked_method(pair):
    """n = m = 1 with the same heads and weights: the same loss and the same gradients."""
    if pair == "mocov3":
        h = heads("batchnorm")
        base = MoCoV3(MoCoV3Config(backend="reference", gather_distributed=False, **h), encoder())
        masked = MMoCo(MMoCoConfig(n_chunks=1, backend="reference", gather_distributed=False, **h), encoder(1))
    else:
        h = heads("batchnorm", p_layers=2, last=False)  # BYOL's own heads
        base = BYOL(BYOLConfig(**h), encoder())
        masked = MBYOL(MBYOLConfig(n_chunks=1, **h), encoder(1))
    masked.load_state_dict(base.state_dict(), strict=True)
    data, ctx = batch(5), StepContext(3, 10, 100, seed=1)
    a, b = base(data, ctx), masked(data, ctx)
    torch.testing.assert_close(b.loss, a.loss, rtol=1e-6, atol=1e-7)
    a.loss.backward()
    b.loss.backward()
    ga, gb = encoder_grads(base), encoder_grads(masked)
    assert ga.keys() == gb.keys() and len(ga) > 20
    for name in ga:
        torch.testing.assert_close(gb[name], ga[name], rtol=1e-5, atol=1e-7, msg=name)
    assert "kappa_rep" not in b.metrics  # one chunk per image: no concentration to estimate


# ------------------------------------------------------------------------------------ packed vs separate
def chunk_ids(perm: torch.Tensor, n: int) -> list[torch.Tensor]:
    """The patch ids of chunk j of every image: contiguous slices of the shuffled order."""
    out, start = [], 0
    for size in chunk_sizes(perm.shape[1], n):
        out.append(perm[:, start:start + size])
        start += size
    return out


def separate_branch(vit, ca, proj, pred, images, perm, n):
    """Reference: every chunk of the batch in its own encoder call (a masked view keeping that chunk's
    patches), then the class attention on that call's pack and the heads (LayerNorm: row-wise)."""
    qs, zs, reps = [], [], []
    for ids in chunk_ids(perm, n):
        enc = vit.encode([MaskedView(images, ids)])
        cls = enc[0].cls if ca is None else ca(enc.hidden, enc.pack)
        z = proj(cls)
        zs.append(z)
        reps.append(enc[0].mean)
        if pred is not None:
            qs.append(pred(z))
    return (torch.stack(qs) if qs else None), torch.stack(zs), torch.stack(reps)


@pytest.mark.parametrize("cross_attention", [False, True])
def test_packed_chunks_equal_one_forward_per_chunk(cross_attention):
    b, n = 3, 4
    method = MMoCo(MMoCoConfig(n_chunks=n, cross_attention=cross_attention, backend="reference",
                               gather_distributed=False, **heads("layernorm")), encoder()).double()
    images = torch.randn(2 * b, 3, IMG, IMG, dtype=torch.float64)
    perm = global_permutations(torch.Generator().manual_seed(7), 2, b, N_PATCHES, torch.device("cpu"))
    weight = torch.randn(n, 2 * b, 12, dtype=torch.float64)
    q, z, rep = method.queries(images, perm)
    (q * weight).sum().backward()
    got = encoder_grads(method)
    method.zero_grad(set_to_none=True)
    q_ref, z_ref, rep_ref = separate_branch(method.encoder, method.cross_attention, method.projector,
                                            method.predictor, images, perm, n)
    (q_ref * weight).sum().backward()
    want = encoder_grads(method)
    for a, e in ((q, q_ref), (z, z_ref), (rep, rep_ref)):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)
    assert got.keys() == want.keys()
    assert any(k.startswith("cross_attention.") for k in got) == cross_attention
    for name in got:
        torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("m,cross_attention", [(2, False), (3, True)])
def test_target_keys_are_the_spherical_mean_of_separate_chunk_keys(m, cross_attention):
    b = 3
    method = MBYOL(MBYOLConfig(n_chunks=2, target_chunks=m, cross_attention=cross_attention,
                               **heads("layernorm")), encoder()).double()
    with torch.no_grad():  # a target that differs from the online network
        for p in method.target.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    images = torch.randn(2 * b, 3, IMG, IMG, dtype=torch.float64)
    perm = global_permutations(torch.Generator().manual_seed(3), 2, b, N_PATCHES, torch.device("cpu"))
    got = method.keys(images, perm)
    net = method.target.net
    with torch.no_grad():
        _, keys, _ = separate_branch(net[0], net[1] if cross_attention else None, net[-1], None, images, perm, m)
    assert got.shape == (2 * b, 12) and not got.requires_grad
    for i in range(2 * b):  # eq. 4 with unit chunk keys, written out per image
        total = [0.0] * keys.shape[-1]
        for j in range(m):
            row = keys[j, i].tolist()
            norm = math.sqrt(sum(v * v for v in row))
            total = [t + v / norm for t, v in zip(total, row)]
        norm = math.sqrt(sum(t * t for t in total))
        torch.testing.assert_close(got[i], torch.tensor([t / norm for t in total], dtype=torch.float64), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------ chunk-averaged losses
@pytest.mark.parametrize("n,b,d", [(3, 5, 7), (8, 2, 16)])
def test_losses_average_over_the_chunk_queries(n, b, d):
    """Eq. 3: (1/n) Σ_i L(q_i, k), with L the MoCo v3 loop reference and BYOL's explicit distance."""
    q = torch.randn(n, 2 * b, d, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2 * b, d, dtype=torch.float64)
    tau = 0.2
    moco = MMoCo.__new__(MMoCo)  # only .loss and .cfg are used
    torch.nn.Module.__init__(moco)
    moco.cfg = MMoCoConfig(temperature=tau, backend="reference", gather_distributed=False)
    got = moco.loss(q, k)
    want = sum(mocov3_ref(q[i].detach(), k, tau) for i in range(n)) / n
    assert got.item() == pytest.approx(want, rel=1e-6)
    got.backward()
    eps = 1e-6
    for c, i, j in [(0, 0, 0), (n - 1, 2 * b - 1, d - 1), (n // 2, b, d // 2)]:
        qp, qm = q.detach().clone(), q.detach().clone()
        qp[c, i, j] += eps
        qm[c, i, j] -= eps
        fd = sum(mocov3_ref(qp[t], k, tau) - mocov3_ref(qm[t], k, tau) for t in range(n)) / n / (2 * eps)
        assert q.grad[c, i, j].item() == pytest.approx(fd, rel=1e-4, abs=1e-7)

    p = q.detach().clone().requires_grad_(True)
    got = MBYOL.loss(None, p, k)
    got.backward()
    p_ref = p.detach().clone().requires_grad_(True)
    want = sum(byol_ref(p_ref[i], k) for i in range(n)) / n
    want.backward()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------------ step + κ metrics
@pytest.mark.parametrize("cls,cfg", [(MMoCo, MMoCoConfig(n_chunks=4, target_chunks=2, backend="reference", gather_distributed=False, **heads("layernorm"))),
                                     (MBYOL, MBYOLConfig(n_chunks=5, cross_attention=True, **heads("batchnorm")))])
def test_step_logs_kappa_and_is_reproducible(cls, cfg):
    method = cls(cfg, encoder())
    data, ctx = batch(4), StepContext(2, 10, 100, seed=5)
    out = method(data, ctx)
    assert {"kappa_rep", "kappa_proj", "kappa_pred", "pos_cosine", "z_std"} <= out.metrics.keys()
    for k, v in out.metrics.items():
        assert v.ndim == 0 and not v.requires_grad and torch.isfinite(v) and v > 0, k
    # the same step context draws the same chunks (exact resume); the next step other ones
    assert torch.equal(method(data, ctx).loss, out.loss)
    assert not torch.equal(method(data, StepContext(3, 10, 100, seed=5)).loss, out.loss)
    method.after_step(ctx)  # the EMA target follows encoder [+ class attention] + projector
    assert len(method.target.master) == sum(1 for m in method.online() for _ in m.parameters())
