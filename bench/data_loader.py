"""Data-loader throughput: images/s of the two-view train loader and of the eval loader.

One image of the train loader is both of its views; the batch arrives on the target device as the
trainer receives it. Each loader is timed over windows of ``--steps`` batches (``bench.common.time_fn``
on the host clock: a window ends when its last batch is on the device), after ``--warmup`` batches
and one untimed window; images/s is the window's images over its median time, p20/p80 beside it.
Writes ``bench/results/data_loader-<device>.{json,png}`` and prints a JSON summary.

    python bench/data_loader.py --root data/fashion-mnist --batch-size 256 [--threads 2] [--device cuda:0]
    python bench/data_loader.py --smoke    # a few dozen PNGs written to a temporary folder: runs anywhere
                                           #   DALI does, not a measurement
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import Record, measure_ceilings, parse_args, plot, time_fn, write_results  # noqa: E402
from fastssl.data.config import DataConfig  # noqa: E402
from fastssl.data.loader import EvalLoader, TrainLoader  # noqa: E402

SMOKE = dict(batch_size=8, steps=2, windows=2, warmup=1, image_size=16)


def _endless(loader):
    while True:
        yield from loader


def time_loader(loader, warmup: int, steps: int, windows: int) -> tuple[Record, int]:
    """Host-clock timing of windows of ``steps`` batches; returns the record (images/s in ``extra``)
    and the images in one window."""
    it = _endless(loader)
    for _ in range(warmup):
        next(it)
    count = {"images": 0}

    def window() -> None:
        images = 0
        for _ in range(steps):
            b = next(it)
            # eval: (images, labels); train: a Batch (a tuple's own .index is a method: test the type)
            images += (b[0] if isinstance(b, tuple) else b.index).shape[0]
        count["images"] = images

    t = time_fn(window, reps=windows, host=True)  # the device sync after each window is time_fn's
    n = count["images"]
    rate = lambda ms: n / (ms / 1e3)  # noqa: E731
    extra = {"images_per_s": rate(t.median), "images_per_s_p20": rate(t.p80), "images_per_s_p80": rate(t.p20)}
    return Record(provider="", case={}, total=t, extra=extra), n


def write_tiny_folder(root: Path, n_train: int = 48, n_test: int = 16, side: int = 28) -> Path:
    """root/{train,test}/c<k>/<i>.png: random RGB images in 3 classes (smoke data)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            folder = root / split / f"c{i % 3}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return root


def run(args) -> None:
    if args.smoke:
        for k, v in SMOKE.items():
            setattr(args, k, v)
        tmp = tempfile.TemporaryDirectory()
        args.root, args.dataset = str(write_tiny_folder(Path(tmp.name) / "ds")), "folder"
    cfg = DataConfig(dataset=args.dataset, root=args.root, image_size=args.image_size, num_threads=args.threads, decode=args.decode)
    dev = torch.device(args.device)
    case = {"batch_size": args.batch_size, "image_size": args.image_size, "threads": args.threads, "device": str(dev)}
    loaders = {"train": lambda: TrainLoader(cfg, batch_size=args.batch_size, device=dev, seed=0),
               "eval": lambda: EvalLoader(cfg, "train", batch_size=args.batch_size, device=dev)}
    records, timed = [], {}
    for name in [p.strip() for p in args.providers.split(",") if p.strip()]:
        rec, n = time_loader(loaders[name](), args.warmup, args.steps, args.windows)
        rec.provider, rec.case = name, case
        records.append(rec)
        timed[name] = n * args.windows
    path = write_results("data_loader", records, measure_ceilings(smoke=True), args, meta={
        "what": "two-view train loader (an image = both views) and eval loader, batches on the target device",
        "loader_device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "steps_per_window": args.steps, "windows": args.windows, "warmup_batches": args.warmup})
    png = plot(path, [("loader throughput", lambda r: r.extra.get("images_per_s"), "images/s")],
               x_key="batch_size", series_key=lambda c: f"{c['image_size']} px, {c['threads']} threads")
    summary = {"device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
               "threads": args.threads, "image_size": args.image_size, "batch_size": args.batch_size}
    for r in records:
        key = "train_two_view" if r.provider == "train" else "eval"
        summary[f"{key}_images_per_s"] = round(r.extra["images_per_s"], 1)
        summary[f"{r.provider}_images_timed"] = timed[r.provider]
    print(json.dumps(summary, indent=1))
    print(f"wrote {path} and {png}")


def _add_args(p) -> None:
    p.set_defaults(providers="train,eval")
    p.add_argument("--root", default="data/fashion-mnist")
    p.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "folder"])
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2, help="DALI CPU worker threads")
    p.add_argument("--device", default="cpu", help="where the batches arrive (cpu, cuda:0)")
    p.add_argument("--decode", default="auto", choices=["auto", "cpu", "mixed"])
    p.add_argument("--warmup", type=int, default=5, help="batches before the untimed window")
    p.add_argument("--steps", type=int, default=40, help="batches per timed window")
    p.add_argument("--windows", type=int, default=3, help="timed windows (median, p20/p80)")


def main(argv: list[str] | None = None) -> None:
    run(parse_args(__doc__.splitlines()[0], _add_args, argv))


if __name__ == "__main__":
    main()
