"""Helpers several test files share: the device of an op backend, seeded random inputs, a bf16/fp32
ulp, and running a function on gloo ranks.

A uniquely named module (not conftest) so that test files and the rank processes they spawn can
import it: ``tests/`` is on ``sys.path`` under pytest (the folder of the root conftest), and a
spawned process inherits its parent's ``sys.path``.
"""
from __future__ import annotations

import contextlib
import random
import socket
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def backend_device(backend: str) -> torch.device:
    """The Triton backend runs on CUDA where there is a GPU, in the interpreter on CPU otherwise."""
    return torch.device("cuda" if backend == "triton" and torch.cuda.is_available() else "cpu")


def fresh_seed() -> int:
    """Seed torch with a new random seed and return it (for the failure message: a failure repeats)."""
    seed = random.randrange(2**31)
    torch.manual_seed(seed)
    return seed


def rand_rows(*shape: int) -> torch.Tensor:
    """float64 normal rows with norms spread over [0.5, 2.5): never zero, never already unit."""
    x = torch.randn(*shape, dtype=torch.float64)
    return x * (0.5 + 2 * torch.rand(*shape[:-1], 1, dtype=torch.float64))


def ulp(ref64: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One unit in the last place of ``dtype`` at |ref| (elementwise)."""
    mag = ref64.abs().clamp_min(torch.finfo(dtype).tiny)
    return torch.finfo(dtype).eps * torch.exp2(torch.floor(torch.log2(mag)))


def view_rows(x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Images [lo, hi) of both views along the view-major ``2N`` axis (dim -2 of ``[n, 2N, D]``, or 0)."""
    dim = 1 if x.ndim == 3 else 0
    n = x.shape[dim] // 2
    return torch.cat([x.narrow(dim, lo, hi - lo), x.narrow(dim, n + lo, hi - lo)], dim=dim)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_on_ranks(fn: Callable[[int, dict], object], data: dict, folder: Path, world: int) -> list:
    """``fn(rank, data)`` on ``world`` gloo ranks (one spawn, one thread each); their results in rank
    order. ``fn`` must be a module-level function (the ranks import it by name); ``data`` and the
    results travel through files in ``folder``."""
    torch.save(data, folder / "data.pt")
    mp.spawn(_rank_main, args=(fn, world, free_port(), str(folder)), nprocs=world, join=True)
    return [torch.load(folder / f"rank{r}.pt") for r in range(world)]


def _rank_main(rank: int, fn, world: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    data = torch.load(f"{folder}/data.pt")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.save(fn(rank, data), f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def bar_image_folder(root: Path, seed: int = 0) -> Path:
    """``root/{train,test}/c0..c3/<i>.png``: 4 classes × (24 train, 8 test) 16×16 grey images, noise under
    a bright bar whose orientation and position is the class (rows 2-5, rows 10-13, columns 2-5,
    columns 10-13), so a few steps of training separate them. Returns ``root``."""
    import numpy as np
    from PIL import Image

    bars = ((slice(2, 6), slice(None)), (slice(10, 14), slice(None)), (slice(None), slice(2, 6)), (slice(None), slice(10, 14)))
    rng = np.random.default_rng(seed)
    for split, n in (("train", 24), ("test", 8)):
        for c, bar in enumerate(bars):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 60, size=(16, 16)).astype(np.uint8)
                img[bar] = 250
                Image.fromarray(img).save(root / split / f"c{c}" / f"{i}.png")
    return root


def layout_only_folder(root: Path, cls: str = "c") -> Path:
    """``root/{train,test}/<cls>/0.png``: the layout the config checks (a class folder holding an image
    name) and no more; nothing may decode the file. Returns ``root``."""
    for split in ("train", "test"):
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        (root / split / cls / "0.png").write_bytes(b"x")
    return root


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str, why_skip: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. "1m") mounted on a new ``folder`` for the block: a real full disk.
    Mounting needs root; elsewhere the test skips with ``why_skip``. Unmounted lazily if busy."""
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True).returncode:
        import pytest

        pytest.skip(f"cannot mount a tmpfs here (not root){why_skip}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(folder)], check=True)


def forget_deepspeed_groups() -> None:
    """DeepSpeed keeps the process groups it derives (world, data parallel, ...) in module globals of
    ``deepspeed.utils.groups``; a test module that builds engines in-process after another one destroyed
    its process group would hand DeepSpeed's set-up the dead group. Called when a module creates its own."""
    import torch.distributed as dist
    from deepspeed.utils import groups

    for name, value in list(vars(groups).items()):
        if name.startswith("_") and isinstance(value, dist.ProcessGroup):
            setattr(groups, name, None)
        elif name.startswith("_") and isinstance(value, dict) and any(isinstance(v, dist.ProcessGroup) for v in value.values()):
            value.clear()


def tiny_method(tmp_path: Path, method: dict, *, arch: str = "test_vit", batch_size: int | None = None):
    """A method (``method``: its config section) on one of timm's test models at 16 px (test_vit with
    patch 4, its attention resolved for CPU fp32; or test_resnet), over a layout-only folder, built
    seeded: a whole method step in milliseconds."""
    from fastssl.config import TrainConfig
    from fastssl.engine.compile import resolve_attention
    from fastssl.methods.registry import build_method

    layout_only_folder(tmp_path, "a")
    vit = "vit" in arch
    cfg = TrainConfig.model_validate({
        "data": {"dataset": "folder", "root": str(tmp_path), "image_size": 16},
        "model": {"arch": arch, **({"patch_size": 4} if vit else {})},
        "method": method,
        **({"optim": {"batch_size": batch_size}} if batch_size else {}),
    })
    torch.manual_seed(0)
    built = build_method(cfg)
    if vit:
        resolve_attention(built, torch.device("cpu"), torch.float32)  # before tracing (compile_regions does this too)
    return built


def two_view_batch(b: int, seed: int, size: int = 16):
    """A seeded batch of two [b, 3, size, size] views."""
    from fastssl.data.batch import Batch

    g = torch.Generator().manual_seed(seed)
    return Batch({"views": torch.randn(2, b, 3, size, size, generator=g)}, torch.zeros(b, dtype=torch.long), torch.arange(b))


class HostWaits(torch.utils._python_dispatch.TorchDispatchMode):
    """Records, while active, the ops that make the host wait for a CUDA device (run the code on the
    meta device, which stands for it): reads of device values (``item``, ``nonzero`` of a boolean index,
    ...) and host-to-device copies; from pageable memory PyTorch's blocking copy synchronises the
    stream. ``non_blocking_ok``: a ``non_blocking=True`` copy is not a wait (a pinned copy); off, every
    host <-> device copy is recorded (code traced by torch.compile may not pin: no fake kernel)."""

    SYNC_OPS = {"aten._local_scalar_dense.default", "aten.item.default", "aten.nonzero.default", "aten._assert_async.msg",
                "aten.is_nonzero.default", "aten.equal.default"}
    PIN_OPS = {"aten._pin_memory.default", "aten.is_pinned.default"}
    COPY_OPS = {"aten._to_copy.default", "aten.copy_.default", "aten.copy.default"}

    def __init__(self, non_blocking_ok: bool = True) -> None:
        super().__init__()
        self.non_blocking_ok = non_blocking_ok
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if name in self.PIN_OPS and not self.non_blocking_ok:
            self.seen.append(name)
        elif name in self.SYNC_OPS:
            if any(t.device.type != "cpu" for t in tensors):  # (a host tensor's value is read without a wait)
                self.seen.append(name)
        elif name in self.COPY_OPS:
            non_blocking = kwargs.get("non_blocking", False) or (name == "aten.copy_.default" and len(args) > 2 and args[2])
            devs = {t.device.type for t in tensors}
            if kwargs.get("device") is not None:
                devs.add(torch.device(kwargs["device"]).type)
            if "cpu" in devs and len(devs) > 1 and not (non_blocking and self.non_blocking_ok):
                self.seen.append(f"{'non-blocking' if non_blocking else 'blocking'} {name} {sorted(devs)}")
        return func(*args, **kwargs)
