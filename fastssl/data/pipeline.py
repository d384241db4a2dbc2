"""The one DALI pipeline of fastssl: file reader → decode → the crops a method asks for, or an eval view.

Placement: with ``device_id=None`` every op runs on the CPU; with a GPU ``device_id`` images are
decoded by the ``mixed`` decoder (or on the CPU and then moved, ``decode="cpu"``) and augmented on
the GPU. The per-sample random parameters are always drawn on the CPU (DALI argument inputs must
be CPU tensors); the few that enter image arithmetic are moved with ``.gpu()``.

Outputs (per sample; the loader stacks a batch):
  training (``crops`` given): one [3, S_c, S_c] float32 per copy of every crop (``crops.py``), in
      crop order, then index [1] int32
  evaluation (``crops=None``): image [3, S, S] float32, index [1] int32
``index`` is the sample's position in the ``files`` list (the loader maps it to the class label).

Training augmentation per crop copy ("strong" recipe; "light" is crop + flip only) (SimCLR appendix A / BYOL table 6), in torchvision's order:
random resized crop → flip → colour jitter (p) → grayscale (p) → Gaussian blur (p) → solarize (p)
→ normalise. Differences from torchvision, all documented in notes/data.md:
  * jitter applies brightness, contrast, saturation, hue in one fixed-order ``color_twist`` (a
    single 4×4 colour matrix) instead of a random order; DALI's contrast pivots around mid-grey
    (128) instead of the image's mean grey;
  * grayscale is folded into the same ``color_twist`` as saturation 0 (its luma weights are
    BT.601's, like torchvision's; results are within one grey level of 0.299R + 0.587G + 0.114B);
  * "not applied" is expressed with identity parameters (factor 1, hue 0, blur sigma 1e-6 which
    gives the exact identity kernel) so every sample goes through the same ops.
The horizontal flip is done by ``crop_mirror_normalize``; it commutes with every pixel-wise op and
with the symmetric blur, so doing it last is equivalent and saves an op.

Sharding and order:
  training: ``shuffle_after_epoch`` — every reader epoch is a fresh permutation of the whole list,
    the same on every rank (its seed does not depend on the rank), and rank r reads its contiguous
    part, so the ranks together see each sample exactly once per epoch (DistributedSampler
    semantics). A batch that crosses the end of an epoch is completed from the next one: the
    training stream never drops samples, and the loader's "epoch" is a fixed number of steps.
  eval: no shuffling, ``stick_to_shard`` and ``pad_last_batch``: rank r reads samples
    ``[n*r // w, n*(r+1) // w)`` once per pass; DALI pads the last batch with copies of the shard's
    last sample and pads every shard to the same number of batches (a shard may get a batch made
    only of padding). The loader trims the padding.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from fastssl.data.config import AugmentConfig
from fastssl.data.crops import CropSpec, check_crops

READER = "reader"
TINY_SIGMA = 1e-6  # exp(-1 / (2 * TINY_SIGMA**2)) underflows to 0: the blur kernel becomes [0, 1, 0]


def seed_stream(seed: int, rank: int, purpose: str) -> Iterator[int]:
    """Endless stream of 31-bit seeds for (seed, rank, purpose); pure, so runs are reproducible."""
    tag = int.from_bytes(purpose.encode()[:8].ljust(8, b"\0"), "little")
    ss = np.random.SeedSequence([seed & 0xFFFFFFFF, rank, tag])
    while True:
        for s in ss.generate_state(32):
            yield int(s) & 0x7FFFFFFF
        ss = ss.spawn(1)[0]


def blur_window(image_size: int, frac: float) -> int:
    """Odd blur kernel size ≈ frac · image_size, at least 3 (BYOL: 23 px at 224 px)."""
    k = int(frac * image_size)
    return max(3, k if k % 2 == 1 else k - 1)


def _on_device_of(node, like):
    """Per-sample scalars are drawn on the CPU; image arithmetic needs them where the image is."""
    return node.gpu() if like.device == "gpu" else node


def _coin(p: float, seeds: Iterator[int]):
    return fn.random.coin_flip(probability=p, dtype=types.UINT8, seed=next(seeds))


def _uniform(lo: float, hi: float, seeds: Iterator[int]):
    seed = next(seeds)  # drawn even for a constant, so other ops keep their seeds
    if lo == hi:  # DALI rejects an empty range; a fixed value is what the user asked for
        return float(lo)
    return fn.random.uniform(range=[lo, hi], seed=seed)


def augment_crop(img, aug: AugmentConfig, spec: CropSpec, copy: int, image_size: int, seeds: Iterator[int]):
    """Copy ``copy`` of crop ``spec`` of HWC uint8 ``img`` → (HWC uint8 pixels, flip coin).

    The flip is returned, not applied: ``normalise`` applies it, so a ``resize_of`` crop can reuse
    these pixels with the same flip."""
    s = spec.size or image_size
    seed = next(seeds)  # drawn in both branches, so the ops after it keep their seeds
    if spec.crop:
        x = fn.random_resized_crop(
            img, size=[s, s], random_area=list(spec.scale or aug.crop_scale), random_aspect_ratio=list(aug.crop_ratio),
            antialias=True, seed=seed,
        )
    else:
        x = fn.resize(img, size=[s, s], antialias=True)
    if spec.recipe == "strong":
        x = _colour_blur_solarize(x, aug, spec, copy, s, seeds)
    mirror = fn.random.coin_flip(probability=aug.flip_p, seed=next(seeds))
    return x, mirror


def _colour_blur_solarize(x, aug: AugmentConfig, spec: CropSpec, copy: int, s: int, seeds: Iterator[int]):
    if aug.jitter_p > 0 or aug.grayscale_p > 0:
        on = fn.cast(_coin(aug.jitter_p, seeds), dtype=types.FLOAT)  # 1 → jitter this sample
        # factor = 1 + on·u, u ~ U[-b, b]  (torchvision draws the factor from [1 - b, 1 + b])
        bright = 1.0 + on * _uniform(-aug.brightness, aug.brightness, seeds)
        contrast = 1.0 + on * _uniform(-aug.contrast, aug.contrast, seeds)
        sat = 1.0 + on * _uniform(-aug.saturation, aug.saturation, seeds)
        hue = on * _uniform(-aug.hue * 360.0, aug.hue * 360.0, seeds)  # torchvision: fraction of a turn; DALI: degrees
        grey = fn.cast(_coin(aug.grayscale_p, seeds), dtype=types.FLOAT)
        sat = sat * (1.0 - grey)  # saturation 0 = BT.601 luma in all three channels
        x = fn.color_twist(x, brightness=bright, contrast=contrast, saturation=sat, hue=hue)
    blur_p = aug.blur_p[copy % 2] if spec.blur_p is None else spec.blur_p
    if blur_p > 0:
        sigma = _uniform(aug.blur_sigma[0], aug.blur_sigma[1], seeds)
        if blur_p < 1:
            on = fn.cast(_coin(blur_p, seeds), dtype=types.FLOAT)
            sigma = sigma * on + TINY_SIGMA * (1.0 - on)
        x = fn.gaussian_blur(x, window_size=blur_window(s, aug.blur_kernel_frac), sigma=sigma)
    sol_p = aug.solarize_p[copy % 2] if spec.solarize_p is None else spec.solarize_p
    if sol_p > 0:
        t = aug.solarize_threshold
        solar = fn.lookup_table(
            x, keys=list(range(256)), values=[float(v if v < t else 255 - v) for v in range(256)], dtype=types.UINT8
        )
        if sol_p < 1:
            on = _coin(sol_p, seeds)
            off = fn.cast(1 - on, dtype=types.UINT8)
            # exactly one of the two terms is non-zero, so the uint8 sum cannot overflow
            x = fn.cast(solar * _on_device_of(on, x) + x * _on_device_of(off, x), dtype=types.UINT8)
        else:
            x = solar
    return x


def normalise(x, mirror, mean, std):
    """HWC uint8 → CHW float32, normalised, mirrored where the coin says so."""
    return fn.crop_mirror_normalize(x, dtype=types.FLOAT, output_layout="CHW", mean=mean, std=std, mirror=mirror)


def train_crops(img, crops: Sequence[CropSpec], aug: AugmentConfig, image_size: int, seeds: Iterator[int], mean, std) -> list:
    """Every copy of every crop, crop after crop: ``sum(c.count for c in crops)`` CHW float32 outputs."""
    raw: dict[str, list] = {}
    outs = []
    for spec in crops:
        pieces = []
        for i in range(spec.count):
            if spec.resize_of is None:
                x, mirror = augment_crop(img, aug, spec, i, image_size, seeds)
            else:
                src, mirror = raw[spec.resize_of][i]
                s = spec.size or image_size
                x = fn.resize(src, size=[s, s], antialias=True)
            pieces.append((x, mirror))
            outs.append(normalise(x, mirror, mean, std))
        raw[spec.name] = pieces
    return outs


def eval_view(img, image_size: int, mean, std):
    """Deterministic eval view: shorter side resized to S, centre S×S crop, normalised CHW float32."""
    x = fn.resize(img, resize_shorter=image_size, antialias=True)
    return fn.crop_mirror_normalize(
        x, dtype=types.FLOAT, output_layout="CHW", crop=(image_size, image_size), mean=mean, std=std
    )


@pipeline_def
def ssl_pipeline(
    files: Sequence[str],
    *,
    crops: tuple[CropSpec, ...] | None,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    aug: AugmentConfig,
    shard_id: int,
    num_shards: int,
    decode_device: str,
    aug_on_gpu: bool,
    base_seed: int,
):
    """Graph of the fastssl pipeline; build it with ``make_pipeline``.

    ``files``: the validated file list; the reader's "label" is the index into it.
    ``crops``: the method's crops (training); None → one deterministic view (evaluation).
    """
    common = dict(files=list(files), labels=list(range(len(files))), name=READER, shard_id=shard_id, num_shards=num_shards)
    if crops is not None:
        # Same shuffle seed on every rank: the permutation is global, each rank reads its part.
        shuffle_seed = next(seed_stream(base_seed, 0, "shuffle"))
        encoded, index = fn.readers.file(**common, shuffle_after_epoch=True, shuffle_after_epoch_seed=shuffle_seed)
    else:
        encoded, index = fn.readers.file(**common, random_shuffle=False, stick_to_shard=True, pad_last_batch=True)
    img = fn.decoders.image(encoded, device=decode_device, output_type=types.RGB)
    if aug_on_gpu and decode_device == "cpu":
        img = img.gpu()
    mean255 = [255.0 * m for m in mean]
    std255 = [255.0 * s for s in std]
    if crops is None:
        return eval_view(img, image_size, mean255, std255), index
    seeds = seed_stream(base_seed, shard_id, "augment")
    return (*train_crops(img, crops, aug, image_size, seeds, mean255, std255), index)


def make_pipeline(
    files: Sequence[str],
    *,
    crops: Sequence[CropSpec] | None,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    aug: AugmentConfig,
    batch_size: int,
    shard_id: int = 0,
    num_shards: int = 1,
    device_id: int | None = None,
    decode: str = "cpu",
    num_threads: int = 2,
    prefetch: int = 2,
    seed: int = 0,
    checkpoint: bytes | str | None = None,
):
    """Build (not run) the pipeline. ``device_id=None`` → CPU only; ``decode`` is "cpu" or "mixed".

    Checkpointing is enabled for training (``crops`` given); ``checkpoint`` restores a state saved
    with ``Pipeline.checkpoint()`` from a pipeline built with the same arguments.
    """
    if decode not in ("cpu", "mixed"):
        raise ValueError(f"decode must be 'cpu' or 'mixed' here, got {decode!r}")
    if decode == "mixed" and device_id is None:
        raise ValueError("decode='mixed' needs a GPU (device_id)")
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id {shard_id} out of range for {num_shards} shards")
    training = crops is not None
    if training:
        crops = check_crops(crops)
    pipe = ssl_pipeline(
        files,
        crops=crops,
        image_size=image_size,
        mean=mean,
        std=std,
        aug=aug,
        shard_id=shard_id,
        num_shards=num_shards,
        decode_device=decode,
        aug_on_gpu=device_id is not None,
        base_seed=seed,
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        seed=next(seed_stream(seed, shard_id, "pipeline")),
        prefetch_queue_depth=prefetch,
        enable_checkpointing=training,
        checkpoint=checkpoint if training else None,
    )
    pipe.build()
    return pipe
