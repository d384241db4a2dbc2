"""The training run: DeepSpeed engine, train loop, checkpoint/resume, kNN evaluation, export.

One function, ``run(cfg)``, reads top to bottom in the order things happen. What can go wrong in a
long run is handled here: SIGTERM saves and exits, a non-finite loss stops with the last good
checkpoint kept, and any kill is recovered by re-running the same command (``run.resume: auto``).
"""
from __future__ import annotations

import json
import logging
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from fastssl.config import TrainConfig, dump_config
from fastssl.engine import checkpoint as ckpt
from fastssl.engine.distributed import device_for, init_distributed
from fastssl.engine.ds_config import deepspeed_config, resolve_precision
from fastssl.engine.metrics_log import MetricsLog
from fastssl.engine.params import param_groups
from fastssl.engine.schedule import lr_scheduler, plan_steps
from fastssl.eval.export import encoder_state_dict, save_encoder
from fastssl.eval.run_knn import KnnEvaluator, KnnScore
from fastssl.methods.build import build_method
from fastssl.methods.output import AfterStep

log = logging.getLogger("fastssl")

EXIT_SIGTERM = 143


class TrainingStopped(Exception):
    """Training cannot continue (e.g. a non-finite loss); the message says why and what was kept."""


class Terminated(Exception):
    """SIGTERM was received; a checkpoint was saved."""


@dataclass
class RunSummary:
    steps: int
    images_per_second: float
    knn_init: list[KnnScore]
    knn_final: list[KnnScore]
    encoder_path: Path | None


class _SigtermFlag:
    """Records SIGTERM instead of dying mid-step; the loop checks it at step boundaries."""

    def __init__(self):
        self.raised = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.raised = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


def _agree(flags: list[bool], device: torch.device) -> list[bool]:
    """Logical OR of per-rank flags across ranks (one tiny all-reduce), so every rank stops together."""
    t = torch.tensor([float(f) for f in flags], device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def _mean_over_ranks(values: dict[str, torch.Tensor], device: torch.device) -> dict[str, float]:
    keys = sorted(values)
    t = torch.stack([values[k].detach().float().to(device) for k in keys])
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


def _resume_folder(cfg: TrainConfig, root: Path) -> Path | None:
    if cfg.run.resume == "never":
        return None
    if cfg.run.resume == "auto":
        found = ckpt.checkpoints(root)
        return found[-1][1] if found else None
    folder = Path(cfg.run.resume)
    if not (folder / "rank0.pt").is_file():
        raise TrainingStopped(f"run.resume: {folder} is not a fastssl checkpoint folder")
    return folder


def run(cfg: TrainConfig) -> RunSummary:
    import deepspeed

    from fastssl.data.loader import EvalLoader, TrainLoader
    from fastssl.data.prepare import ensure_dataset

    rank, local_rank, world = init_distributed()
    device = device_for(local_rank)
    is_main = rank == 0
    out = Path(cfg.run.output_dir)
    ckpt_root = out / "checkpoints"
    folder = _resume_folder(cfg, ckpt_root)  # a bad run.resume path fails before any work
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        ensure_dataset(cfg.data)
    if dist.is_initialized():
        dist.barrier()

    # ---- data, model, engine ------------------------------------------------------------------
    torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
    loader = TrainLoader(cfg.data, batch_size=cfg.optim.batch_size, rank=rank, world_size=world, device=device, seed=cfg.run.seed)
    plan = plan_steps(
        images_per_epoch=len(loader) * cfg.optim.batch_size * world, micro_batch=cfg.optim.batch_size,
        grad_accum=cfg.optim.grad_accum, world_size=world, epochs=cfg.optim.epochs, max_steps=cfg.optim.max_steps,
        warmup_epochs=cfg.optim.warmup_epochs, base_lr=cfg.optim.base_lr,
    )
    method = build_method(cfg)
    ds_cfg = deepspeed_config(cfg, plan, world)
    if is_main:
        (out / "config.yaml").write_text(dump_config(cfg))
        _write_json(out / "deepspeed.json", ds_cfg)
    engine, _, _, _ = deepspeed.initialize(
        model=method, model_parameters=param_groups(method, cfg.optim.weight_decay), config=ds_cfg,
        lr_scheduler=lr_scheduler(plan, cfg.optim.min_lr_ratio),
    )
    precision = resolve_precision(cfg.engine.precision)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    ev = cfg.eval
    evaluator = KnnEvaluator(
        ev,
        EvalLoader(cfg.data, "train", batch_size=ev.batch_size, rank=rank, world_size=world, device=device, max_samples=ev.train_samples),
        EvalLoader(cfg.data, "test", batch_size=ev.batch_size, rank=rank, world_size=world, device=device, max_samples=ev.test_samples),
        progress=is_main and cfg.engine.progress,
    )

    # ---- resume ---------------------------------------------------------------------------------
    state = ckpt.TrainState()
    if folder is not None:
        state, rank_state = ckpt.load(engine, folder, rank)
        loader.load_state_dict(rank_state["loader"])
        ckpt.set_rng_state(rank_state["rng"])
        if is_main:
            log.info("resumed from %s (step %d, epoch %d)", folder, state.global_step, state.epoch)

    def save() -> Path:
        rank_state = {"loader": loader.state_dict(), "rng": ckpt.rng_state()}
        return ckpt.save(engine, ckpt_root, state, rank_state, keep=cfg.engine.keep_checkpoints, rank=rank)

    # A fresh start (nothing to resume) forgets the metrics of whatever ran in this folder before.
    metrics_log = MetricsLog(out, enabled=is_main, resume_step=state.global_step if folder is not None else -1)
    init_file = out / "knn_init.json"
    if folder is None and is_main:
        init_file.unlink(missing_ok=True)
    if dist.is_initialized():
        dist.barrier()  # no rank may read a stale knn_init.json
    knn_init: list[KnnScore] = []
    if init_file.exists():
        knn_init = [KnnScore(**d) for d in json.loads(init_file.read_text())]
    elif ev.knn_at_init and state.global_step == 0:
        knn_init = evaluator(engine.module.encoder, dtype)
        metrics_log.write(0, {s.label: s.accuracy for s in knn_init}, kind="eval")  # step 0 of the curves
        if is_main:
            _write_json(init_file, [asdict(s) for s in knn_init])
            log.info("kNN at random init: %s", ", ".join(f"{s.label}={100 * s.accuracy:.2f}%" for s in knn_init))

    # ---- train ----------------------------------------------------------------------------------
    sigterm = _SigtermFlag()
    bar = None
    if is_main and cfg.engine.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=plan.total_steps, initial=state.global_step, desc="train", unit="step", dynamic_ncols=True)
    images_per_step = plan.global_batch
    seen_time, seen_steps = 0.0, 0
    last_good: Path | None = folder
    try:
        while state.global_step < plan.total_steps:
            tick = time.perf_counter()
            for batch in loader:
                out_step = engine(batch.view1, batch.view2)
                loss = out_step.loss
                stop_nonfinite, stop_term = _agree([not torch.isfinite(loss.detach()).item(), sigterm.raised], device)
                if stop_nonfinite:
                    raise TrainingStopped(
                        f"non-finite loss ({loss.item()}) at step {state.global_step + 1}: training stopped; "
                        f"last good checkpoint: {last_good or 'none'}"
                    )
                boundary = engine.is_gradient_accumulation_boundary()
                lr = engine.get_lr()[0]  # the LR this optimizer step uses
                engine.backward(loss)
                engine.step()
                if not boundary:
                    continue
                state.global_step += 1
                state.step_in_epoch += 1
                if isinstance(engine.module, AfterStep):
                    engine.module.after_optimizer_step(state.global_step / plan.total_steps)
                now = time.perf_counter()
                seen_time += now - tick
                seen_steps += 1
                tick = now
                if state.global_step % cfg.engine.log_every_steps == 0 or state.global_step == plan.total_steps:
                    values = _mean_over_ranks({"loss": loss.detach(), **out_step.metrics}, device)
                    values["lr"] = lr
                    values["images_per_s"] = images_per_step * seen_steps / max(seen_time, 1e-9)
                    values["epoch"] = state.epoch + state.step_in_epoch / plan.steps_per_epoch
                    metrics_log.write(state.global_step, values)
                    if bar is not None:
                        bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}", img_s=f"{values['images_per_s']:.0f}")
                if bar is not None:
                    bar.update(1)
                if stop_term:
                    last_good = save()
                    raise Terminated(f"SIGTERM: checkpoint saved at {last_good}; re-run the same command to resume")
                if state.global_step % cfg.engine.ckpt_every_steps == 0:
                    last_good = save()
                if state.global_step >= plan.total_steps:
                    break
            else:  # the epoch's data is exhausted
                state.epoch += 1
                state.step_in_epoch = 0
                if ev.knn_every_epochs and state.epoch % ev.knn_every_epochs == 0 and state.global_step < plan.total_steps:
                    scores = evaluator(engine.module.encoder, dtype)
                    metrics_log.write(state.global_step, {s.label: s.accuracy for s in scores}, kind="eval")
                continue
            break
    finally:
        sigterm.restore()
        if bar is not None:
            bar.close()

    # ---- finish ---------------------------------------------------------------------------------
    if last_good is None or last_good.name != f"step{state.global_step}":
        save()
    knn_final = evaluator(engine.module.encoder, dtype)
    metrics_log.write(state.global_step, {s.label: s.accuracy for s in knn_final}, kind="eval")
    metrics_log.close()
    if is_main:
        from fastssl.report import plot_curves

        plot_curves(metrics_log.path, out / "curves.png")
    sd = encoder_state_dict(engine.module.encoder)
    encoder_path = save_encoder(sd, out / "encoder.pt") if is_main else None
    summary = RunSummary(state.global_step, images_per_step * seen_steps / max(seen_time, 1e-9), knn_init, knn_final, encoder_path)
    if is_main:
        _write_json(out / "summary.json", asdict(summary))
    return summary
