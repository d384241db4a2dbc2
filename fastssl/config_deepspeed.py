"""The user's ``deepspeed:`` block, checked before it reaches DeepSpeed.

DeepSpeed ignores unknown top-level keys silently (it reads the keys it knows), so a typo such as
``zero_optimisation`` would change nothing without a word. The known keys are collected from the
installed DeepSpeed's own sources: every ``NAME = "key"`` constant and every field of its pydantic
config models (0.2 s, once per process). That set is a superset of the real schema, so a key not in
it is certainly unknown; such a key gets a warning naming it (and the closest known key), not an
error, so a newer DeepSpeed key is never refused.

The batch sizes are fastssl's to derive (``optim.batch_size`` per rank, ``optim.grad_accum``, the
rank count); a block that sets them differently is refused with one line.
"""
from __future__ import annotations

import difflib
import functools
import importlib.util
import logging
import os
import re

from fastssl.config_base import ConfigError

log = logging.getLogger("fastssl")

_CONST = re.compile(r'^[A-Z][A-Z0-9_]*\s*=\s*["\']([a-z][a-z0-9_]*)["\']', re.M)
_FIELD = re.compile(r'^    ([a-z][a-z0-9_]*)\s*:\s*[A-Za-z]', re.M)
_ALIAS = re.compile(r'alias=["\']([a-z][a-z0-9_]*)["\']')
_GET = re.compile(r'\.get\(\s*["\']([a-z][a-z0-9_]*)["\']')
#: Keys DeepSpeed reads through spellings the patterns above do not see.
_EXTRA = {"amp", "compile"}


@functools.lru_cache(maxsize=1)
def known_keys() -> frozenset[str]:
    """Every key name the installed DeepSpeed mentions as a config constant or config-model field."""
    spec = importlib.util.find_spec("deepspeed")
    if spec is None or spec.origin is None:
        return frozenset()
    keys = set(_EXTRA)
    for folder, _, names in os.walk(os.path.dirname(spec.origin)):
        for name in names:
            if not name.endswith(".py"):
                continue
            try:
                with open(os.path.join(folder, name), errors="replace") as f:
                    text = f.read()
            except OSError:
                continue
            keys.update(_CONST.findall(text), _ALIAS.findall(text), _GET.findall(text))
            if "DeepSpeedConfigModel" in text:
                keys.update(_FIELD.findall(text))
    return frozenset(keys)


def unknown_keys(block: dict, prefix: str = "deepspeed") -> list[str]:
    """Dotted names of keys (top level and one level down) that the installed DeepSpeed does not know."""
    known = known_keys()
    if not known:
        return []  # DeepSpeed not importable here: nothing to check against
    found = []
    for key, value in block.items():
        if key not in known:
            found.append(f"{prefix}.{key}")
        elif isinstance(value, dict) and prefix == "deepspeed":
            found += [f"{prefix}.{key}.{k}" for k in value if k not in known and not k.startswith("_")]
    return found


def warn_unknown(block: dict) -> list[str]:
    """Log one warning per unknown key, with the closest known key; returns the unknown names."""
    names = unknown_keys(block)
    if os.environ.get("RANK", "0") != "0":
        return names  # every rank validates the config; rank 0 speaks for all
    for name in names:
        close = difflib.get_close_matches(name.rsplit(".", 1)[-1], known_keys(), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        log.warning("%s is not a DeepSpeed config key and is ignored by DeepSpeed%s", name, hint)
    return names


def check_batch_keys(block: dict, *, micro: int, accum: int, world: int | None) -> None:
    """ConfigError if the block sets DeepSpeed's batch sizes differently from fastssl's derivation.

    ``world=None`` (config time, rank count not known yet) checks only what does not depend on it.
    """
    derived = {"train_micro_batch_size_per_gpu": (micro, "optim.batch_size"),
               "gradient_accumulation_steps": (accum, "optim.grad_accum")}
    for key, (want, ours) in derived.items():
        if key in block and block[key] != want:
            raise ConfigError(f"deepspeed.{key}={block[key]} contradicts {ours}={want}; set {ours} instead "
                              f"(fastssl derives DeepSpeed's batch sizes) and remove it from deepspeed:")
    if "train_batch_size" in block:
        got, per_rank = block["train_batch_size"], micro * accum
        wrong = (not isinstance(got, int) or got % per_rank) if world is None else got != per_rank * world
        if wrong:
            ranks = "ranks" if world is None else f"{world} ranks"
            raise ConfigError(f"deepspeed.train_batch_size={got} contradicts optim.batch_size × optim.grad_accum × {ranks} "
                              f"= {per_rank} × {world or 'N'}; remove it from deepspeed: (fastssl derives it)")
