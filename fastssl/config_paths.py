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


def _forms(p: Path) -> tuple[Path, Path]:
    """The path as written (absolute, normalised) and with every symlink of its existing part resolved."""
    plain = Path(os.path.normpath(os.path.abspath(os.path.expanduser(str(p)))))
    return plain, Path(os.path.realpath(plain))


def overlap_problem(out: Path, data_root: Path) -> str | None:
    """Why ``run.output_dir`` and ``data.root`` must not share files, or None.

    A run writes into its output directory (curves.png, checkpoints, a ``previous-*`` folder on a
    fresh start, which moves everything there aside), and the data set is read as class folders: an
    output directory inside the data becomes a class of the next run, and a data root inside (or
    equal to) the output directory is moved aside by ``run.resume=never``. So neither may contain
    the other, compared as written and with symlinks resolved (either way of reaching it counts).
    """
    for o, d in zip(_forms(out), _forms(data_root)):
        shown = "" if (o, d) == (Path(out), Path(data_root)) else f" (as {o} and {d})"
        if o == d:
            return (f"run.output_dir {out} is the data folder data.root {data_root}{shown}; the run would write "
                    "into the data set: choose an output_dir outside data.root")
        if d in o.parents:
            return (f"run.output_dir {out} is inside data.root {data_root}{shown}; the run's files would become "
                    "part of the data set: choose an output_dir outside data.root")
        if o in d.parents:
            return (f"data.root {data_root} is inside run.output_dir {out}{shown}; a fresh start (run.resume=never) "
                    "would move the data set aside: choose an output_dir that does not hold the data")
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
