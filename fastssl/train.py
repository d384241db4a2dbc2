"""fastssl's entry point.

    deepspeed [--num_gpus N] fastssl/train.py --config configs/<name>.yaml [dotted.key=value ...]
    python fastssl/train.py --config configs/<name>.yaml [dotted.key=value ...]   # one process

Config mistakes end before any work with one line naming the key or path and exit code 2.
"""
from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, Python puts fastssl/ itself first on sys.path, where its modules would shadow
# top-level ones of the same name; the installed package is what we want.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402

EXIT_CONFIG = 2
EXIT_STOPPED = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fastssl/train.py", description="Self-supervised pre-training with fastssl.")
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. optim.epochs=5")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    from fastssl.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"fastssl: config error: {err}", file=sys.stderr)
        return EXIT_CONFIG

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="[fastssl] %(message)s")
    from fastssl.engine.loop import EXIT_SIGTERM, Terminated, TrainingStopped, run

    try:
        summary = run(cfg)
    except Terminated as err:
        print(f"fastssl: {err}", file=sys.stderr)
        return EXIT_SIGTERM
    except TrainingStopped as err:
        print(f"fastssl: {err}", file=sys.stderr)
        return EXIT_STOPPED
    if rank == 0:
        from fastssl.report import print_summary

        print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
