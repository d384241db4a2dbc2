"""Launch a compiled Triton kernel without Triton's per-call JIT path (the host cost of a launch).

``jit[grid](*args, **consts)`` runs ``JITFunction.run`` on every call: it binds and specialises every
argument, hashes a cache key, reads Triton's knobs, checks the kernel's globals and builds launch
metadata before the C launcher runs. On this project's 2-core CPU machine that is 13–24 µs per launch
of the contrastive forward (25 arguments; `bench/host_path.py`, Triton 3.7; 6.6–7.1 µs on the direct
path), four or more times a small eager ATen op on that CPU, and the GPU runs of issues 21 and 22 showed the small fused calls bound by
exactly this host time (0.81 ms wall vs 0.33 ms of kernels for NT-Xent at 2N = 8192, gather_tokens at
B = 256 0.64 vs 0.10 ms).

``launch`` takes Triton's own path the first time it sees a *launch class* and keeps the
``CompiledKernel`` Triton returns; later launches of that class call the kernel's launcher directly.
A launch class is what Triton itself specialises on, computed more cheaply (``_spec``):
- the constexpr / option keywords and their values (launch sites pass every constexpr by keyword);
- per positional argument: a tensor's dtype and whether its address is 16-byte aligned; an int's
  class (== 1, divisible by 16 or not, and int32 / int64 / uint64); a float, bool or None by type;
- the current CUDA device (a compiled module belongs to one device's context).
Triton's rule (``native_specialize_impl``) distinguishes no more than this: ``tests/ops/test_launch.py``
checks, under a stand-in driver, that the direct path passes the launcher the kernel and the arguments
Triton's path passes, and that each change of a class (alignment, int class, dtype, a constexpr)
reaches a different compiled kernel, the one Triton picks.

Triton's path is kept when the direct one cannot stand for it: the interpreter (CPU tests), a kernel
that is not a plain ``JITFunction`` (the opt-in autotuner), a runtime argument passed by keyword,
pre-run hooks or launch hooks installed (profilers that use Triton's hooks, e.g. Proton), or a Triton
whose compiled kernel lacks the attributes used here. Not checked on the direct path: that a global
the kernel reads has changed since it was compiled (Triton raises then; this project's kernels read
constant globals only). The launcher's calling convention is the one Triton 3.6's source uses (the
GPU machine's version, read, not run) and 3.7's (run here). A launcher that rejects the direct call's
arguments raises ``TypeError`` while parsing them, before launching: ``launch`` then warns once, turns
itself off and launches through Triton's path.
``FASTSSL_DIRECT_LAUNCH=0`` (or ``OPTIONS["direct"] = False``) turns it off:
the before/after of ``bench/host_path.py`` and the GPU benches' ``[jit]`` variants.
"""
from __future__ import annotations

import inspect
import os
import warnings

from torch import Tensor

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
OPTIONS = {"direct": os.environ.get("FASTSSL_DIRECT_LAUNCH", "1") != "0"}
_MAX_ENTRIES = 4096  # launch classes kept; a bound, not a working-set size (a run uses a few dozen)

_cache: dict = {}
_state: dict = {}  # lazily: Triton's JITFunction class, knobs and driver


def _triton():
    if not _state:
        import triton
        from triton.runtime.jit import JITFunction

        _state.update(jit_cls=JITFunction, knobs=triton.knobs, driver=triton.runtime.driver)
    return _state


_PLAIN = (float, bool, type(None))  # Triton types these by their Python type alone
_OTHER = object()  # any other argument (a tensor descriptor, ...): that launch class keeps Triton's path


def _spec(args: tuple) -> tuple:
    """What Triton specialises a launch on, one code per positional argument (the module docstring):
    an int: 1 (== 1), 2 / 3 (int32, not / divisible by 16), ±4 (int64), ±5 (uint64), negative when
    divisible by 16; a tensor: its dtype if 16-byte aligned, (dtype,) if not; a float, bool or None:
    its type. A flat tuple and no helper calls: this runs on every launch."""
    out = []
    for a in args:
        t = type(a)
        if t is int:
            if a == 1:
                out.append(1)
            elif -2147483648 <= a <= 2147483647:
                out.append(2 if a & 15 else 3)
            else:
                out.append((4 if a <= 9223372036854775807 else 5) * (1 if a & 15 else -1))
        elif t is Tensor or isinstance(a, Tensor):
            out.append(a.dtype if a.data_ptr() & 15 == 0 else (a.dtype,))
        else:
            out.append(t if t in _PLAIN else _OTHER)
    return tuple(out)


def _hooks_installed(knobs) -> bool:
    """Triton's launch hooks (a ``HookChain`` in Triton 3.6 / 3.7, ``None`` or a callable before)."""
    hooks = (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook)
    return any(getattr(h, "calls", h) for h in hooks)


def _tail(jit, n_args: int, consts: dict) -> tuple | None:
    """The constexpr values after the ``n_args`` positional arguments, in signature order (what
    Triton's launcher receives with the runtime arguments); None when a runtime argument would come
    by keyword or a parameter is missing (then the direct path does not apply)."""
    tail = []
    for param in jit.params[n_args:]:
        if not param.is_constexpr:
            return None
        if param.name in consts:
            tail.append(consts[param.name])
        elif param.default is not inspect.Parameter.empty:
            tail.append(param.default)
        else:
            return None
    return tuple(tail)


def launch(jit, grid: tuple, *args, **consts) -> None:
    """``jit[grid](*args, **consts)``, through the compiled kernel's launcher once this launch class
    has been seen. Runtime arguments positional, constexprs and options (num_warps, ...) by keyword."""
    if _INTERPRET or not OPTIONS["direct"]:
        jit[grid](*args, **consts)
        return
    t = _state or _triton()
    if type(jit) is not t["jit_cls"] or jit.pre_run_hooks or _hooks_installed(t["knobs"]):
        jit[grid](*args, **consts)
        return
    drv = t["driver"].active
    device = drv.get_current_device()
    # id(jit), not jit: a JITFunction hashes its source key under a lock on every call. The cache
    # holds the kernel's compiled object, not the JITFunction; kernels are module-level, never freed.
    key = (id(jit), device, _spec(args), *consts.items())
    entry = _cache.get(key)
    if entry is None:
        kernel = jit[grid](*args, **consts)  # compiles if needed, launches
        tail = _tail(jit, len(args), consts)
        usable = (tail is not None and _OTHER not in key[2]
                  and all(hasattr(kernel, a) for a in ("run", "function", "packed_metadata")))
        if len(_cache) >= _MAX_ENTRIES:
            _cache.clear()
        _cache[key] = (kernel, tail) if usable else False
        return
    if entry is False:
        jit[grid](*args, **consts)
        return
    kernel, tail = entry
    n = len(grid)
    try:
        kernel.run(grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1, drv.get_current_stream(device),
                   kernel.function, kernel.packed_metadata, None, None, None, *args, *tail)
    except TypeError as err:
        # A launcher whose arguments differ from the ones checked (3.6 / 3.7) fails here, while it
        # parses them and before anything is launched: keep Triton's path from now on, say so once.
        OPTIONS["direct"] = False
        warnings.warn(f"fastssl.kernels.launch: the direct launch path does not fit this Triton "
                      f"({type(err).__name__}: {err}); every launch goes through Triton's own path", stacklevel=2)
        jit[grid](*args, **consts)


def cdiv(a: int, b: int) -> int:
    """⌈a / b⌉ for host code. ``triton.cdiv`` is a constexpr function in Triton ≥ 3.5: ~5 µs per call
    from Python (argument unwrapping, a knob read) on this project's CPU machine, and a launcher
    called it up to six times per launch."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """``triton.next_power_of_2`` for host code (0 -> 0, like Triton's), without its per-call cost."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


_constants: dict = {}


def constant(key: tuple, build):
    """The read-only tensor(s) ``build()`` makes, built once per ``key`` (index arrays a call would
    otherwise rebuild every step, a few small launches each); at most 64 keys are kept. Callers never
    write to what they get; under torch.compile the ops build theirs in the graph instead."""
    hit = _constants.get(key)
    if hit is None:
        if len(_constants) >= 64:
            _constants.clear()
        hit = _constants[key] = build()
    return hit


def clear() -> None:
    """Forget every launch class (tests; a changed Triton cache)."""
    _cache.clear()
