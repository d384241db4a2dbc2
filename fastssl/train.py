"""fastssl's entry point.

    deepspeed [--num_gpus N] fastssl/train.py --config configs/<name>.yaml [dotted.key=value ...]
    python fastssl/train.py --config configs/<name>.yaml [dotted.key=value ...]   # one process
    python fastssl/train.py --config configs/<name>.yaml [dotted.key=value ...] --print-config   # the resolved config

Config mistakes end before any work with one line naming the key or path and exit code 2.
Exit codes: 0 done (or already finished), 2 config error, 3 non-finite loss, 4 disk full,
5 another rank died (the line names it and the last complete checkpoint), 130 Ctrl-C, 143 SIGTERM
or the launcher gone (a checkpoint is saved for 130 and 143 inside the train loop; outside it, set-up
or the final evaluation, the line says so and the complete checkpoints are kept).
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
EXIT_RANK_LOST = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fastssl/train.py", description="Self-supervised pre-training with fastssl.")
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (every default spelled out, overrides applied) as YAML and exit; "
                        "nothing is trained or written")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. optim.epochs=5")
    return p.parse_intermixed_args(argv)  # flags before or after the overrides


class _SigtermOutsideLoop(BaseException):
    """SIGTERM outside the train loop (set-up, final evaluation), where no step boundary reads a flag.

    A BaseException, like KeyboardInterrupt, so that no library's ``except Exception`` swallows it;
    the train loop's own handler (``engine.signals.StopSignals``) takes over while it runs."""


def _sigterm_outside_loop(signum, frame):
    raise _SigtermOutsideLoop()


def main(argv: list[str] | None = None) -> int:
    import signal

    previous = signal.signal(signal.SIGTERM, _sigterm_outside_loop)  # first of all: no silent 143 at start-up
    try:
        return _main(argv)
    except _SigtermOutsideLoop:
        signals = sys.modules.get("fastssl.engine.signals")
        phase = signals.phase[0] if signals is not None else "start-up"
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"fastssl: SIGTERM during {phase}; complete checkpoints are kept: re-run the same command to continue",
                  file=sys.stderr, flush=True)
        return 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    from fastssl.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"fastssl: config error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    if args.print_config:  # what a run of this command would train with, and what it writes as config.yaml
        from fastssl.config import dump_config

        print(dump_config(cfg), end="")
        return 0

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="[fastssl] %(message)s")
    from fastssl.engine.disk import DiskFull
    from fastssl.engine.loop import TrainingStopped, run
    from fastssl.engine.run_dir import RunFinished
    from fastssl.engine.signals import EXIT_SIGINT, Interrupted

    def say(message: str) -> None:  # rank 0 speaks for all: every rank gets the same outcome
        if rank == 0:
            print(f"fastssl: {message}", file=sys.stderr, flush=True)

    try:
        summary = run(cfg)
    except ConfigError as err:  # found at set-up: output directory, data set, batch arithmetic
        say(f"config error: {err}")
        return EXIT_CONFIG
    except RunFinished as err:
        say(str(err))
        return 0
    except Interrupted as err:
        say(str(err))
        return err.exit_code
    except DiskFull as err:
        from fastssl.engine.disk import sweep_temps

        sweep_temps(Path(cfg.run.output_dir))  # belt and braces: no *.tmp is left in the output directory
        print(f"fastssl: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    except TrainingStopped as err:
        print(f"fastssl: {err}", file=sys.stderr)
        return EXIT_STOPPED
    except KeyboardInterrupt:  # Ctrl-C outside the train loop (set-up or final evaluation)
        say("interrupted (Ctrl-C); complete checkpoints are kept: re-run the same command to continue")
        return EXIT_SIGINT
    except Exception as err:  # another rank gone (exit 5), or a full disk anywhere else (a library's file): one line
        from fastssl.engine import disk, peers

        out = Path(cfg.run.output_dir)
        if peers.looks_like_peer_loss(err):  # a collective failed because another rank is gone
            if peers.should_speak():
                print(f"fastssl: {peers.lost_rank_message(out)}", file=sys.stderr, flush=True)
            return EXIT_RANK_LOST
        if not disk.is_disk_full(err, out):
            raise
        disk.sweep_temps(out)
        where = getattr(err, "filename", None) or f"a file under {out}"
        print(f"fastssl: {disk.DiskFull(Path(where), disk.last_checkpoint(out))}", file=sys.stderr, flush=True)
        return disk.EXIT_DISK_FULL
    if rank == 0:
        from fastssl.report import print_summary

        print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
