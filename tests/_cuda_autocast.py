"""CUDA's autocast policy on CPU tensors: the dtypes a bf16 autocast step has on a GPU, without one.

``torch.autocast("cpu")`` and ``torch.autocast("cuda")`` cast different ops. CUDA runs LayerNorm,
softmax, ``sum``, norms, ``exp`` / ``log``, ``pow`` and the losses in fp32 (so a bf16 input comes out
fp32), where CPU autocast leaves them alone (bf16 in, bf16 out). A method that is dtype-consistent
under CPU autocast can therefore meet an fp32 tensor beside a bf16 one on the GPU only, as M-MoCo's
keys (out of a LayerNorm) and queries (out of a Linear) did in the contrastive kernels.

``cuda_policy()`` re-registers the AutocastCPU kernels of the ``aten`` ops with CUDA's policy for the
duration of a ``with`` block: inside ``torch.autocast("cpu", dtype=torch.bfloat16)`` the CPU then casts
what CUDA casts, and only that. The op lists are read from the installed torch's own
``ATen/autocast_mode.h`` (``AT_FORALL_*``: the lists its AutocastCUDA registration expands), so they
follow the torch version; the policies are the header's ``CastPolicy`` rules:
- lower precision: floating inputs (not fp64) cast to the autocast dtype;
- fp32: floating inputs cast to fp32;
- fp32, set dtype: an unset ``dtype`` argument set to fp32 when the first input is floating;
- fp32, append dtype (``norm``): redispatched to the overload with a ``dtype``, fp32;
- promote: floating inputs cast to the widest among them (fp32 if any is).
Ops CPU autocast casts and CUDA's does not fall through. Not mimicked: the cast cache (a weight cast
once per region: the same values and graph, more casts) and ops outside ``aten``.
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import torch

HEADER = Path(torch.__file__).parent / "include" / "ATen" / "autocast_mode.h"
KEY = "AutocastCPU"
_APPEND_DTYPE = {"norm.Scalar": "norm.ScalarOpt_dtype", "norm.ScalarOpt_dim": "norm.ScalarOpt_dim_dtype"}


def cuda_lists() -> dict[str, list[str]]:
    """Policy -> qualified overload names (``softmax.int``, ``sum``), from the installed header."""
    text = HEADER.read_text()
    lists = {}
    for policy in ("LOWER_PRECISION_FP", "FP32", "FP32_SET_OPT_DTYPE", "PROMOTE"):
        body = re.search(rf"#define AT_FORALL_{policy}\(_\)(.*?)\n\s*\n", text + "\n\n", re.S)
        assert body, f"{HEADER} has no AT_FORALL_{policy}"
        lists[policy] = [f"{op}.{ov}" if ov else op for op, ov in re.findall(r"_\((\w+)(?:,\s*(\w+))?\)", body.group(1))]
    return lists


def _floating(x) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype is not torch.float64


def _cast(x, dtype: torch.dtype):
    if _floating(x):
        return x.to(dtype)
    if isinstance(x, (list, tuple)):
        return type(x)(_cast(v, dtype) for v in x)
    return x


def _tensors(args, kwargs):
    for a in (*args, *kwargs.values()):
        yield from (a if isinstance(a, (list, tuple)) else (a,))


def _overload(name: str):
    op, _, ov = name.partition(".")
    return getattr(getattr(torch.ops.aten, op), ov or "default")


def _kernel(policy: str, name: str):
    op = _overload(name)
    schema_args = op._schema.arguments
    dtype_at = next((i for i, a in enumerate(schema_args) if a.name == "dtype"), None)

    def run(*args, **kwargs):
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)):
            if policy == "LOWER_PRECISION_FP":
                low = torch.get_autocast_dtype("cpu")
                return op(*_cast(args, low), **{k: _cast(v, low) for k, v in kwargs.items()})
            if policy == "FP32":
                return op(*_cast(args, torch.float32), **{k: _cast(v, torch.float32) for k, v in kwargs.items()})
            if policy == "FP32_SET_OPT_DTYPE":
                if args and _floating(args[0]):
                    if dtype_at < len(args):
                        if args[dtype_at] is None:
                            args = (*args[:dtype_at], torch.float32, *args[dtype_at + 1:])
                    elif kwargs.get("dtype") is None:
                        kwargs = {**kwargs, "dtype": torch.float32}
                return op(*args, **kwargs)
            if policy == "PROMOTE":
                seen = {t.dtype for t in _tensors(args, kwargs) if _floating(t)}
                to = torch.float32 if torch.float32 in seen or not seen else torch.get_autocast_dtype("cpu")
                return op(*_cast(args, to), **{k: _cast(v, to) for k, v in kwargs.items()})
            # APPEND_DTYPE: norm without a dtype -> the overload with one (fp32 for a floating input),
            # every positional argument given (the target's have no defaults)
            full = [*args, *(kwargs.get(a.name, a.default_value) for a in schema_args[len(args):])]
            return _overload(_APPEND_DTYPE[name])(*full, dtype=torch.float32 if _floating(args[0]) else args[0].dtype)

    return run


@contextlib.contextmanager
def cuda_policy() -> Iterator[dict[str, list[str]]]:
    """Within the block, ``torch.autocast("cpu", ...)`` casts with CUDA's op lists and rules."""
    lists = cuda_lists()
    lib = torch.library.Library("aten", "IMPL")
    try:
        ours = set()
        for policy, names in lists.items():
            for name in names:
                try:
                    _overload(name)
                except AttributeError:  # an op this build lacks (the header lists every backend's)
                    continue
                lib.impl(name, _kernel(policy, name), KEY)
                ours.add(name)
        for name in _APPEND_DTYPE:
            lib.impl(name, _kernel("APPEND_DTYPE", name), KEY)
            ours.add(name)
        for qualified in torch._C._dispatch_get_registrations_for_dispatch_key(KEY):
            name = qualified.removeprefix("aten::")
            if qualified.startswith("aten::") and name not in ours:
                lib.impl(name, torch.library.fallthrough_kernel, KEY)  # CPU's own cast, not CUDA's
        yield lists
    finally:
        lib._destroy()
