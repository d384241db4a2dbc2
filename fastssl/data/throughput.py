"""Measure the loaders' throughput by hand (not a test): ``python -m fastssl.data.throughput``.

Reports images/s of the two-view train loader (one image = both of its views) and of the eval
loader, after a warm-up, with the batch copied to the target device as the trainer receives it.
Example (this repository's CPU numbers are in notes/data.md):

    python -m fastssl.data.throughput --root data/fashion-mnist --batch-size 256 --device cpu
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from fastssl.data.config import DataConfig
from fastssl.data.loader import EvalLoader, TrainLoader


def _rate(batches, warmup: int, steps: int) -> tuple[float, int]:
    """Images/s over ``steps`` batches after ``warmup`` batches (the iterator is consumed lazily)."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    images = 0
    start = time.perf_counter()
    for _ in range(steps):
        b = next(it)
        images += (b.index if hasattr(b, "index") else b[0]).shape[0]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start), images


def _endless(loader):
    while True:
        yield from loader


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="data/fashion-mnist")
    p.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "folder"])
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--decode", default="auto", choices=["auto", "cpu", "mixed"])
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args(argv)
    cfg = DataConfig(dataset=args.dataset, root=args.root, image_size=args.image_size, num_threads=args.threads, decode=args.decode)
    device = torch.device(args.device)
    train = TrainLoader(cfg, batch_size=args.batch_size, device=device, seed=0)
    train_rate, n_train = _rate(_endless(train), args.warmup, args.steps)
    ev = EvalLoader(cfg, "train", batch_size=args.batch_size, device=device)
    eval_rate, n_eval = _rate(_endless(ev), args.warmup, args.steps)
    print(json.dumps({
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": args.threads, "image_size": args.image_size, "batch_size": args.batch_size,
        "train_two_view_images_per_s": round(train_rate, 1), "train_images_timed": n_train,
        "eval_images_per_s": round(eval_rate, 1), "eval_images_timed": n_eval,
    }, indent=1))


if __name__ == "__main__":
    main()
