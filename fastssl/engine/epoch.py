"""One epoch of training (or the rest of it after a resume): forward, backward, step, hooks, logs,
checkpoints. Returns early when the step budget is used up or a stop is requested."""
from __future__ import annotations

import torch
import torch.distributed as dist

from fastssl.engine.amp import clip_gradients, resolve_precision
from fastssl.engine.session import Session, TrainingStopped
from fastssl.engine.unit_rows import normalize_rows_
from fastssl.methods.base import AfterStep, UnitRows


class Terminated(Exception):
    """SIGTERM was received; a checkpoint was saved."""


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


def _who_stopped(stop, s: Session) -> str:
    """'SIGTERM to rank 1' (the lowest rank that got a request), agreed over ranks: the rank that
    prints the line may not be the one the signal reached."""
    from fastssl.engine.signals import describe

    codes = torch.zeros(s.world, device=s.device)
    codes[s.rank] = float(stop.code)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(codes, op=dist.ReduceOp.MAX)
    for rank, code in enumerate(codes.tolist()):
        if code:
            return describe(int(code), rank)
    return "a stop request"


def _is_check_step(step: int, s: Session) -> bool:
    """Optimizer steps at which the loss is read on the host (one device sync): log and checkpoint
    steps and the last one. The same on every rank, so the ranks' collectives stay in step."""
    e = s.cfg.engine
    return step % e.log_every_steps == 0 or step % e.ckpt_every_steps == 0 or step >= s.plan.total_steps


def train_one_epoch(s: Session, stop, bar=None) -> bool:
    """Train until the loader's epoch ends or ``s.plan.total_steps`` is reached.

    ``stop.raised`` (``signals.StopSignals``) is checked at every step. Returns True when the epoch's data
    was used up (the caller counts the epoch), False when training ended inside it.
    """
    engine, state, plan, cfg = s.engine, s.state, s.plan, s.cfg
    after_step = s.method.after_step if isinstance(s.method, AfterStep) else None
    unit_rows = s.method.unit_rows() if isinstance(s.method, UnitRows) else []
    micro = 0
    watch = s.compile_watch
    s.speed.restart()
    # No host sync per step: the step's kernels are queued while the previous ones run. A non-finite
    # loss is OR-ed into a device flag and read (with the stop requests of all ranks) only at check
    # steps, before anything is logged or saved there, so no checkpoint or log line follows a
    # non-finite loss; the steps in between are at most wasted work. One rank alone also checks as
    # soon as a stop is requested (its flag is host-side, nothing to agree on).
    single = not (dist.is_initialized() and dist.get_world_size() > 1)
    # DeepSpeed's bf16 wrapper at ZeRO 0 skips a step whose gradients are not finite, silently (and its
    # LR schedule with it). Without loss scaling (bf16, fp32) a skip means non-finite gradients: the run
    # stops at once, as for a non-finite loss. DeepSpeed decided the skip on every rank alike, on the
    # host, so reading its counter is free. fp16 skips are its loss scaler at work and go on.
    skips_stop = resolve_precision(cfg.engine.precision) != "fp16"
    skipped = engine.skipped_steps
    bad = torch.zeros((), dtype=torch.bool, device=s.device)
    since = state.global_step + 1  # first step the flag covers
    for batch in s.loader:
        ctx = s.context(micro)
        out = engine(batch, ctx)
        loss = out.loss
        bad |= ~torch.isfinite(loss.detach())
        boundary = engine.is_gradient_accumulation_boundary()
        terminate = False
        if boundary and (_is_check_step(state.global_step + 1, s) or (single and stop.raised)):
            nonfinite, terminate = _agree([bool(bad.item()), stop.raised], s.device)
            if nonfinite:
                at = state.global_step + 1
                where = f"step {at}" if since == at else f"a step in {since}..{at}"
                raise TrainingStopped(f"non-finite loss ({loss.item()}) at {where}: training stopped; "
                                      f"last good checkpoint: {s.last_checkpoint or 'none'}")
            since = state.global_step + 2
        lr = engine.get_lr()[0]  # the LR this optimizer step uses (first group)
        engine.backward(loss)
        if boundary and s.clip_grad is not None:  # engine.amp=autocast at ZeRO 0 (fastssl.engine.amp)
            clip_gradients(s.method, s.clip_grad)
        engine.step()
        if not boundary:
            micro += 1
            continue
        if skips_stop and engine.skipped_steps != skipped:
            raise TrainingStopped(f"non-finite gradients at step {state.global_step + 1} (DeepSpeed skipped its update): "
                                  f"training stopped; last good checkpoint: {s.last_checkpoint or 'none'}")
        micro = 0
        if unit_rows:
            normalize_rows_(engine.optimizer, unit_rows)
        if after_step is not None:
            after_step(ctx)
        state.global_step += 1
        state.step_in_epoch += 1
        s.speed.step_done()
        compile_info = watch.metrics() if watch is not None else {}  # the first call marks the end of step 1
        if state.global_step % cfg.engine.log_every_steps == 0 or state.global_step == plan.total_steps:
            values = _mean_over_ranks({"loss": loss.detach(), **out.metrics}, s.device)  # syncs: the step is done
            s.speed.mark(state.global_step)
            values.update(lr=lr, images_per_s=s.speed.images_per_second, epoch=ctx.epoch + 1 / plan.steps_per_epoch, **compile_info)
            if s.speed.steady_images_per_second is not None:
                values["images_per_s_steady"] = s.speed.steady_images_per_second
            s.metrics.write(state.global_step, values)
            if bar is not None:
                bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.2e}", img_s=f"{values['images_per_s']:.0f}")
        if bar is not None:
            bar.update(1)
        if terminate:
            who = _who_stopped(stop, s)
            raise stop.stopped(s.save(), who)
        if state.global_step % cfg.engine.ckpt_every_steps == 0:
            s.save()
        if state.global_step >= plan.total_steps:
            return False
    state.epoch += 1
    state.step_in_epoch = 0
    return True
