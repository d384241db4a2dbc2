"""Resuming with changed settings: every config key is either applied or refused (issue 25, class 2).

``RULES`` is the one table (the README's "Resume" section shows it): for each key (or section) of
the config, what a resume does when its value differs from the one the checkpoint was trained with.

- **apply**: the new value is used from the resumed step on; the run says so in one line and the
  ``config.yaml`` written at set-up records it. The optimizer hyperparameters (learning rate and its
  schedule, weight decay, betas) live in the checkpoint's optimizer and scheduler state, so
  ``apply_optimizer_settings`` writes the configured values over the loaded ones; the others are
  read from the config at every use.
- **refuse**: the checkpoint cannot honour a new value (another model, loss, data stream, number
  format, ...). The run stops before anything is written, with one line naming the key, the value
  in the checkpoint and the value now, and how to go on.
- **global batch**: ``optim.batch_size`` and ``optim.grad_accum`` may change only where the global
  batch stays the same on another rank count (``world_change.adapt`` sets grad_accum so); on the
  same rank count the data loader's position is per micro-batch, so a change is refused.

A key that the table does not name is refused: a new config key must be classified here before a
resume may change it. The data set itself is compared too: the checkpoint records a fingerprint of
both splits (``preflight.data_fingerprint``) and a resume on other files is refused.

What the checkpoint was trained with is read from the ``config.yaml`` saved inside the checkpoint
folder (``checkpoint.save``), or, for checkpoints written before that, from the run's own
``config.yaml``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml

from fastssl.config import ConfigError, TrainConfig

log = logging.getLogger("fastssl")

APPLY, REFUSE, GLOBAL_BATCH = "apply", "refuse", "global batch"

#: (key or section, rule, why). The most specific entry wins; a key no entry covers is refused.
RULES: tuple[tuple[str, str, str], ...] = (
    ("run.resume", APPLY, "where to resume from"),
    ("run.output_dir", APPLY, "the same folder under another spelling"),
    ("run.seed", REFUSE, "the data order and augmentation streams continue from the checkpoint"),
    ("engine.log_every_steps", APPLY, "read at every step"),
    ("engine.ckpt_every_steps", APPLY, "read at every step"),
    ("engine.keep_checkpoints", APPLY, "read at every save"),
    ("engine.progress", APPLY, "display only"),
    ("engine.compile", APPLY, "the same weights, compiled or not"),
    ("engine.compile_mode", APPLY, "the same weights, compiled or not"),
    ("engine.channels_last", APPLY, "the same weights in another memory layout (the optimizer state follows at load)"),
    ("engine.precision", REFUSE, "the optimizer state is stored in this number format"),
    ("engine.amp", REFUSE, "the optimizer state is DeepSpeed's bf16 wrapper's or torch's own"),
    ("engine.zero_stage", REFUSE, "the optimizer state is sharded by this stage"),
    ("eval", APPLY, "evaluation only; the scores after the resume use the new settings"),
    ("optim.epochs", APPLY, "the LR schedule is laid out over the new length from the resumed step on"),
    ("optim.max_steps", APPLY, "the LR schedule is laid out over the new length from the resumed step on"),
    ("optim.base_lr", APPLY, "written over the checkpoint's optimizer and scheduler state"),
    ("optim.min_lr_ratio", APPLY, "the schedule is rebuilt from the config"),
    ("optim.warmup_epochs", APPLY, "the schedule is rebuilt from the config"),
    ("optim.weight_decay", APPLY, "written over the checkpoint's optimizer state"),
    ("optim.betas", APPLY, "written over the checkpoint's optimizer state"),
    ("optim.clip_grad", APPLY, "read at every step"),
    ("optim.batch_size", GLOBAL_BATCH, "the data position is kept per micro-batch"),
    ("optim.grad_accum", GLOBAL_BATCH, "the data position is kept per micro-batch"),
    ("model.attn_backend", APPLY, "the same attention, another kernel"),
    ("data.root", APPLY, "a data set moved elsewhere: its files are compared by their fingerprint instead"),
    ("data.source", APPLY, "read only to prepare a missing data set, which the fingerprint then checks"),
    ("model", REFUSE, "the checkpoint holds weights of this model"),
    ("method", REFUSE, "one run trains one objective"),
    ("data", REFUSE, "the data stream and its augmentation continue from the checkpoint"),
    ("deepspeed", REFUSE, "DeepSpeed's own state follows these settings"),
)


#: Applied without a notice: how the run was started, not what it computes.
_UNSAID = ("run.resume", "run.output_dir", "engine.progress")


def rule_for(key: str) -> tuple[str, str]:
    """(rule, why) of a dotted key: the longest table entry that is the key or one of its sections."""
    best = None
    for prefix, rule, why in RULES:
        if (key == prefix or key.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, rule, why)
    return (best[1], best[2]) if best else (REFUSE, "not classified for resuming")


def flatten(tree, prefix: str = "") -> dict:
    """{dotted key: value} of a config tree (lists and scalars are leaves; an empty section has none)."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: tree} if prefix else {}


def changes(old: dict, new: dict) -> dict[str, tuple]:
    """{key: (old value, new value)} of every leaf that differs (a key absent on one side is None there)."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _default_of(cfg: TrainConfig, key: str):
    """The documented default of ``key`` in ``cfg``'s schema (the method's own section for method.*), JSON-like."""
    obj = cfg
    *parents, last = key.split(".")
    for part in parents:
        obj = getattr(obj, part, None)
    field = type(obj).model_fields.get(last) if obj is not None and hasattr(type(obj), "model_fields") else None
    if field is None:
        return _NO_DEFAULT
    value = field.get_default(call_default_factory=True)
    return json.loads(json.dumps(value.model_dump(mode="json") if hasattr(value, "model_dump") else value, default=str))


_NO_DEFAULT = object()


def _new_key_at_its_default(key: str, old_flat: dict, cfg: TrainConfig, now) -> bool:
    """A key the checkpoint's config does not have (added to fastssl since) left at its default: the
    run goes on as it was configured, so it is no change. Set to anything else, the table decides."""
    if key in old_flat:
        return False
    if now is None:
        return True  # a section that is absent on both sides in effect (None / {})
    default = _default_of(cfg, key)
    return default is not _NO_DEFAULT and json.loads(json.dumps(default)) == now


def real_changes(old: dict, cfg: TrainConfig) -> dict[str, tuple]:
    """``changes`` less what is no change in effect: how the run was started (``_UNSAID``), a key added
    to fastssl since ``old`` was written and left at its default, a key fastssl no longer has."""
    new = cfg.model_dump(mode="json")
    old_flat, new_flat = flatten(old), flatten(new)
    return {k: v for k, v in changes(old, new).items()
            if k not in _UNSAID and k in new_flat and not _new_key_at_its_default(k, old_flat, cfg, v[1])}


def saved_config(folder: Path) -> tuple[dict | None, Path | None]:
    """The config the checkpoint was trained with, and the file it came from (None, None if unknown)."""
    for path in (Path(folder) / "config.yaml", Path(folder).parent.parent / "config.yaml"):
        try:
            tree = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(tree, dict):
            return tree, path
    return None, None


def _show(v) -> str:
    return "unset" if v is None else json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def check(cfg: TrainConfig, folder: Path | None, *, world_changed: bool) -> list[str]:
    """Refuse (ConfigError, one line) or return the applied changes ("key old → new") of resuming ``folder``."""
    if folder is None:
        return []
    old, source = saved_config(folder)
    if old is None:
        log.warning("checkpoint %s has no record of its settings: resuming with this config as it is", folder)
        return []
    applied, refused = [], []
    for key, (before, now) in real_changes(old, cfg).items():
        rule, why = rule_for(key)
        if rule == APPLY or (rule == GLOBAL_BATCH and world_changed):  # world_change.adapt keeps the global batch
            applied.append(f"{key} {_show(before)} → {_show(now)}")
        else:
            refused.append((key, before, now, why))
    if refused:
        key, before, now, why = refused[0]
        more = f" (also changed: {', '.join(k for k, *_ in refused[1:4])}{' ...' if len(refused) > 4 else ''})" if len(refused) > 1 else ""
        raise ConfigError(
            f"{key} changed since checkpoint {folder} ({_show(before)} there, {_show(now)} now) and a resumed run cannot "
            f"change it ({why}){more}: set {key}={_show(before)} to resume, or start fresh with run.resume=never "
            f"(moves this run aside) or another run.output_dir"
        )
    return applied


def check_data(folder: Path | None, fingerprint: dict, root: Path) -> None:
    """Refuse a resume on other data than the checkpoint was trained on (train and test split)."""
    if folder is None:
        return
    try:
        saved = json.loads((Path(folder) / DATA_FILE).read_text())
    except (OSError, ValueError):
        return  # a checkpoint from before data fingerprints: nothing to compare
    if not isinstance(saved, dict) or not isinstance(fingerprint, dict):
        return  # synthetic batches (no data set) on either side; data.synthetic itself is in the table
    for split in ("train", "test"):
        a, b = saved.get(split), fingerprint.get(split)
        if a != b and a is not None:
            what = (f"{a['images']} images in {a['classes']} classes there, {b['images']} in {b['classes']} now"
                    if (a["images"], a["classes"]) != (b["images"], b["classes"]) else "the same count, other files or sizes")
            raise ConfigError(
                f"data.root {root}/{split} changed since checkpoint {folder} ({what}); a resumed run must see the data "
                f"it was trained on: restore it, or start fresh with run.resume=never or another run.output_dir"
            )


DATA_FILE = "data.json"


def check_length(folder: Path | None, done: int, total: int, cfg: TrainConfig) -> None:
    """A run is continued, never shortened: refuse a config that ends before the checkpoint's step."""
    if folder is not None and done > total:
        o = cfg.optim
        asked = f"optim.max_steps={o.max_steps}" if o.max_steps is not None else f"optim.epochs={o.epochs} ({total} steps)"
        raise ConfigError(
            f"checkpoint {folder} is at step {done} and {asked} ends before it; a run is continued, never shortened: "
            f"ask for at least {done} steps, or start fresh with run.resume=never or another run.output_dir"
        )


def say_applied(applied: list[str], folder: Path, step: int) -> None:
    if applied:
        log.warning("resuming %s at step %d with changed settings, applied from here on (config.yaml records them): %s",
                    folder, step, "; ".join(applied))


def fresh_optimizer_settings(engine) -> dict:
    """The hyperparameters the configured optimizer and scheduler start with, taken before a checkpoint
    is loaded over them (``apply_optimizer_settings`` puts them back)."""
    opt, sched = engine.optimizer, engine.lr_scheduler
    return {"base_lrs": list(getattr(sched, "base_lrs", [])),
            "groups": [{k: g[k] for k in ("weight_decay", "betas") if k in g} for g in opt.param_groups]}


def apply_optimizer_settings(engine, fresh: dict) -> None:
    """Write the configured learning rates, weight decay and betas over those a checkpoint restored.

    ``torch.optim`` restores every group's hyperparameters and ``LambdaLR`` its base LRs from the
    checkpoint, which would keep training with the old ``optim.base_lr`` / ``weight_decay`` / ``betas``
    while the config records the new ones. The schedule's shape (warm-up, cosine, min ratio, length)
    is rebuilt from the config anyway: ``LambdaLR`` does not save its functions.
    """
    opt, sched = engine.optimizer, engine.lr_scheduler
    for group, settings in zip(opt.param_groups, fresh["groups"]):
        group.update(settings)
    if sched is None or not fresh["base_lrs"]:
        return
    sched.base_lrs = list(fresh["base_lrs"])
    lrs = [base * fn(sched.last_epoch) for base, fn in zip(sched.base_lrs, sched.lr_lambdas)]
    for group, base, lr in zip(opt.param_groups, sched.base_lrs, lrs):
        group["initial_lr"], group["lr"] = base, lr
    sched._last_lr = lrs
