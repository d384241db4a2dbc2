"""Everything a training run holds, built once: data, method, DeepSpeed engine, evaluation, state.

``setup(cfg)`` reads top to bottom in the order things are built; a resume (``run.resume``) is
applied at its end, so what follows never cares whether the run is fresh.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from fastssl import config_pairs as pair_checks
from fastssl.config import ConfigError, TrainConfig, dump_config
from fastssl.engine import amp
from fastssl.engine import checkpoint as ckpt
from fastssl.engine import disk, layout, lone_rank, peers, preflight, resume_rules, run_dir, world_change
from fastssl.engine.compile import CompileWatch, compile_regions
from fastssl.engine.distributed import device_for, init_distributed
from fastssl.engine.ds_config import deepspeed_config
from fastssl.engine.metrics_log import MetricsLog
from fastssl.engine.params import optimizer_groups
from fastssl.engine.schedule import StepPlan, lr_scheduler, plan_steps
from fastssl.eval.run_knn import Evaluator
from fastssl.methods.base import StepContext
from fastssl.engine.sync_bn import convert_sync_batchnorm
from fastssl.methods.registry import build_method

log = logging.getLogger("fastssl")


class TrainingStopped(Exception):
    """Training cannot continue (e.g. a non-finite loss); the message says why and what was kept."""


@dataclass
class Throughput:
    """Images/s over the optimizer steps timed so far (evaluation pauses excluded).

    ``images_per_second`` counts from the first step (compilation and warm-up included) and reads a
    host clock at step ends, which runs ahead of the device when nothing syncs. ``mark(step)`` is
    called right after a device sync (the log steps read the loss): the steady rate is taken
    between the first mark and the last one, so it leaves out the steps before the first log.
    """

    images_per_step: int
    seconds: float = 0.0
    steps: int = 0
    _tick: float = field(default_factory=time.perf_counter)
    _marks: list = field(default_factory=list)  # (optimizer step, training-clock seconds) after a sync

    def restart(self) -> None:
        self._tick = time.perf_counter()

    def step_done(self) -> None:
        now = time.perf_counter()
        self.seconds += now - self._tick
        self.steps += 1
        self._tick = now

    @property
    def images_per_second(self) -> float:
        return self.images_per_step * self.steps / max(self.seconds, 1e-9)

    def mark(self, step: int) -> None:
        """Record the training clock at ``step``, just after a device sync."""
        self._marks.append((step, self.seconds + time.perf_counter() - self._tick))

    @property
    def steady_images_per_second(self) -> float | None:
        """Images/s from the first mark to the last (None before two marks of one run)."""
        if len(self._marks) < 2 or self._marks[-1][0] <= self._marks[0][0]:
            return None
        (s0, t0), (s1, t1) = self._marks[0], self._marks[-1]
        return self.images_per_step * (s1 - s0) / max(t1 - t0, 1e-9)


@dataclass
class Session:
    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    out: Path
    plan: StepPlan
    loader: object  # fastssl.data.loader.TrainLoader or fastssl.data.synthetic.SyntheticLoader
    engine: object  # deepspeed.DeepSpeedEngine; engine.module is the method
    evaluator: Evaluator | None
    metrics: MetricsLog
    state: ckpt.TrainState
    dtype: torch.dtype  # the weights' dtype: evaluation casts its images to it
    resumed_from: Path | None
    last_checkpoint: Path | None
    speed: Throughput
    compile_watch: CompileWatch | None = None  # engine.compile: graph counts for the metrics
    autocast: torch.dtype | None = None  # engine.amp resolved to autocast: the forward's (and evaluation's) dtype
    clip_grad: float | None = None  # the loop clips to this norm itself (fastssl.engine.amp.loop_clips)
    records: dict = field(default_factory=dict)  # files saved in every checkpoint (resume_rules reads them)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def method(self):
        return self.engine.module

    @property
    def ckpt_root(self) -> Path:
        return self.out / "checkpoints"

    def context(self, micro_step: int = 0) -> StepContext:
        """The context of the optimizer step about to be taken."""
        p = self.plan
        return StepContext(self.state.global_step, p.steps_per_epoch, p.total_steps, self.cfg.run.seed, micro_step)

    def save(self) -> Path:
        """Checkpoint now (all ranks); remembers it as the last good one."""
        rank_state = {"loader": self.loader.state_dict(), "rng": ckpt.rng_state()}
        self.last_checkpoint = ckpt.save(self.engine, self.ckpt_root, self.state, rank_state,
                                         keep=self.cfg.engine.keep_checkpoints, rank=self.rank, records=self.records)
        return self.last_checkpoint

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def release(self) -> None:
        """Let the engine go with the session (``fastssl.engine.loop.run`` calls it last, whatever happened).

        DeepSpeed's ZeRO 1/2 optimizer registers a hook on each weight's gradient accumulator; the
        accumulator (C++) holds the hook, the hook the optimizer, the optimizer the weights: a cycle
        Python's collector cannot see through, so every ZeRO 1/2 engine built in a process outlived its
        run with its fp32 partitions and optimizer state (~0.4 GB of host memory per ViT-B engine on CPU
        in ``bench/train_host_ops.py``; on a GPU the same on the device, per benchmark row or test).
        ``engine.destroy()`` removes the hooks. It must not hide the error a failed run is raising."""
        try:
            self.engine.destroy()
        except Exception as err:  # noqa: BLE001 - releasing is best effort; the run's outcome stands
            log.warning("releasing the DeepSpeed engine failed (%s: %s)", type(err).__name__, err)


def write_json(path: Path, obj) -> None:
    found = ckpt.checkpoints(path.parent / "checkpoints")  # named if the disk is full
    disk.atomic_write_json(path, obj, last_complete=found[-1][1] if found else None)


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


def setup(cfg: TrainConfig) -> Session:
    import deepspeed

    from fastssl.data.loader import EvalLoader, TrainLoader, dali_problem
    from fastssl.data.synthetic import SyntheticLoader
    from fastssl.models.encoder import encoder_family
    from fastssl.models.vit.attention import forced_problem
    from fastssl.ops.dispatch import triton_problem

    rank, local_rank, world = init_distributed()
    peers.record(rank)  # who is who, so that a rank that dies later can be named
    device = device_for(local_rank)
    if (why := layout.problem(cfg.engine, cfg.model.arch, device.type == "cuda")) is not None:
        raise ConfigError(why)  # depends on this machine: refused once the device is known, before any write
    if not cfg.data.synthetic and (why := dali_problem()) is not None:
        raise ConfigError(why)  # likewise: this machine has no DALI
    if encoder_family(cfg.model.arch) == "vit" and (why := forced_problem(cfg.model.attn_backend, device, amp.dtypes(cfg.engine)[1])):
        raise ConfigError(why)  # likewise: a forced attention backend that does not run here
    if (why := triton_problem(getattr(cfg.method, "backend", "auto"), device)) is not None:
        raise ConfigError(why)  # likewise: the Triton kernels forced off CUDA
    if (why := pair_checks.accel_problem(cfg, amp.own_weights(cfg.engine, device.type == "cuda"))) is not None:
        raise ConfigError(why)  # depends on amp=auto's resolution on this machine
    out = Path(cfg.run.output_dir)
    run_dir.prepare(cfg, rank)  # lock; move an old run aside (resume=never); stop if finished
    folder = _resume_folder(cfg, out / "checkpoints")
    saved_world = int(ckpt.saved_shape(folder).get("world_size") or 0) if folder is not None else 0
    cfg = world_change.adapt(cfg, folder, world)  # another rank count: keep the global batch
    applied = resume_rules.check(cfg, folder, world_changed=saved_world not in (0, world))  # refuse before any write
    fingerprint = None  # synthetic batches have no data set to fingerprint
    if cfg.data.synthetic:  # no data set: only the batch arithmetic against the images it stands for
        preflight.check_batches(cfg, cfg.data.synthetic_images, world)
    else:
        _, fingerprint = preflight.prepare_data(cfg, rank, world)  # data set ready, batch arithmetic checked (one-line errors)
        resume_rules.check_data(folder, fingerprint, Path(cfg.data.root))
    if dist.is_initialized():
        dist.barrier()

    # ---- method, data, plan ----------------------------------------------------------------------
    torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
    # SimCLR's "global BN" (and the per-view BN of BYOL / SimSiam / MoCo v3 heads) on several CUDA ranks;
    # before the optimizer groups are taken, since the converted layers are new modules.
    method = convert_sync_batchnorm(build_method(cfg), device, world)
    o = cfg.optim
    loader_type = SyntheticLoader if cfg.data.synthetic else TrainLoader
    loader = loader_type(cfg.data, batch_size=o.batch_size, rank=rank, world_size=world, device=device,
                         seed=cfg.run.seed, crops=method.crops())
    plan = plan_steps(images_per_epoch=len(loader) * o.batch_size * world, micro_batch=o.batch_size, grad_accum=o.grad_accum,
                      world_size=world, epochs=o.epochs, max_steps=o.max_steps, warmup_epochs=o.warmup_epochs, base_lr=o.base_lr)
    if rank == 0 and (note := pair_checks.shortened_warmup(cfg, plan)):
        log.warning(note)
    if folder is not None:
        resume_rules.check_length(folder, ckpt.saved_step(folder), plan.total_steps, cfg)

    # ---- DeepSpeed engine --------------------------------------------------------------------------
    # Nothing was written so far (but the lock); from here on the outputs belong to this config.
    ds_cfg = deepspeed_config(cfg, plan, world)
    records = {"config.yaml": dump_config(cfg), resume_rules.DATA_FILE: json.dumps(fingerprint)}
    if rank == 0:
        run_dir.unfinish(out)  # training will change the outputs: the run is no longer finished
        disk.atomic_write_text(out / "config.yaml", records["config.yaml"], last_complete=folder)
        write_json(out / "deepspeed.json", ds_cfg)
    dtype, compute_dtype = amp.dtypes(cfg.engine)
    autocast = compute_dtype if amp.resolve_amp(cfg.engine) == amp.AUTOCAST else None
    if cfg.engine.compile:  # in place: parameter names (checkpoints, encoder.pt) stay those of an eager run
        compile_regions(method, cfg.engine.compile_mode, device, compute_dtype)
    groups, origin = optimizer_groups(method.param_groups(), o.weight_decay)
    amp.forget_autocast_of_earlier_engines()
    engine, _, _, _ = deepspeed.initialize(model=method, model_parameters=groups, config=ds_cfg,
                                           lr_scheduler=lr_scheduler(plan, o.min_lr_ratio, origin))
    lone_rank.skip_lone_allreduce(engine, cfg.engine.zero_stage, ds_cfg)  # one rank, ZeRO 0: nothing to reduce
    if rank == 0 and (hint := lone_rank.zero_hint(cfg.engine.zero_stage, engine.dp_world_size, device.type == "cuda")):
        log.info(hint)
    if layout.resolve(cfg.engine, cfg.model.arch, device.type == "cuda"):
        # After DeepSpeed's set-up (its broadcast views each weight as bytes) and before the first step
        # (the optimizer's moments are made then, in their weights' layout): fastssl/engine/layout.py.
        layout.apply(method)

    # ---- evaluation --------------------------------------------------------------------------------
    ev = cfg.eval
    evaluator = None  # eval.enabled=false (always so with data.synthetic): no scores
    if ev.enabled:
        evaluator = Evaluator(
            ev,
            EvalLoader(cfg.data, "train", batch_size=ev.batch_size, rank=rank, world_size=world, device=device, max_samples=ev.train_samples),
            EvalLoader(cfg.data, "test", batch_size=ev.batch_size, rank=rank, world_size=world, device=device, max_samples=ev.test_samples),
            progress=rank == 0 and cfg.engine.progress,
        )

    # ---- resume ------------------------------------------------------------------------------------
    state = ckpt.TrainState()
    if folder is not None:
        fresh = resume_rules.fresh_optimizer_settings(engine)
        state, rank_state = ckpt.load(engine, folder, rank)
        layout.relayout_optimizer_state(engine.optimizer)  # a checkpoint of the other engine.channels_last
        resume_rules.apply_optimizer_settings(engine, fresh)  # the configured LR, weight decay, betas win
        if rank_state is not None:
            loader.load_state_dict(rank_state["loader"])
            ckpt.set_rng_state(rank_state["rng"])
        else:  # written by another number of ranks
            world_change.skip_to(loader, state, o.grad_accum)
        if rank == 0:
            log.info("resumed from %s (step %d, epoch %d)", folder, state.global_step, state.epoch)
            resume_rules.say_applied(applied, folder, state.global_step)
    # A fresh start (nothing to resume) forgets the metrics of whatever ran in this folder before.
    metrics = MetricsLog(out, enabled=rank == 0, resume_step=state.global_step if folder is not None else -1)
    return Session(cfg, rank, world, device, out, plan, loader, engine, evaluator, metrics, state, dtype,
                   resumed_from=folder, last_checkpoint=folder, speed=Throughput(plan.global_batch),
                   compile_watch=CompileWatch() if cfg.engine.compile else None, records=records,
                   autocast=autocast, clip_grad=amp.loop_clips(cfg.engine, o.clip_grad))
