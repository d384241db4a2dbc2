"""Every method's step runs under the dtypes CUDA's bf16 autocast gives, with each contrastive backend.

On the GPU the trainer runs the forward under ``torch.autocast("cuda", bf16)`` (``engine.amp``), whose
op lists differ from CPU autocast's: LayerNorm, softmax, norms, sums and the losses come out fp32 there,
bf16 here. M-MoCo passed every CPU test and raised a TypeError on CUDA (fp32 keys out of a LayerNorm
met bf16 queries in the kernels). ``tests/_cuda_autocast.cuda_policy`` makes CPU autocast cast as CUDA's
does, so each method's forward, backward and ``after_step`` run here with the GPU's dtype flow: through
the reference ops and through the Triton kernels (interpreted), as ``auto`` picks one or the other by size
on the GPU. Checked: the step runs, the loss is finite, every weight gets an fp32 gradient.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from _cuda_autocast import cuda_policy

from bench.train_plan import tiny_overrides
from fastssl.config import load_config
from fastssl.data.synthetic import SyntheticLoader
from fastssl.methods.base import AfterStep, StepContext
from fastssl.methods.registry import build_method, method_names

CASES = [(f"configs/imagenet/{m}.yaml", tiny_overrides(m)) for m in method_names()] + [
    (f"configs/fmnist/{m}_accel.yaml", ["data.image_size=16", "model.arch=test_resnet"]) for m in ("simclr", "mocov2", "swav")]
IDS = [c.split("/")[-1].removesuffix(".yaml") for c, _ in CASES]


def _config(config: str, overrides: list[str], backend: str):
    base = ["data.synthetic=true", "eval.enabled=false", "optim.batch_size=4", *overrides]
    cfg = load_config(config, base)
    if not hasattr(cfg.method, "backend"):
        return cfg if backend == "reference" else None  # no contrastive op: one case is enough
    return load_config(config, [*base, f"method.backend={backend}"])


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("config, overrides", CASES, ids=IDS)
def test_a_step_under_cuda_autocast_dtypes(config, overrides, backend):
    cfg = _config(config, overrides, backend)
    if cfg is None:
        pytest.skip("the method has no backend switch (its reference case covers it)")
    torch.manual_seed(0)
    method = build_method(cfg).train()
    batch = next(iter(SyntheticLoader(cfg.data, batch_size=4, device="cpu", seed=1, crops=method.crops())))
    ctx = StepContext(3, 1000, 10**6, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "overriding a previously registered kernel", once per op
        with cuda_policy():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = method(batch, ctx)
            out.loss.backward()
            if isinstance(method, AfterStep):
                method.after_step(ctx)
    assert math.isfinite(out.loss.item())
    grads = {n: p.grad for n, p in method.named_parameters() if p.requires_grad and p.grad is not None}
    assert grads
    assert {n: g.dtype for n, g in grads.items() if g.dtype != torch.float32} == {}


def test_the_policy_casts_as_cuda_does_and_is_undone():
    """The emulation against CUDA autocast's documented op lists (torch.amp docs, "CUDA Ops that can
    autocast to float32 / float16 / promote"), and CPU autocast unchanged after the block."""
    x, w = torch.randn(4, 8), torch.randn(8, 8)

    def dtypes():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = x @ w  # bf16 under both
            return {"matmul": y.dtype, "layer_norm": torch.nn.functional.layer_norm(y, (8,)).dtype,
                    "softmax": y.softmax(-1).dtype, "sum": y.sum().dtype,
                    "normalize": torch.nn.functional.normalize(y, dim=-1).dtype, "norm": y.norm().dtype,
                    "exp": y.exp().dtype, "addcmul": torch.addcmul(x, y, y).dtype, "gelu": torch.nn.functional.gelu(y).dtype,
                    "mean": y.mean().dtype}

    cpu = dtypes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with cuda_policy() as lists:
            cuda = dtypes()
    bf16, fp32 = torch.bfloat16, torch.float32
    assert {"linear", "matmul", "conv2d", "scaled_dot_product_attention"} <= set(lists["LOWER_PRECISION_FP"])
    assert {"layer_norm", "exp", "mse_loss"} <= set(lists["FP32"])
    assert cuda == {"matmul": bf16, "layer_norm": fp32, "softmax": fp32, "sum": fp32, "normalize": fp32, "norm": fp32,
                    "exp": fp32, "addcmul": fp32, "gelu": bf16, "mean": bf16}
    assert cpu["layer_norm"] == cpu["softmax"] == cpu["sum"] == bf16  # what CPU autocast does (why this exists)
    assert dtypes() == cpu
