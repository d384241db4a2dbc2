"""Config-time checks of the run's paths (``run.output_dir``, ``run.resume``): one line each.

Kept out of ``fastssl/config.py`` so the section stays declarative; these only look at the file
system, they create nothing (``run_dir.prepare`` does that, under its lock).
"""
from __future__ import annotations

import os
from pathlib import Path


def output_dir_problem(out: Path) -> str | None:
    """Why ``out`` cannot hold a run (a file, or not writable), or None."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        return f"run.output_dir {p} is a file, not a folder; choose another run.output_dir"
    probe = p
    while not probe.exists():  # the nearest existing folder is where the new ones would be made
        if probe == probe.parent:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        return f"run.output_dir {p} cannot be created: {probe} is a file; choose another run.output_dir"
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        return f"run.output_dir {p} is not writable (no write permission on {probe}); choose another run.output_dir"
    return None


def resume_problem(resume) -> str | None:
    """Why an explicit ``run.resume`` folder cannot be resumed from, or None ('auto' / 'never' pass)."""
    if resume in ("auto", "never"):
        return None
    folder = Path(resume)
    if not (folder / "rank0.pt").is_file():
        return (f"run.resume {folder} is not a fastssl checkpoint folder (expected <output_dir>/checkpoints/step<N>/); "
                "use run.resume=auto to take the newest checkpoint of run.output_dir")
    return None
