"""Checks of ``fastssl.kernels.launch`` under the stand-in driver (``bench/host_driver.py``).

Run as a script (TRITON_INTERPRET must be unset: the interpreter bypasses Triton's JIT and driver):
    python tests/ops/_launch_check.py OUT.json
Each check runs and records "ok" or its traceback; ``tests/ops/test_launch.py`` asserts on the records.
The reference in every check is Triton's own launch path (``jit[grid](...)``) in the same process.
"""
from __future__ import annotations

import os

os.environ.pop("TRITON_INTERPRET", None)

import json  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(_ROOT))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from bench.host_driver import LAUNCHES, cpu_as_device, stand_in_driver  # noqa: E402
from fastssl.kernels import launch as L  # noqa: E402


@triton.jit
def _toy(x_ptr, y_ptr, n, stride, scale, FLAG: tl.constexpr, BLOCK: tl.constexpr = 64):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs * stride, mask=offs < n, other=0.0).to(tl.float32)
    if FLAG:
        x = -x
    tl.store(y_ptr + offs, (x * scale).to(y_ptr.dtype.element_ty), mask=offs < n)


def _toy_variants():
    """Launches of ``_toy`` that differ in one thing each; every launch class Triton tells apart,
    then ones it does not (a float value, the data in the tensors)."""
    x = torch.zeros(4096, dtype=torch.float32)
    y = torch.zeros(4096, dtype=torch.float32)
    h = torch.zeros(4096, dtype=torch.float16)
    base = dict(FLAG=False)
    return [
        ("base", (x, y, 1024, 2, 0.5), base),
        ("unaligned x", (x[1:], y, 1024, 2, 0.5), base),
        ("n not a multiple of 16", (x, y, 1000, 2, 0.5), base),
        ("n == 1", (x, y, 1, 2, 0.5), base),
        ("stride == 1", (x, y, 1024, 1, 0.5), base),
        ("n past int32", (x, y, 2**31 + 16, 2, 0.5), base),
        ("n past int64", (x, y, 2**63 + 16, 2, 0.5), base),
        ("fp16 x", (h, y, 1024, 2, 0.5), base),
        ("fp16 y", (x, h, 1024, 2, 0.5), base),
        ("constexpr", (x, y, 1024, 2, 0.5), dict(FLAG=True)),
        ("constexpr default given", (x, y, 1024, 2, 0.5), dict(FLAG=False, BLOCK=128)),
        ("num_warps", (x, y, 1024, 2, 0.5), dict(FLAG=False, num_warps=8)),
        ("another float", (x, y, 1024, 2, 3.0), base),
        ("other tensors, same class", (torch.ones(4096), torch.ones(4096), 1024, 2, 0.5), base),
        ("base again", (x, y, 1024, 2, 0.5), base),
    ]


def _same_args(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all((u is v) if isinstance(u, torch.Tensor) else (u == v and type(u) is type(v))
                                    for u, v in zip(a, b))


def check_direct_equals_triton():
    """For each variant, in sequence (so that a key coarser than Triton's would hit an earlier
    variant's entry): the direct launch hands the launcher the compiled kernel Triton picks for
    these arguments, the same grid and the same arguments, and passes no hooks."""
    L.clear()
    LAUNCHES.record_args = True
    for name, args, consts in _toy_variants():
        grid = (7,)
        LAUNCHES.clear()
        kernel = _toy[grid](*args, **consts)  # Triton's path
        L.launch(_toy, grid, *args, **consts)  # first sight of this class (or a hit)
        L.launch(_toy, grid, *args, **consts)  # a hit
        ref, *_, got = LAUNCHES.calls
        assert len(LAUNCHES.calls) == 3, name
        assert got.launcher is kernel.run, f"{name}: the direct launch used another compiled kernel"
        assert got.grid == ref.grid == (7, 1, 1), name
        assert _same_args(got.args, ref.args), f"{name}: arguments {got.args} vs Triton's {ref.args}"
        assert got.enter_hook is None, name
    kernels = {id(e[0]) for e in L._cache.values() if e}
    assert len(kernels) == 12, f"expected 12 compiled variants of _toy, the cache holds {len(kernels)}"


def check_spec_refines_triton():
    """Two arguments ``_spec`` puts in one class are one class for Triton (``native_specialize_impl``
    with specialisation and alignment on, as for every argument of this project's kernels)."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    buf = torch.zeros(64)
    values = [0, 1, 2, 15, 16, 17, 32, -1, -16, 2**31 - 16, 2**31 - 1, 2**31, 2**31 + 16, -2**31, -2**31 - 16,
              2**40, 2**63 - 16, 2**63, 2**63 + 16, 0.5, 1.0, 3, True, False, None, buf, buf[1:], buf[4:],
              buf.half(), buf.half()[8:], buf.bfloat16(), buf.to(torch.int32), buf.to(torch.int64)[1:]]
    classes: dict = {}
    for v in values:
        ours = L._spec((v,))
        theirs = native_specialize_impl(BaseBackend, v, False, True, True)
        seen = classes.setdefault(ours, theirs)
        assert seen == theirs, f"{v!r}: one class for fastssl ({ours}) but {seen} vs {theirs} for Triton"


def check_hooks_keep_triton_path():
    """With a launch hook installed (a profiler's) or a pre-run hook, launches go through Triton's path
    (the launcher receives Triton's hook chain), and back to the direct one after."""
    from triton import knobs

    L.clear()
    x, y = torch.zeros(256), torch.zeros(256)
    for _ in range(2):
        L.launch(_toy, (1,), x, y, 256, 1, 1.0, FLAG=False)
    LAUNCHES.clear()
    hook = lambda metadata: None  # noqa: E731
    knobs.runtime.launch_enter_hook.add(hook)
    try:
        L.launch(_toy, (1,), x, y, 256, 1, 1.0, FLAG=False)
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    _toy.pre_run_hooks.append(lambda *a, **k: None)
    try:
        L.launch(_toy, (1,), x, y, 256, 1, 1.0, FLAG=False)
    finally:
        _toy.pre_run_hooks.clear()
    L.launch(_toy, (1,), x, y, 256, 1, 1.0, FLAG=False)
    hooked, pre_run, after = LAUNCHES.calls
    assert hooked.enter_hook is knobs.runtime.launch_enter_hook
    assert pre_run.enter_hook is knobs.runtime.launch_enter_hook
    assert after.enter_hook is None


def check_keyword_runtime_arg_falls_back():
    """A runtime argument passed by keyword cannot be placed by position: that class keeps Triton's
    path (every call launches, through it)."""
    L.clear()
    x, y = torch.zeros(256), torch.zeros(256)
    LAUNCHES.clear()
    for _ in range(3):
        L.launch(_toy, (1,), x, y, 256, 1, scale=1.0, FLAG=False)
    assert len(LAUNCHES.calls) == 3
    assert all(c.enter_hook is not None for c in LAUNCHES.calls)
    assert list(L._cache.values()) == [False]


def check_switch_off():
    """``OPTIONS["direct"] = False``: every launch through Triton's path."""
    L.clear()
    x, y = torch.zeros(256), torch.zeros(256)
    L.OPTIONS["direct"] = False
    try:
        LAUNCHES.clear()
        for _ in range(3):
            L.launch(_toy, (1,), x, y, 256, 1, 1.0, FLAG=False)
        assert [c.enter_hook is not None for c in LAUNCHES.calls] == [True] * 3 and not L._cache
    finally:
        L.OPTIONS["direct"] = True


def check_host_helpers():
    """``cdiv`` and ``next_pow2`` are Triton's ``cdiv`` / ``next_power_of_2`` without the call cost."""
    for a in list(range(0, 300)) + [2**31 - 1, 2**31, 2**40 + 3]:
        for b in (1, 2, 3, 16, 64, 128, 1024):
            assert L.cdiv(a, b) == triton.cdiv(a, b), (a, b)
        assert L.next_pow2(a) == triton.next_power_of_2(a), a


def check_every_launch_site():
    """Every op's launches (the host-path bench's calls: each contrastive loss, the token ops, patchify)
    take the direct path once their classes are known (no launch class falls back), and make the
    same launches in the same order, with arguments of the same kinds, as Triton's path."""
    sys.path.insert(0, str(_ROOT / "bench"))
    from bench.host_path import _cases

    LAUNCHES.record_args = True
    with cpu_as_device():
        for name, make in _cases(smoke=False).items():
            call = make()
            L.clear()
            seqs = {}
            for mode in ("jit", "direct"):
                L.OPTIONS["direct"] = mode == "direct"
                call()
                LAUNCHES.clear()
                torch.manual_seed(0)  # patchify_noise draws its seed from torch's RNG: the same in both modes
                call()
                seqs[mode] = list(LAUNCHES.calls)
            L.OPTIONS["direct"] = True
            assert L._cache and False not in L._cache.values(), f"{name}: a launch class fell back to Triton's path"
            jit, direct = seqs["jit"], seqs["direct"]
            assert [(c.name, c.grid) for c in jit] == [(c.name, c.grid) for c in direct], name
            assert all(c.enter_hook is None for c in direct), f"{name}: a launch went through Triton's path"

            def kinds(args):
                return [(tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else a for a in args]
            for a, b in zip(jit, direct):
                assert a.launcher is b.launcher, f"{name}: {a.name} launched another compiled kernel"
                assert kinds(a.args) == kinds(b.args), f"{name}: {a.name}"


def check_launcher_mismatch_falls_back():
    """A launcher that rejects the direct call's arguments (another Triton) makes launch() warn once,
    switch itself off and launch through Triton's path; nothing is lost."""
    import warnings

    L.clear()
    x, y = torch.zeros(256), torch.zeros(256)
    L.launch(_toy, (1,), x, y, 256, 1, 1.0, FLAG=False)
    kernel, _ = next(e for e in L._cache.values() if e)
    real = type(kernel.run).__call__

    def picky(self, *a):
        if a[6] is None:  # launch metadata: as if this Triton needed it
            raise TypeError("launch metadata expected")
        return real(self, *a)
    type(kernel.run).__call__ = picky
    try:
        LAUNCHES.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            L.launch(_toy, (1,), x, y, 256, 1, 1.0, FLAG=False)
            L.launch(_toy, (1,), x, y, 256, 1, 1.0, FLAG=False)
        assert L.OPTIONS["direct"] is False
        assert len([w for w in caught if "direct launch path" in str(w.message)]) == 1
        assert len(LAUNCHES.calls) == 2 and all(c.enter_hook is not None for c in LAUNCHES.calls)
    finally:
        type(kernel.run).__call__ = real
        L.OPTIONS["direct"] = True


# Host work of one call (forward + backward) at the host-path bench's shapes on a 132-SM device: Triton
# launches, and the most torch ops the call may dispatch (allocations, views and autograd's own ops
# included). Counted on 2026-12-05 after the host-path work of issues 21 / 22 (notes/host_path.md); a
# change that adds host work fails here and has to say why by raising a number.
HOST_BUDGET = {
    # The contrastive losses: 22 / 22 / 23 / 28 torch ops while their mean was a torch node of its own
    # (mean, expand, a division, a detach) and the two-view losses sliced the views apart every call;
    # NT-Xent / DCL 17 while normalisation, loss and mean were three autograd nodes, InfoNCE 20 / 23
    # while the queries' normalisation was a node of its own (each loss is one node now).
    "nt_xent 4096+4096 x 256": (6, 14),
    "dcl 4096+4096 x 256": (6, 14),
    "info_nce 8 chunks 8192 x 1024": (7, 16),
    "info_nce queue 256 x 65536": (7, 19),  # 44 while the positives' dot products were eager torch; (8, 30) while the unit queue was renormalised
    "gather_tokens B=256 (+pos)": (2, 7),
    "scatter_tokens B=256 (+mt, +pos)": (2, 13),
    "patchify_noise B=256 (fwd)": (1, 6),
}


def check_host_work_per_call():
    """Every op of the host-path bench makes its budgeted launches and at most its budgeted torch ops per
    call (``HOST_BUDGET``): no zero-fills, index rebuilds or extra launches creep back in."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from bench.host_path import _cases

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.__name__)
            return func(*args, **(kwargs or {}))

    over = []
    LAUNCHES.record_args = False  # a recorded argument holds a reference: autograd would then copy that gradient
    with cpu_as_device():
        for name, make in _cases(smoke=False).items():
            call = make()
            for _ in range(2):
                call()
            LAUNCHES.clear()
            with Ops() as ops:
                call()
            launches, most = HOST_BUDGET[name]
            if len(LAUNCHES.calls) != launches or len(ops.names) > most:
                over.append(f"{name}: {len(LAUNCHES.calls)} launches (budget {launches}), {len(ops.names)} torch ops "
                            f"(budget {most}): {sorted(set(ops.names))}")
    assert not over, "\n".join(over)


CHECKS = [check_direct_equals_triton, check_spec_refines_triton, check_hooks_keep_triton_path,
          check_keyword_runtime_arg_falls_back, check_switch_off, check_host_helpers, check_launcher_mismatch_falls_back,
          check_every_launch_site, check_host_work_per_call]


def main(argv: list[str]) -> int:
    out = {}
    with stand_in_driver():
        for check in CHECKS:
            try:
                check()
                out[check.__name__] = "ok"
            except Exception:  # noqa: BLE001 - recorded for the test that reads it
                out[check.__name__] = traceback.format_exc()
    Path(argv[0]).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
