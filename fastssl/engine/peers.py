"""Which rank died: the survivors' one line instead of a collective's traceback (issue 25, class 8).

At set-up every rank learns (rank, host, pid) of all ranks (``record``, one ``all_gather_object``).
When a collective later fails because a peer is gone (gloo: "Connection closed by peer", NCCL: a
remote error or a timeout), ``lost_rank_message`` names the ranks whose process no longer exists
(checked through ``/proc`` for ranks on this host; ranks on other hosts are named as unknown) and
the last complete checkpoint. The lowest surviving rank on each host says it, so one line per host.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

#: (rank, host, pid) of every rank, this process's own first; empty before ``record``.
_peers: list[tuple[int, str, int]] = []
_me: list[int] = []

#: Phrases of a collective that failed because another process went away.
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Socket Timeout",
              "NCCL communicator was aborted", "remote process exited", "ProcessGroupGloo", "Gloo",
              "NCCL error", "DistNetworkError", "DistBackendError", "connection refused", "timed out", "Timed out")


def record(rank: int) -> None:
    """Collect (rank, host, pid) from all ranks; call once, right after the process group exists."""
    import torch.distributed as dist

    me = (rank, socket.gethostname(), os.getpid())
    _me[:] = [rank]
    _peers[:] = [me]
    if dist.is_initialized() and dist.get_world_size() > 1:
        everyone = [None] * dist.get_world_size()
        try:
            dist.all_gather_object(everyone, me)
        except Exception:  # a rank died before this point: the others are unknown, but there are others
            _peers[:] = [me] + [(r, None, 0) for r in range(dist.get_world_size()) if r != rank]
            raise
        _peers[:] = [tuple(p) for p in everyone]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped by the launcher) is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def looks_like_peer_loss(err: BaseException) -> bool:
    """Whether ``err`` is a collective failing because another rank went away."""
    if len(_peers) < 2:
        return False
    text = f"{type(err).__name__}: {err}"
    return any(s.lower() in text.lower() for s in _PEER_GONE)


def dead_ranks() -> tuple[list[int], list[int]]:
    """(ranks on this host whose process is gone, ranks on other hosts that cannot be checked)."""
    host = socket.gethostname()
    gone = [r for r, h, pid in _peers if h == host and not _alive(pid)]
    remote = [r for r, h, _ in _peers if h != host]
    return gone, remote


def should_speak() -> bool:
    """The lowest rank of this host still alive speaks for the survivors here."""
    host = socket.gethostname()
    alive = [r for r, h, pid in _peers if h == host and (r in _me or _alive(pid))]
    return bool(_me) and bool(alive) and _me[0] == min(alive)


def lost_rank_message(out: Path) -> str:
    from fastssl.engine.disk import last_checkpoint

    gone, remote = dead_ranks()
    unknown = [r for r, h, _ in _peers if h is None]
    remote = [r for r in remote if r not in unknown]
    me = _me[0] if _me else "?"
    if gone:
        who = ", ".join(f"rank {r} (pid {pid})" for r, _, pid in _peers if r in gone)
        what = f"{who} died"
    elif remote:
        what = f"a rank on another host ({', '.join(map(str, remote))}) stopped answering"
    elif unknown:
        what = f"another rank ({', '.join(map(str, unknown))}) stopped answering during set-up"
    else:
        what = "another rank stopped answering"
    last = last_checkpoint(out)
    return (f"rank {me} stops: {what}; the last complete checkpoint is {last or 'none'} "
            f"(re-run the same command to resume{'' if last else ', from the start'})")
