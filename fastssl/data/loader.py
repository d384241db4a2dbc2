"""The iterators the trainer consumes: a checkpointable train stream of per-method crops and sharded eval passes.

``TrainLoader`` yields ``Batch`` objects (every crop the method declared, by name), ``len(loader)`` of them per ``for`` loop (one
epoch); an interrupted loop resumes where it stopped. ``EvalLoader`` yields ``(images, labels)``
covering its rank's shard of the split exactly once per ``for`` loop.

Copies: DALI recycles its output buffers when the next batch is produced, so every output is
copied once into a fresh torch tensor (CPU: one memcpy, 24 KiB per 32-px two-view sample; GPU: a
device-to-device copy on torch's current stream). Zero-copy dlpack views would alias recycled
memory, so they are not used.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fastssl.data.batch import Batch
from fastssl.data.config import DataConfig
from fastssl.data.crops import TWO_VIEWS, CropSpec
from fastssl.data.files import ImageList, scan_image_folder
from fastssl.data.prepare import prepare_fashion_mnist
from fastssl.data.stream import EpochStream, check_shard

_STATE_VERSION = 2


def resolve_placement(decode: str, device: torch.device) -> tuple[int | None, str]:
    """(DALI device_id, decode device) for a torch ``device`` and ``DataConfig.decode``."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return index, ("cpu" if decode == "cpu" else "mixed")
    if device.type == "cpu":
        if decode == "mixed":
            raise ValueError("data.decode: mixed decodes on the GPU; it needs a CUDA device (use auto or cpu)")
        return None, "cpu"
    raise ValueError(f"unsupported device {device} (DALI feeds cpu or cuda)")


def _to_torch(dali_out, device: torch.device) -> torch.Tensor:
    """Copy one DALI output batch (uniform shape) into a new torch tensor on ``device``."""
    from nvidia.dali.plugin.pytorch.torch_utils import to_torch_tensor

    t = to_torch_tensor(dali_out.as_tensor(), copy=True)
    return t if t.device == device else t.to(device, non_blocking=True)


def _stack_to_torch(dali_outs, device: torch.device) -> torch.Tensor:
    """Copy ``n`` DALI output batches of one shape into one new ``[n, B, ...]`` tensor on ``device``
    (each copied straight into its slice: one copy, no stack)."""
    from nvidia.dali.plugin.pytorch import feed_ndarray

    tensors = [o.as_tensor() for o in dali_outs]
    on_gpu = hasattr(tensors[0], "device_id")  # TensorGPU
    if on_gpu != (device.type == "cuda"):  # placement differs from the target: copy, then move
        return torch.stack([_to_torch(o, device) for o in dali_outs])
    dest = torch.empty((len(tensors), *tensors[0].shape()), dtype=torch.float32, device=device)
    stream = torch.cuda.current_stream(device) if on_gpu else None
    for i, t in enumerate(tensors):
        feed_ndarray(t, dest[i], cuda_stream=stream)
    return dest


def dali_problem() -> str | None:
    """Why the DALI pipelines cannot run on this machine (DALI does not import), else None. The set-up
    says it in one line before the run directory is touched: a machine without DALI (such as a lent GPU
    machine with no package index) can still train on ``data.synthetic``."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as err:
        return (f"data.synthetic=false reads the images through NVIDIA DALI, which does not import here ({err}); "
                "install it (`pip install -e .` installs nvidia-dali-cuda130), or set data.synthetic=true to train "
                "on synthetic batches")
    return None


def _split_list(cfg: DataConfig, split: str, rank: int) -> ImageList:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if cfg.dataset == "fashion-mnist":  # normally done by ensure_dataset on rank 0; a no-op then
        prepare_fashion_mnist(cfg.root, cfg.source, progress=rank == 0)
    return scan_image_folder(Path(cfg.root) / split, warn=rank == 0)


def _build_pipeline(loader, *, crops: tuple[CropSpec, ...] | None, **extra):
    """The DALI pipeline of a TrainLoader (its crops) or EvalLoader (crops=None), from its fields."""
    from fastssl.data.pipeline import make_pipeline

    c = loader.cfg
    return make_pipeline(
        loader.files, crops=crops, image_size=c.image_size, mean=c.mean, std=c.std, aug=c.augment,
        batch_size=loader.batch_size, shard_id=loader.rank, num_shards=loader.world_size,
        device_id=loader._device_id, decode=loader._decode, num_threads=c.num_threads, prefetch=c.prefetch, **extra,
    )


class TrainLoader(EpochStream):
    """Training batches of ``batch_size`` images per rank (the per-rank micro-batch), each image
    augmented into the ``crops`` a method declared (default: two full-size views).

    Epoch: ``len(self)`` steps, ``floor(floor(N / world_size) / batch_size)`` unless
    ``steps_per_epoch`` is given, the same on every rank. The underlying stream never drops data:
    the samples that do not fill a last batch start the next epoch (see ``pipeline``'s docstring).
    Iteration: ``EpochStream`` (``fastssl.data.stream``).

    Resuming: ``state_dict()`` (at a step boundary, i.e. between two batches) captures the DALI
    pipeline state (reader positions, RNG states; prefetched batches are accounted for by DALI) and
    the epoch/step counters; ``load_state_dict()`` on a fresh loader built with the same arguments
    makes it yield exactly the batches the original loader would have yielded next. The state is
    per rank: save one per rank.
    """

    what = "TrainLoader"

    def __init__(
        self,
        cfg: DataConfig,
        *,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        seed: int = 0,
        steps_per_epoch: int | None = None,
        crops: Sequence[CropSpec] = TWO_VIEWS,
    ):
        super().__init__(cfg, batch_size=batch_size, rank=rank, world_size=world_size, device=device, seed=seed, crops=crops)
        self._device_id, self._decode = resolve_placement(cfg.decode, self.device)
        images = _split_list(cfg, "train", rank)
        self.files, self.class_names = images.files, images.class_names
        self._labels = torch.tensor(images.labels, dtype=torch.int64)
        self._set_epoch_length(len(self.files), f"{len(self.files)} training images", steps_per_epoch)
        self._pipe = None
        self._checkpoint: bytes | None = None  # state to restore when the pipeline is (re)built

    def _pipeline(self):
        if self._pipe is None:
            self._pipe = _build_pipeline(self, crops=self.crops, seed=self.seed, checkpoint=self._checkpoint)
        return self._pipe

    def _next_batch(self) -> Batch:
        *outs, index = self._pipeline().run()
        idx = _to_torch(index, torch.device("cpu")).view(-1).long()
        labels = self._labels[idx]
        dev = self.device
        crops, at = {}, 0
        for spec in self.crops:
            crops[spec.name] = _stack_to_torch(outs[at:at + spec.count], dev)  # [count, B, 3, S, S]
            at += spec.count
        return Batch(crops, labels.to(dev, non_blocking=True), idx.to(dev, non_blocking=True))

    def _fingerprint(self) -> dict:
        return {"num_files": len(self.files), **super()._fingerprint()}

    def state_dict(self) -> dict:
        """Resumable position (plain dict, torch.save-able). Take it between batches."""
        pipe_state = self._pipe.checkpoint() if self._pipe is not None else self._checkpoint
        return {
            "version": _STATE_VERSION, "epoch": self.epoch, "step": self.step,
            "pipeline": pipe_state, "fingerprint": self._fingerprint(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``; the loader must be built with the arguments that produced it."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported TrainLoader state version {state.get('version')}")
        self._restore_counters(state)
        self.close()
        self._checkpoint = state["pipeline"]

    def close(self) -> None:
        """Release the DALI pipeline (it is rebuilt on the next iteration)."""
        if self._pipe is not None:
            del self._pipe
            self._pipe = None


class EvalLoader:
    """Deterministic, sharded passes over a split: ``(images [B,3,S,S] float32, labels [B] int64)``.

    Rank ``r`` of ``w`` covers samples ``[n*r // w, n*(r+1) // w)`` of the (optionally subset) split
    exactly once per ``for`` loop; the ranks together cover it exactly once. The last batch of a
    rank is smaller when its shard is not a multiple of ``batch_size`` (DALI's padding is trimmed),
    so ranks may yield different numbers of batches (at most one apart); gather with variable
    lengths. ``max_samples``: use a fixed subset, the first ``max_samples`` entries of a permutation
    seeded by ``subset_seed`` (kept in file order), the same on every rank and every run.
    ``with_index=True`` adds a third element, the [B] int64 index of each sample in the split list.
    """

    def __init__(
        self,
        cfg: DataConfig,
        split: str = "test",
        *,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        max_samples: int | None = None,
        subset_seed: int = 0,
        with_index: bool = False,
    ):
        check_shard(rank, world_size, batch_size)
        self.cfg, self.split = cfg, split
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.with_index = with_index
        self._device_id, self._decode = resolve_placement(cfg.decode, self.device)
        images = _split_list(cfg, split, rank)
        self.class_names = images.class_names
        n_all = len(images)
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"max_samples must be >= 1 or None, got {max_samples}")
        if max_samples is not None and max_samples < n_all:
            chosen = np.sort(np.random.default_rng(subset_seed).permutation(n_all)[:max_samples])
        else:
            chosen = np.arange(n_all)
        self.indices = torch.from_numpy(chosen.astype(np.int64))  # position in the full split list
        self.files = [images.files[i] for i in chosen]
        self._labels = torch.tensor(images.labels, dtype=torch.int64)[self.indices]
        n = len(self.files)
        self.num_samples = n * (rank + 1) // world_size - n * rank // world_size  # this rank's shard
        # DALI pads every shard to the batch count of the largest one, ceil(n / w) samples.
        self._runs_per_pass = math.ceil(math.ceil(n / world_size) / batch_size)
        self._runs_done = 0  # runs of the current pass; non-zero if a loop was abandoned
        self._pipe = None

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _pipeline(self):
        if self._pipe is None:
            self._pipe = _build_pipeline(self, crops=None)
        return self._pipe

    def __iter__(self):
        pipe = self._pipeline()
        while 0 < self._runs_done < self._runs_per_pass:  # finish an abandoned pass: realign the reader
            pipe.run()
            self._runs_done += 1
        self._runs_done = 0
        seen = 0
        for _ in range(self._runs_per_pass):
            images, index = pipe.run()
            self._runs_done += 1
            valid = min(self.batch_size, self.num_samples - seen)
            seen += max(valid, 0)
            if valid <= 0:  # a batch made only of DALI's padding
                continue
            local = _to_torch(index, torch.device("cpu")).view(-1).long()[:valid]
            out = (_to_torch(images, self.device)[:valid], self._labels[local].to(self.device, non_blocking=True))
            if self.with_index:
                out = (*out, self.indices[local].to(self.device, non_blocking=True))
            yield out
        self._runs_done = 0

    def close(self) -> None:
        if self._pipe is not None:
            del self._pipe
            self._pipe = None
