"""Stop requests during training: SIGTERM, Ctrl-C (SIGINT) and the death of the ``deepspeed`` launcher.

A signal only sets a flag; the train loop reads it at the next step boundary (agreed over ranks),
saves a checkpoint and raises ``Interrupted`` (exit 128 + signal: 143 for SIGTERM, 130 for SIGINT).
A second Ctrl-C exits at once without a checkpoint (the last complete one is kept: checkpoints are
committed by a rename).

Launcher death: ``deepspeed`` (the runner) starts ``deepspeed.launcher.launch``, which starts the
ranks. SIGTERM to the runner kills only the runner, and the ranks would train on as orphans. So
every rank started by a launcher watches its launcher ancestors (parent and grandparent whose
command line names deepspeed) from a daemon thread, once a second, and treats the death of any of
them like SIGTERM. ``PR_SET_PDEATHSIG`` alone would not do: it fires only when the direct parent
dies, and the direct parent (``launch``) survives its runner.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

EXIT_SIGINT = 130
EXIT_SIGTERM = 143
_NAMES = {signal.SIGINT: "SIGINT (Ctrl-C)", signal.SIGTERM: "SIGTERM"}
LAUNCHER_GONE = 1000  # the stop code of a launcher's death (a signal number otherwise)

#: What the process is doing outside the train loop, for the line a SIGTERM there prints
#: (``fastssl/train.py`` installs that handler before anything else).
phase = ["set-up"]


def describe(code: int, rank: int) -> str:
    """The stop request of another rank, for the line this rank prints (e.g. 'SIGTERM to rank 1')."""
    if code == LAUNCHER_GONE:
        return f"the deepspeed launcher of rank {rank} is gone"
    return f"{_NAMES.get(code, f'signal {code}')} to rank {rank}"


class Interrupted(Exception):
    """A stop was requested and a checkpoint saved; ``exit_code`` is 128 + the signal number."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _proc_stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time in clock ticks) of ``pid`` from /proc, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return int(fields[1]), fields[19]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def launcher_ancestors(pid: int | None = None, *, cmdline=_cmdline, stat=_proc_stat) -> list[tuple[int, str]]:
    """(pid, start time) of the consecutive ancestors of ``pid`` whose command line mentions deepspeed.

    The start time tells a dead launcher from a new process that happens to reuse its PID.
    """
    found = []
    info = stat(os.getpid() if pid is None else pid)
    while info is not None:
        parent = info[0]
        if parent <= 1 or "deepspeed" not in cmdline(parent):
            break
        pinfo = stat(parent)
        if pinfo is None:
            break
        found.append((parent, pinfo[1]))
        info = pinfo
    return found


def alive(pid: int, start: str, *, stat=_proc_stat) -> bool:
    info = stat(pid)
    return info is not None and info[1] == start


class StopSignals:
    """Install at the start of training, ``restore()`` after it. ``raised`` is read at step boundaries."""

    def __init__(self, *, watch_launcher: bool | None = None, poll_s: float = 1.0):
        self.signum: int | None = None
        self.reason = ""
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        if watch_launcher is None:
            watch_launcher = "LOCAL_RANK" in os.environ and sys.platform.startswith("linux")
        self._watched = launcher_ancestors() if watch_launcher else []
        self._done = threading.Event()
        if self._watched:
            threading.Thread(target=self._watch, args=(poll_s,), daemon=True, name="fastssl-launcher-watch").start()

    @property
    def raised(self) -> bool:
        return self.signum is not None

    @property
    def code(self) -> int:
        """0: no request; a signal number; or LAUNCHER_GONE (agreed over ranks to name who was stopped)."""
        if self.signum is None:
            return 0
        return LAUNCHER_GONE if self.reason.startswith("the deepspeed launcher") else int(self.signum)

    def _request(self, signum: int, reason: str) -> None:
        if self.signum is None:
            self.signum, self.reason = signum, reason
            print(f"fastssl: {reason}: saving a checkpoint at the end of this step"
                  + (" (Ctrl-C again to exit at once)" if signum == signal.SIGINT else ""), file=sys.stderr, flush=True)

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            # A second Ctrl-C: the user wants out now. os._exit skips clean-up that could block.
            print("fastssl: second Ctrl-C: exiting now without a checkpoint; the last complete checkpoint is kept",
                  file=sys.stderr, flush=True)
            os._exit(EXIT_SIGINT)
        self._request(signum, _NAMES.get(signum, f"signal {signum}"))

    def _watch(self, poll_s: float) -> None:
        while not self._done.wait(poll_s):
            for pid, start in self._watched:
                if not alive(pid, start):
                    self._request(signal.SIGTERM, f"the deepspeed launcher (pid {pid}) is gone")
                    return

    def stopped(self, saved: Path, who: str | None = None) -> Interrupted:
        """The exception to raise once the checkpoint at ``saved`` is committed. ``who``: the request
        as agreed over ranks (``describe``), used when the signal reached another rank, not this one."""
        signum = self.signum or signal.SIGTERM
        reason = self.reason or who or "a stop request to another rank"
        return Interrupted(f"{reason}: checkpoint saved at {saved}; re-run the same command to resume", 128 + signum)

    def restore(self) -> None:
        self._done.set()
        for s, previous in self._previous.items():
            signal.signal(s, previous)

    def __enter__(self) -> "StopSignals":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()
