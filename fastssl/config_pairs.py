"""Config-time checks that need two keys (issue 25, class 4): one line, exit 2, before any work.

Each section validates its own fields; what only a pair of keys decides is checked here, on the
whole ``TrainConfig`` (``config.TrainConfig._consistent`` calls ``problem``). Without these, each
case failed after start-up with a rank traceback, or trained on something else than asked:
- a mask ratio that keeps no patch of the image's patch grid (one > 0 always masks one: K rounds down);
- more chunks (online or target) than the image has patches;
- a per-rank batch a method cannot use: one image gives an in-batch contrastive loss no negative,
  and a BatchNorm head cannot normalise a single value per channel;
- a key queue that does not take whole batches (MoCo v2, SwAV; again with the rank count at set-up);
- a warm-up (or SwAV's prototype freeze or queue start) not shorter than the run, in epochs. With
  ``optim.max_steps`` the run's length in epochs needs the data set; ``session.setup`` then says
  in one line that the warm-up is shortened to fit;
- ZeRO 3 with a method that reads weights outside their own module's forward (``ZERO3_BLOCKERS``).
"""
from __future__ import annotations

#: Methods whose loss takes its negatives from the other images of the batch.
IN_BATCH_CONTRASTIVE = ("simclr", "mocov3", "mmoco", "can")

# ZeRO 3 keeps every weight partitioned (an empty tensor on each rank) except while its own module runs
# forward or backward, where DeepSpeed gathers it (weights under ``stage3_param_persistence_threshold``,
# 1e5 elements by default, stay whole: a tiny model hides this, ViT-B's and ResNet-50's large weights do
# not). A method that reads a weight anywhere else cannot train on it. Checked on CPU with every weight
# partitioned (threshold 0; tests/engine/test_zero3.py): SimCLR / DCL (Accel's hard pairs too) and SimSiam give ZeRO 0's
# losses; the methods below raise at their first step, SwAV trains on unnormalised prototypes unsaid.
_EMA = "its momentum (EMA) target is updated from the online weights after every step"
_PATCH_VIEWS = "the packed ViT embeds its patch views with the patch convolution's weight outside that convolution's forward"
ZERO3_BLOCKERS = {"byol": _EMA, "mocov2": _EMA, "mocov3": _EMA, "mmoco": _EMA, "mbyol": _EMA,
                  "mae": _PATCH_VIEWS, "can": _PATCH_VIEWS, "dac": _PATCH_VIEWS,
                  "swav": "it normalises its prototypes' weights in place before their forward, every step"}


def _num_patches(cfg) -> int | None:
    from fastssl.models.encoder import encoder_family

    if encoder_family(cfg.model.arch) != "vit":
        return None
    side = (cfg.model.img_size or cfg.data.image_size) // cfg.model.patch_size
    return side * side


def _heads(section, path: str = "method"):
    """(dotted name, HeadConfig) of every head in a method section."""
    from fastssl.models.heads import HeadConfig

    for name in type(section).model_fields:
        value = getattr(section, name)
        if isinstance(value, HeadConfig):
            yield f"{path}.{name}", value


def _mask_problem(cfg, n: int) -> str | None:
    m = cfg.method
    ratio = getattr(m, "mask_ratio", None)
    if ratio is None:
        return None
    from fastssl.methods.masked_image import kept_count

    kept = kept_count(n, ratio)
    grid = f"{n} patches ({cfg.model.img_size or cfg.data.image_size} px / model.patch_size={cfg.model.patch_size}, squared)"
    if kept < 1:
        return (f"method.mask_ratio={ratio} keeps no patch of the {grid}; lower method.mask_ratio to at most "
                f"{1 - 1 / n:.4g} or use a smaller model.patch_size")
    if m.name == "dac":
        from fastssl.methods.dac import small_size

        try:
            small_size(cfg.model.img_size or cfg.data.image_size, cfg.model.patch_size, ratio)
        except ValueError as err:
            return str(err)
    return None


def _chunk_problem(cfg, n: int) -> str | None:
    for key in ("n_chunks", "target_chunks"):
        chunks = getattr(cfg.method, key, None)
        if chunks is not None and chunks > n:
            return (f"method.{key}={chunks} is more chunks than the image has patches ({n} at "
                    f"model.patch_size={cfg.model.patch_size}); use at most {n} chunks or a smaller model.patch_size")
    return None


def _batch_problem(cfg) -> str | None:
    b = cfg.optim.batch_size
    if b >= 2:
        return None
    name = cfg.method.name
    if name in IN_BATCH_CONTRASTIVE:
        return (f"optim.batch_size={b}: method {name} takes its negatives from the other images of the batch, "
                "so it needs at least 2 images per rank; raise optim.batch_size")
    for where, head in _heads(cfg.method):
        if head.norm == "batchnorm" and (head.num_layers >= 2 or head.last_norm):
            return (f"optim.batch_size={b}: {where} normalises with BatchNorm over the batch, which needs at least 2 "
                    f"images per rank; raise optim.batch_size or set {where}.norm=layernorm")
    return None


def queue_problem(cfg, world: int = 1) -> str | None:
    """A key queue must take whole batches (``KeyQueue.enqueue``): MoCo v2's ``queue_size`` a multiple
    of the keys enqueued per step (the global micro-batch with gather_distributed), SwAV's per-rank
    ``queue_length`` of the per-rank batch. ``world``: the rank count (1 at config time)."""
    m, b = cfg.method, cfg.optim.batch_size
    size = getattr(m, "queue_size", None) if m.name == "mocov2" else getattr(m, "queue_length", 0) if m.name == "swav" else None
    if not size:
        return None
    per_step = b * world if (m.name == "mocov2" and getattr(m, "gather_distributed", True)) else b
    key = "method.queue_size" if m.name == "mocov2" else "method.queue_length"
    if size % per_step:
        ranks = f" × {world} ranks" if per_step != b else ""
        fit = size - size % per_step or per_step
        return (f"{key}={size} must be a multiple of the {per_step} keys enqueued per step (optim.batch_size={b}{ranks}); "
                f"use {key}={fit} or a batch size that divides it")
    return None


def _length_problem(cfg) -> str | None:
    o = cfg.optim
    if o.max_steps is not None:
        return None  # in steps: known once the data set is scanned (session.setup says if it is shortened)
    if o.warmup_epochs > 0 and o.warmup_epochs >= o.epochs:
        return (f"optim.warmup_epochs={o.warmup_epochs:g} is not shorter than optim.epochs={o.epochs}: the learning "
                f"rate would never reach its peak nor decay; lower optim.warmup_epochs (e.g. {max(o.epochs / 10, 0.01):g})")
    freeze = getattr(cfg.method, "freeze_prototypes_epochs", 0) or 0
    if freeze >= o.epochs:
        return (f"method.freeze_prototypes_epochs={freeze:g} is not shorter than optim.epochs={o.epochs}: the "
                "prototypes would never train; lower it")
    if getattr(cfg.method, "queue_length", 0) and cfg.method.queue_start_epoch >= o.epochs:
        return (f"method.queue_start_epoch={cfg.method.queue_start_epoch:g} is not before optim.epochs={o.epochs}: the "
                "queue (method.queue_length) would never be used; lower it or set method.queue_length=0")
    return None


def _layout_problem(cfg) -> str | None:
    """engine.channels_last=true where it cannot apply (fastssl/engine/layout.py says why; the case that
    depends on the machine, amp=auto resolving to DeepSpeed's bf16, is refused at set-up)."""
    from fastssl.models.encoder import encoder_family

    e = cfg.engine
    if e.channels_last is not True:
        return None
    if encoder_family(cfg.model.arch) != "resnet":
        return (f"engine.channels_last=true applies to ResNet encoders (convolutions), not {cfg.model.arch!r}; "
                "use engine.channels_last=auto")
    if e.zero_stage != 0 or e.amp == "deepspeed":
        return (f"engine.channels_last=true needs ZeRO 0 with the optimizer over the model's own weights "
                f"(engine.amp=autocast, or fp32); this run has engine.zero_stage={e.zero_stage}, engine.amp={e.amp}; "
                "use engine.channels_last=auto")
    return None


def _zero3_problem(cfg) -> str | None:
    name = cfg.method.name
    why = ZERO3_BLOCKERS.get(name) if cfg.engine.zero_stage == 3 else None
    if why is None:
        return None
    return (f"engine.zero_stage=3 keeps every weight partitioned outside its own module's forward, and method {name} "
            f"reads weights there ({why}); use engine.zero_stage=2 (gradients and optimizer state partitioned; "
            "the weights of these models fit on one GPU)")


def accel_problem(cfg, own_weights: bool) -> str | None:
    """Accel's partial back-prop leaves the stages after the drawn one without a gradient, so that they
    stay as they are that step (torch's optimizers skip a weight whose gradient is None). DeepSpeed's
    bf16 wrapper and its ZeRO 1 / 2 optimizer give such a weight a zero gradient instead, and AdamW's
    momentum and weight decay then move every stage on every step (seen on CPU: all four stages moved
    at ZeRO 2, only the drawn ones at ZeRO 0). ``own_weights``: whether this run's optimizer steps the
    model's own weights (``engine.amp.own_weights``, which resolves ``engine.amp=auto`` on the machine:
    so ``session.setup`` asks, once the device is known)."""
    accel = getattr(cfg.method, "accel", None)
    if accel is None or not accel.partial_backprop or own_weights:
        return None
    e = cfg.engine
    which = f"engine.zero_stage={e.zero_stage}" if e.zero_stage else "DeepSpeed's bf16 wrapper (engine.amp resolves to deepspeed)"
    return (f"method.accel.partial_backprop needs an optimizer that skips the stages a step does not reach, i.e. ZeRO 0 in "
            f"fp32 or with engine.amp=autocast; with {which} DeepSpeed gives them a zero gradient and AdamW still moves "
            "them; use engine.zero_stage=0 with engine.amp=autocast (or fp32)")


def problem(cfg) -> str | None:
    """The first two-key mistake in ``cfg`` (a ``TrainConfig``), as one line, or None."""
    layout = _layout_problem(cfg) or _zero3_problem(cfg)
    if layout:
        return layout
    n = _num_patches(cfg)
    if n is not None:
        found = _mask_problem(cfg, n) or _chunk_problem(cfg, n)
        if found:
            return found
    return _batch_problem(cfg) or queue_problem(cfg) or _length_problem(cfg)


def shortened_warmup(cfg, plan) -> str | None:
    """A one-line notice when ``optim.max_steps`` ends the run before the warm-up in epochs would."""
    wanted = int(round(cfg.optim.warmup_epochs * plan.steps_per_epoch))
    if wanted > plan.warmup_steps:
        return (f"optim.warmup_epochs={cfg.optim.warmup_epochs:g} is {wanted} steps but optim.max_steps={plan.total_steps} "
                f"ends the run first: the warm-up is shortened to {plan.warmup_steps} steps")
    return None
