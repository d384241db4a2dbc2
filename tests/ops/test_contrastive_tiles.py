"""The contrastive autotune space as the launcher sees it (fastssl.kernels.contrastive_tiles); the
compiled numbers behind these rules are checked by test_kernel_aot.py."""
import pytest
import torch

import fastssl.kernels.contrastive_tiles as tiles


def _shape(kernel, cfg):
    bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
    own, stream = (bn, bm) if kernel == "bwd_cols" else (bm, bn)
    return own, stream, cfg.num_warps, cfg.num_stages


@pytest.mark.parametrize("kernel", tiles.KERNELS)
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("d", [1, 7, 16, 100, 128, 129, 256, 300, 512, 1000, 1024])
def test_every_launch_has_configs_that_fit(kernel, dtype, d):
    configs = tiles.launch_configs(kernel, dtype, d)
    assert configs
    bd = tiles.block_d(d)
    for cfg in configs:
        own, stream, warps, stages = _shape(kernel, cfg)
        assert own == 64 * warps // 4  # one warpgroup per 64 own rows: scores computed once per tile
        assert tiles.smem_need(kernel, own, stream, stages, bd, d <= bd, dtype) <= tiles.SMEM_LIMIT
        if kernel != "fwd":
            assert stream <= (32 if bd >= 256 else 64)


def test_pinned_config_is_the_first_that_fits(monkeypatch):
    full = tiles.launch_configs("fwd", "fp32", 256)
    monkeypatch.setenv("FASTSSL_TRITON_AUTOTUNE", "0")
    assert [str(c) for c in tiles.launch_configs("fwd", "fp32", 256)] == [str(full[0])]


def test_pruner_keeps_per_dtype():
    """The autotuner's prune hook keeps exactly the launch configs of the tensor's dtype and D."""
    for kernel in tiles.KERNELS:
        configs = tiles.all_configs(kernel)
        for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            kept = tiles.pruner(kernel)(configs, {"rows_ptr": torch.empty(0, dtype=dtype), "D": 256})
            assert [str(c) for c in kept] == [str(c) for c in tiles.launch_configs(kernel, name, 256)]
    assert len(tiles.launch_configs("fwd", "fp32", 256)) < len(tiles.launch_configs("fwd", "bf16", 256))
