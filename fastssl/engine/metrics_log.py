"""Rank-0 metric sinks: TensorBoard and an append-only ``metrics.jsonl``."""
from __future__ import annotations

import json
import math
from pathlib import Path

from fastssl.engine import disk


def _step(line: str) -> int:
    """The step of a metrics line; a cut last line (a crash mid-write) counts as past any resume."""
    try:
        return int(json.loads(line).get("step", 0))
    except ValueError:
        return 1 << 62


def _truncate_quietly(f, size: int) -> None:
    try:
        f.truncate(size)
    except OSError:
        pass


class MetricsLog:
    """Writes scalars by step. On resume, records past the resumed step (written after the checkpoint
    by the interrupted run) are dropped first, so the file always describes one consistent run;
    ``resume_step=-1`` (a fresh start) drops them all."""

    def __init__(self, output_dir: Path, *, enabled: bool, resume_step: int):
        self.enabled = enabled
        self.path = output_dir / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if line and _step(line) <= resume_step]
            disk.atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(str(output_dir / "tensorboard"), purge_step=resume_step + 1 if resume_step >= 0 else 0)

    def write(self, step: int, values: dict[str, float], *, kind: str = "train") -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in values.items()}
        line = json.dumps({"step": step, "kind": kind, **clean}) + "\n"
        with open(self.path, "a") as f:
            start = f.tell()
            try:
                f.write(line)
                f.flush()
            except OSError as err:  # a full disk: no half line is left for the next reader
                _truncate_quietly(f, start)
                if disk.is_disk_full(err, self.path):
                    raise disk.DiskFull(self.path) from None
                raise
        with disk.written(self.path.parent / "tensorboard"):
            for key, value in values.items():
                self._tb.add_scalar(f"{kind}/{key}", float(value), step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
