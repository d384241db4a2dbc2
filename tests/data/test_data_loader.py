"""DALI pipeline + loaders on the CPU: batch contracts, augmentation maths against plain numpy/PIL
references, determinism, shard coverage, and bit-identical resume from a checkpoint."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

# The pipeline is DALI's: where DALI is absent (the lent GPU machine) this file skips, as
# tests/bench/test_data_loader_smoke.py does; the CLI training tests still need it and fail there.
pytest.importorskip("nvidia.dali")

from fastssl.data import AugmentConfig, DataConfig
from fastssl.data.batch import Batch
from fastssl.data.crops import TWO_VIEWS, CropSpec
from fastssl.data.loader import EvalLoader, TrainLoader
from fastssl.data.pipeline import blur_window

from _data_tiny import N_TEST, N_TRAIN, SIDE

IDENTITY = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0,
                blur_p=(0.0, 0.0), solarize_p=(0.0, 0.0))


def _cfg(root, image_size=SIDE, **aug) -> DataConfig:
    rng = np.random.default_rng()
    mean = tuple(float(x) for x in rng.uniform(0.3, 0.6, 3))
    std = tuple(float(x) for x in rng.uniform(0.2, 0.4, 3))
    return DataConfig(dataset="folder", root=root, image_size=image_size, mean=mean, std=std, augment=AugmentConfig(**aug))


def _pixels(path: str) -> np.ndarray:
    """Reference decode with PIL: [H, W, 3] uint8."""
    return np.array(Image.open(path).convert("RGB"))


def _normalise(img: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """[H, W, 3] uint8 (or float 0..255) → [3, H, W] float64, normalised as the model sees it."""
    x = img.astype(np.float64) / 255.0
    return ((x - np.array(cfg.mean)) / np.array(cfg.std)).transpose(2, 0, 1)


def _to_levels(view: torch.Tensor, cfg: DataConfig) -> np.ndarray:
    """Undo the normalisation: [3, H, W] → [H, W, 3] float64 in grey levels 0..255."""
    v = view.double().numpy().transpose(1, 2, 0)
    return (v * np.array(cfg.std) + np.array(cfg.mean)) * 255.0


def _stream(loader):
    """The endless stream of epochs of ``loader``."""
    while True:
        yield from loader


def _take(loader, n):
    return list(itertools.islice(_stream(loader), n))


def _all_views(loader, epochs=1):
    """index -> (view1, view2) over ``epochs`` epochs (later epochs overwrite earlier ones)."""
    out = {}
    for _ in range(epochs):
        for b in loader:
            for j in range(b.index.numel()):
                out[int(b.index[j])] = (b["views"][0][j], b["views"][1][j])
    return out


# ---------------------------------------------------------------------------------------------
# batch contract


def test_train_batch_contract(tiny_folder):
    cfg = _cfg(tiny_folder, image_size=32)
    loader = TrainLoader(cfg, batch_size=8, seed=0)
    assert len(loader.files) == N_TRAIN  # the empty and the corrupt file were skipped
    assert len(loader) == N_TRAIN // 8
    lo = (0.0 - np.array(cfg.mean)) / np.array(cfg.std)
    hi = (1.0 - np.array(cfg.mean)) / np.array(cfg.std)
    n = 0
    for b in loader:
        n += 1
        assert isinstance(b, Batch)
        for v in (b["views"][0], b["views"][1]):
            assert v.shape == (8, 3, 32, 32) and v.dtype == torch.float32 and v.device.type == "cpu"
            assert torch.isfinite(v).all()
            for c in range(3):
                assert v[:, c].min() >= lo[c] - 1e-5 and v[:, c].max() <= hi[c] + 1e-5
        assert b.labels.dtype == torch.int64 and b.labels.shape == (8,)
        assert b.labels.tolist() == [loader._labels[i].item() for i in b.index.tolist()]
        assert b.labels.tolist() == [int(loader.files[i].split("/")[-2][1:]) for i in b.index.tolist()]
        # the two views of every image differ
        assert ((b["views"][0] - b["views"][1]).flatten(1).abs().amax(1) > 0.1).all()
    assert n == len(loader) and (loader.epoch, loader.step) == (1, 0)


def test_epoch_counting_and_interrupted_loops(tiny_folder):
    loader = TrainLoader(_cfg(tiny_folder), batch_size=8, seed=0)  # 5 steps per epoch
    for k, _ in enumerate(loader):
        if k == 1:
            break
    assert (loader.epoch, loader.step) == (0, 2)
    assert len(list(loader)) == 3 and (loader.epoch, loader.step) == (1, 0)  # the rest of epoch 0
    for k, _ in enumerate(loader):
        if k == 4:
            break  # stopped right after the last batch, before the loop could close the epoch
    assert (loader.epoch, loader.step) == (1, 5)
    assert list(loader) == [] and (loader.epoch, loader.step) == (2, 0)
    assert len(list(loader)) == 5


def test_views_differ_across_epochs_and_are_seeded(tiny_folder):
    cfg = _cfg(tiny_folder)
    a = TrainLoader(cfg, batch_size=5, seed=11)
    e0, e1 = _all_views(a), _all_views(a)
    common = set(e0) & set(e1)
    assert len(common) > N_TRAIN // 2
    for i in common:
        assert not torch.equal(e0[i][0], e1[i][0]) and not torch.equal(e0[i][1], e1[i][1])
    same = _take(TrainLoader(cfg, batch_size=5, seed=11), 9)
    ref = _take(TrainLoader(cfg, batch_size=5, seed=11), 9)
    other = _take(TrainLoader(cfg, batch_size=5, seed=12), 9)
    for x, y, z in zip(same, ref, other):
        assert torch.equal(x["views"][0], y["views"][0]) and torch.equal(x["views"][1], y["views"][1]) and torch.equal(x.index, y.index)
    assert any(not torch.equal(x["views"][0], z["views"][0]) for x, z in zip(same, other))


@pytest.mark.parametrize("world", [1, 2])
def test_train_ranks_cover_each_epoch_once(tiny_folder, world):
    cfg = _cfg(tiny_folder)
    batch = 4
    loaders = [TrainLoader(cfg, batch_size=batch, rank=r, world_size=world, seed=5) for r in range(world)]
    assert {len(ld) for ld in loaders} == {N_TRAIN // world // batch}
    orders = []
    for _ in range(2):
        seen = [i for ld in loaders for b in ld for i in b.index.tolist()]
        assert sorted(seen) == list(range(N_TRAIN))  # every image exactly once per epoch
        orders.append(seen)
    assert orders[0] != orders[1]  # reshuffled every epoch


# ---------------------------------------------------------------------------------------------
# augmentation maths against numpy / PIL references (identity-everything-else configurations)


def _views_by_index(loader):
    out = {}
    for b in loader:
        for j, i in enumerate(b.index.tolist()):
            out[i] = (b["views"][0][j], b["views"][1][j])
    return out


def test_identity_augment_reproduces_the_image_and_flip(tiny_folder):
    for flip_p in (0.0, 1.0):
        cfg = _cfg(tiny_folder, **{**IDENTITY, "flip_p": flip_p})
        loader = TrainLoader(cfg, batch_size=8, seed=1)
        for i, (v1, v2) in _views_by_index(loader).items():
            ref = _normalise(_pixels(loader.files[i]), cfg)
            if flip_p:
                ref = ref[:, :, ::-1]
            np.testing.assert_allclose(v1.double().numpy(), ref, atol=1e-4)
            np.testing.assert_allclose(v2.double().numpy(), ref, atol=1e-4)


def test_flip_with_probability_half_gives_both_outcomes(tiny_folder):
    cfg = _cfg(tiny_folder, **{**IDENTITY, "flip_p": 0.5})
    loader = TrainLoader(cfg, batch_size=8, seed=2)
    flipped = []
    for i, views in _views_by_index(loader).items():
        ref = _normalise(_pixels(loader.files[i]), cfg)
        for v in views:
            v = v.double().numpy()
            plain, mirrored = np.abs(v - ref).max() < 1e-4, np.abs(v - ref[:, :, ::-1]).max() < 1e-4
            assert plain or mirrored
            flipped.append(mirrored and not plain)
    assert 0 < sum(flipped) < len(flipped)


def test_solarize_per_view_probability(tiny_folder):
    cfg = _cfg(tiny_folder, **{**IDENTITY, "solarize_p": (1.0, 0.5), "solarize_threshold": 128})
    loader = TrainLoader(cfg, batch_size=8, seed=3)
    applied = []
    for i, (v1, v2) in _views_by_index(loader).items():
        img = _pixels(loader.files[i])
        solar = np.where(img >= 128, 255 - img, img)
        np.testing.assert_allclose(v1.double().numpy(), _normalise(solar, cfg), atol=1e-4)
        on = np.abs(v2.double().numpy() - _normalise(solar, cfg)).max() < 1e-4
        off = np.abs(v2.double().numpy() - _normalise(img, cfg)).max() < 1e-4
        assert on or off
        applied.append(on)
    assert 0 < sum(applied) < len(applied)


def test_grayscale_is_bt601_luma_in_three_channels(tiny_folder):
    cfg = _cfg(tiny_folder, **{**IDENTITY, "grayscale_p": 1.0})
    loader = TrainLoader(cfg, batch_size=8, seed=4)
    for i, (v1, _) in _views_by_index(loader).items():
        img = _pixels(loader.files[i]).astype(np.float64)
        luma = img @ np.array([0.299, 0.587, 0.114])
        got = _to_levels(v1, cfg)
        for c in range(3):
            assert np.abs(got[..., c] - luma).max() <= 1.5  # one grey level of rounding, plus float slack


def _blur_ref(img: np.ndarray, sigma: float, window: int) -> np.ndarray:
    """Separable Gaussian blur, border 'reflect 101' (DALI's default), plain loops over taps."""
    r = window // 2
    taps = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * sigma**2))
    taps /= taps.sum()
    x = img.astype(np.float64)
    for axis in (0, 1):
        pad = [(r, r) if a == axis else (0, 0) for a in range(3)]
        p = np.pad(x, pad, mode="reflect")  # numpy's "reflect" does not repeat the edge = reflect-101
        out = np.zeros_like(x)
        for k in range(window):
            sl = [slice(None)] * 3
            sl[axis] = slice(k, k + x.shape[axis])
            out += taps[k] * p[tuple(sl)]
        x = out
    return x


def test_blur_matches_reference_and_view2_probability(tiny_folder):
    sigma = 1.3
    cfg = _cfg(tiny_folder, **{**IDENTITY, "blur_p": (1.0, 0.5), "blur_sigma": (sigma, sigma)})
    window = blur_window(cfg.image_size, cfg.augment.blur_kernel_frac)
    loader = TrainLoader(cfg, batch_size=8, seed=5)
    applied = []
    for i, (v1, v2) in _views_by_index(loader).items():
        img = _pixels(loader.files[i])
        blurred = _blur_ref(img, sigma, window)
        assert np.abs(_to_levels(v1, cfg) - blurred).max() <= 1.01  # uint8 rounding inside DALI
        d_blur = np.abs(_to_levels(v2, cfg) - blurred).max()
        d_plain = np.abs(_to_levels(v2, cfg) - img).max()
        assert d_blur <= 1.01 or d_plain <= 1e-3  # "not applied" is exactly the input
        applied.append(d_plain > 1e-3)
    assert 0 < sum(applied) < len(applied)


def test_brightness_jitter_is_a_per_image_factor_in_range(tiny_folder):
    b = 0.4
    cfg = _cfg(tiny_folder, **{**IDENTITY, "jitter_p": 1.0, "brightness": b, "contrast": 0.0, "saturation": 0.0, "hue": 0.0})
    loader = TrainLoader(cfg, batch_size=8, seed=6)
    factors = []
    for i, (v1, _) in _views_by_index(loader).items():
        img = _pixels(loader.files[i]).astype(np.float64)
        got = _to_levels(v1, cfg)
        use = (img > 30) & (got < 250)  # away from clipping
        f = (got[use] * img[use]).sum() / (img[use] ** 2).sum()  # least-squares factor
        assert np.abs(got[use] - f * img[use]).max() <= 1.5
        assert 1 - b - 0.01 <= f <= 1 + b + 0.01
        factors.append(f)
    assert np.std(factors) > 0.05


# ---------------------------------------------------------------------------------------------
# resume


@pytest.mark.parametrize("taken,prefetch", [(0, 2), (3, 1), (3, 3), (6, 2), (7, 2)])
def test_checkpoint_resume_is_bit_identical(tiny_folder, tmp_path, taken, prefetch):
    cfg = _cfg(tiny_folder, image_size=24).model_copy(update={"prefetch": prefetch})
    run = TrainLoader(cfg, batch_size=6, seed=9)  # 6 steps per epoch: 6 saves after an epoch's last batch, 7 after it
    stream = _stream(run)
    for _ in range(taken):
        next(stream)
    saved_at = (run.epoch, run.step)
    torch.save(run.state_dict(), tmp_path / "loader.pt")
    expected = [next(stream) for _ in range(8)]
    resumed = TrainLoader(cfg, batch_size=6, seed=9)
    resumed.load_state_dict(torch.load(tmp_path / "loader.pt", weights_only=True))
    assert (resumed.epoch, resumed.step) == saved_at
    got = _take(resumed, 8)
    for e, g in zip(expected, got):
        assert torch.equal(e["views"], g["views"])
        for name in ("labels", "index"):
            assert torch.equal(getattr(e, name), getattr(g, name)), name
    assert (resumed.epoch, resumed.step) == (run.epoch, run.step)


def test_state_of_a_different_loader_is_refused(tiny_folder):
    cfg = _cfg(tiny_folder)
    state = TrainLoader(cfg, batch_size=4, seed=0).state_dict()
    with pytest.raises(ValueError, match="batch_size"):
        TrainLoader(cfg, batch_size=5, seed=0).load_state_dict(state)


# ---------------------------------------------------------------------------------------------
# evaluation loader


@pytest.mark.parametrize("world,batch", [(1, 4), (2, 4), (3, 4), (2, 5), (4, 3), (1, 64)])
def test_eval_covers_split_exactly_once_and_is_deterministic(tiny_folder, world, batch):
    cfg = _cfg(tiny_folder)
    seen = []
    for rank in range(world):
        loader = EvalLoader(cfg, "test", batch_size=batch, rank=rank, world_size=world, with_index=True)
        first = list(loader)
        second = list(loader)
        assert len(first) == len(loader)
        for (x1, y1, i1), (x2, y2, i2) in zip(first, second, strict=True):
            assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(i1, i2)
            assert x1.shape[1:] == (3, SIDE, SIDE) and x1.dtype == torch.float32 and y1.dtype == torch.int64
            assert 0 < x1.shape[0] <= batch
        idx = [i for _, _, ii in first for i in ii.tolist()]
        assert len(idx) == loader.num_samples
        seen += idx
    assert sorted(seen) == list(range(N_TEST))


def test_eval_values_match_pil_reference(tiny_folder):
    cfg = _cfg(tiny_folder)
    loader = EvalLoader(cfg, "test", batch_size=5, with_index=True)
    for x, y, idx in loader:
        for j, i in enumerate(idx.tolist()):
            np.testing.assert_allclose(x[j].double().numpy(), _normalise(_pixels(loader.files[i]), cfg), atol=1e-4)
            assert y[j].item() == int(loader.files[i].split("/")[-2][1:])


def test_eval_resizes_to_image_size(tiny_folder):
    cfg = _cfg(tiny_folder, image_size=40)
    x, _ = next(iter(EvalLoader(cfg, "train", batch_size=4)))
    assert x.shape == (4, 3, 40, 40)


def test_eval_subset_is_fixed_and_sharded(tiny_folder):
    cfg = _cfg(tiny_folder)
    a = EvalLoader(cfg, "train", batch_size=4, max_samples=11)
    b = EvalLoader(cfg, "train", batch_size=4, max_samples=11)
    c = EvalLoader(cfg, "train", batch_size=4, max_samples=11, subset_seed=1)
    assert a.indices.tolist() == b.indices.tolist() and len(a.indices) == 11
    assert a.indices.tolist() != c.indices.tolist()
    assert a.indices.tolist() == sorted(set(a.indices.tolist()))
    seen = []
    for rank in range(2):
        ld = EvalLoader(cfg, "train", batch_size=4, rank=rank, world_size=2, max_samples=11, with_index=True)
        seen += [i for _, _, ii in ld for i in ii.tolist()]
    assert sorted(seen) == a.indices.tolist()


def test_abandoned_eval_pass_realigns(tiny_folder):
    cfg = _cfg(tiny_folder)
    loader = EvalLoader(cfg, "test", batch_size=3, with_index=True)
    for _ in loader:
        break
    again = [i for _, _, ii in loader for i in ii.tolist()]
    assert again == list(range(N_TEST))


def test_mixed_decode_needs_a_gpu(tiny_folder):
    cfg = _cfg(tiny_folder).model_copy(update={"decode": "mixed"})
    with pytest.raises(ValueError, match="mixed"):
        TrainLoader(cfg, batch_size=4)


_MULTI = (CropSpec("full", count=2), CropSpec("local", count=2, size=16, scale=(0.05, 0.3)),
          CropSpec("light", recipe="light"), CropSpec("small", count=2, size=16, resize_of="full"))


@pytest.mark.parametrize("crops,decode", [(TWO_VIEWS, "mixed"), (TWO_VIEWS, "cpu"), (_MULTI, "mixed"), (None, "mixed")])
def test_gpu_graph_traces_with_consistent_placement(tiny_folder, crops, decode):
    """No GPU here: trace the GPU variant of the graph (no build) and check where its outputs live.

    Uses DALI's private ``_build_graph``: graph definition is where DALI rejects misplaced inputs
    (e.g. a GPU tensor fed to a CPU op), which is the part of the GPU path a CPU machine can check.
    """
    from fastssl.data.files import scan_image_folder
    from fastssl.data.pipeline import ssl_pipeline

    files = scan_image_folder(tiny_folder / "train").files
    aug = AugmentConfig(blur_p=(1.0, 0.1), solarize_p=(0.3, 0.2))
    pipe = ssl_pipeline(
        files, crops=crops, image_size=32, mean=[0.5] * 3, std=[0.25] * 3, aug=aug, shard_id=0, num_shards=1,
        decode_device=decode, aug_on_gpu=True, base_seed=0, batch_size=4, num_threads=1, device_id=0, seed=1,
        enable_checkpointing=crops is not None,
    )
    pipe._build_graph()
    devices = [node.device for node in pipe._graph_out]
    n_images = 1 if crops is None else sum(c.count for c in crops)
    assert devices == ["gpu"] * n_images + ["cpu"]  # images on the GPU, the index on the CPU
