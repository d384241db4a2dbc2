"""The κ monitor (``fastssl.methods.parts.vmf_kappa``) against samples from a von Mises–Fisher
distribution of known κ, drawn with Wood's (1994) rejection sampler written here; the sampler itself
is checked against the mean cosine E[w] = A_d(κ) computed by quadrature of the marginal density of
w = μ·x, p(w) ∝ exp(κw)(1 − w²)^((d−3)/2)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fastssl.methods.parts import vmf_kappa


def sample_vmf(mu: np.ndarray, kappa: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """n samples ``[n, d]`` of vMF(mu, kappa) on S^{d−1} by Wood's algorithm."""
    d = mu.shape[0]
    b = (-2.0 * kappa + np.sqrt(4.0 * kappa**2 + (d - 1) ** 2)) / (d - 1)
    x0 = (1.0 - b) / (1.0 + b)
    c = kappa * x0 + (d - 1) * np.log(1.0 - x0**2)
    w = np.empty(n)
    filled = 0
    while filled < n:
        z = rng.beta((d - 1) / 2.0, (d - 1) / 2.0, size=2 * (n - filled))
        cand = (1.0 - (1.0 + b) * z) / (1.0 - (1.0 - b) * z)
        u = rng.uniform(size=cand.shape[0])
        ok = cand[kappa * cand + (d - 1) * np.log(1.0 - x0 * cand) - c >= np.log(u)]
        take = min(ok.shape[0], n - filled)
        w[filled:filled + take] = ok[:take]
        filled += take
    # a uniform direction orthogonal to e1, then the sample around e1, then e1 -> mu (Householder)
    v = rng.standard_normal((n, d - 1))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    x = np.concatenate([w[:, None], np.sqrt(1.0 - w[:, None] ** 2) * v], axis=1)
    e1 = np.zeros(d)
    e1[0] = 1.0
    u_h = e1 - mu
    if np.linalg.norm(u_h) > 1e-12:
        u_h /= np.linalg.norm(u_h)
        x = x - 2.0 * np.outer(x @ u_h, u_h)
    return x


def mean_cosine(kappa: float, d: int) -> float:
    """A_d(κ) = E[w] by quadrature of p(w) ∝ exp(κ(w − 1))(1 − w²)^((d−3)/2) on (−1, 1)."""
    t = np.linspace(-1.0, 1.0, 2_000_001)[1:-1]
    dens = np.exp(kappa * (t - 1.0) + 0.5 * (d - 3) * np.log1p(-t * t))
    return float((t * dens).sum() / dens.sum())


def banerjee(r: float, d: int) -> float:
    return r * (d - r * r) / (1.0 - r * r)


@pytest.mark.parametrize("d,kappa", [(3, 4.0), (16, 40.0), (65, 150.0), (256, 900.0)])
def test_kappa_recovers_the_concentration_of_vmf_samples(d, kappa):
    rng = np.random.default_rng()
    images, n = 3, 6000
    mus = rng.standard_normal((images, d))
    mus /= np.linalg.norm(mus, axis=1, keepdims=True)
    x = np.stack([sample_vmf(mu, kappa, n, rng) for mu in mus], axis=1)  # [n, images, d]
    assert np.allclose(np.linalg.norm(x, axis=-1), 1.0)
    # the sampler: the mean cosine to mu is A_d(kappa); its s.d. over n samples is < 1/sqrt(n)
    a_d = mean_cosine(kappa, d)
    for i in range(images):
        assert abs((x[:, i] @ mus[i]).mean() - a_d) < 4.0 / np.sqrt(n)
    # the estimator: the approximation at the exact A_d, up to sampling noise, and close to kappa
    scale = 7.3 * np.random.default_rng().uniform(0.5, 2.0)  # un-normalised inputs are normalised inside
    got = vmf_kappa(torch.from_numpy(x * scale).float())
    assert got.shape == (images,) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), banerjee(a_d, d), rtol=0.06)
    np.testing.assert_allclose(got.numpy(), kappa, rtol=0.1)


def test_kappa_orders_concentrations_and_rejects_one_sample():
    rng = np.random.default_rng()
    d = 32
    mu = rng.standard_normal(d)
    mu /= np.linalg.norm(mu)
    ks = [vmf_kappa(torch.from_numpy(sample_vmf(mu, k, 8, rng)[:, None])).item() for k in (5.0, 50.0, 500.0)]
    assert ks[0] < ks[1] < ks[2]
    same = torch.randn(1, 5, d).expand(4, 5, d)  # identical chunks: r̄ = 1, a large finite value
    assert torch.isfinite(vmf_kappa(same)).all() and (vmf_kappa(same) > 1e3).all()
    with pytest.raises(ValueError):
        vmf_kappa(torch.randn(1, 5, d))
