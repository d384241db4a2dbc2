"""The training run: set-up, epochs of training, finish.

What can go wrong in a long run is handled here and in ``epoch.py``: SIGTERM saves and exits, a
non-finite loss stops with the last good checkpoint kept, and any kill is recovered by re-running
the same command (``run.resume: auto``).
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from fastssl.config import TrainConfig
from fastssl.engine import disk, run_dir, signals
from fastssl.engine.amp import AutocastForward
from fastssl.engine.epoch import Terminated, train_one_epoch
from fastssl.engine.session import Session, TrainingStopped, setup, write_json
from fastssl.engine.signals import StopSignals
from fastssl.eval.export import encoder_state_dict, export_spec, save_encoder
from fastssl.eval.run_knn import Score, score_from_dict

__all__ = ["run", "RunSummary", "Terminated", "TrainingStopped", "EXIT_SIGTERM"]

log = logging.getLogger("fastssl")

EXIT_SIGTERM = 143


@dataclass
class RunSummary:
    steps: int
    images_per_second: float
    eval_init: list[Score]
    eval_final: list[Score]
    encoder_path: Path | None
    steady_images_per_second: float | None = None  # from the first log step to the last (warm-up left out)


class _ProgressBar:
    """tqdm on rank 0 when enabled, nothing otherwise."""

    def __init__(self, s: Session):
        self.bar = None
        if s.is_main and s.cfg.engine.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=s.plan.total_steps, initial=s.state.global_step, desc="train", unit="step", dynamic_ncols=True)

    def __enter__(self):
        return self.bar

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


def evaluate(s: Session) -> list[Score]:
    if s.evaluator is None:  # eval.enabled=false
        return []
    encoder = s.method.encoder if s.autocast is None else AutocastForward(s.method.encoder, s.device.type, s.autocast)
    scores = s.evaluator(encoder, s.dtype)
    s.metrics.write(s.state.global_step, {x.label: x.accuracy for x in scores}, kind="eval")
    return scores


def evaluate_at_init(s: Session) -> list[Score]:
    """The randomly initialised encoder's scores, computed once per run and kept in knn_init.json."""
    init_file = s.out / "knn_init.json"
    if s.resumed_from is None and s.is_main:
        init_file.unlink(missing_ok=True)
    s.barrier()  # no rank may read a stale knn_init.json
    if init_file.exists():
        return [score_from_dict(d) for d in json.loads(init_file.read_text())]
    if not (s.cfg.eval.knn_at_init and s.state.global_step == 0):
        return []
    scores = evaluate(s)  # step 0 of the curves
    if s.is_main:
        write_json(init_file, [asdict(x) for x in scores])
        log.info("at random init: %s", ", ".join(f"{x.label}={100 * x.accuracy:.2f}%" for x in scores))
    return scores


def finish(s: Session, eval_init: list[Score]) -> RunSummary:
    """Final checkpoint, evaluation, curves, encoder export and summary."""
    if s.last_checkpoint is None or s.last_checkpoint.name != f"step{s.state.global_step}":
        s.save()
    sd = encoder_state_dict(s.method.encoder)  # exported before the evaluation, which must not be able to cost it
    encoder_path = None
    if s.is_main:  # every file follows the checkpoint rule: temp + rename, a full disk is one line (exit 4)
        target = s.out / "encoder.pt"
        with disk.written(target, target.with_name("encoder.pt.tmp"), target.with_name("encoder.json.tmp")):
            encoder_path = save_encoder(sd, target, export_spec(s.method.encoder))
    eval_final = evaluate(s)
    s.metrics.close()
    if s.is_main:
        from fastssl.report import plot_curves

        disk.atomic_write(s.out / "curves.png", lambda tmp: plot_curves(s.metrics.path, tmp), tmp=s.out / ".curves.tmp.png")
    summary = RunSummary(s.state.global_step, s.speed.images_per_second, eval_init, eval_final, encoder_path,
                         s.speed.steady_images_per_second)
    if s.is_main:
        write_json(s.out / "summary.json", asdict(summary))
    return summary


def run(cfg: TrainConfig) -> RunSummary:
    signals.phase[0] = "set-up"
    s = setup(cfg)
    try:
        eval_init = evaluate_at_init(s)
        every = cfg.eval.knn_every_epochs
        with StopSignals() as stop, _ProgressBar(s) as bar:  # SIGTERM, Ctrl-C, launcher gone: save at the step boundary
            while s.state.global_step < s.plan.total_steps:
                epoch_done = train_one_epoch(s, stop, bar)
                if epoch_done and every and s.state.epoch % every == 0 and s.state.global_step < s.plan.total_steps:
                    evaluate(s)
        signals.phase[0] = "the final evaluation and export"
        summary = finish(s, eval_init)
        if s.is_main:
            run_dir.mark_finished(cfg, s.state.global_step, s.plan.steps_per_epoch)  # a re-run of this config now says "finished"
        return summary
    finally:
        s.release()
