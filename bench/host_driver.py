"""A Triton driver without a device: the host side of every launch runs, nothing reaches a GPU.

What it is for: the host time of a fused op (Python, autograd, allocations, Triton's launch path) is
what bounds the small calls on the GPU (issues 21 and 22), and it can be measured on any machine.
Under ``stand_in_driver()`` Triton compiles for sm_90 exactly as it would for an H100/H200 (ptxas
included), ``JITFunction.run`` does all of its per-call work, and the last step, the C launcher, is
replaced by ``Launcher.__call__``, which records the launch (kernel name, grid, arguments) and returns.
Tensors are CPU tensors, so outputs are whatever the allocator returned: timing and launch counts
only, never values. ``bench/host_path.py`` times the ops with it; ``tests/ops/test_launch.py`` checks
that ``fastssl.kernels.launch`` hands the launcher what Triton's own path hands it.

The process must not have TRITON_INTERPRET=1 (the interpreter replaces the JIT), and it replaces
Triton's active driver for the duration of the ``with`` (Triton 3.6 / 3.7 internals: the driver
object's methods that ``JITFunction.run`` and ``CompiledKernel`` call).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

SM90_SMS = 132  # H100 SXM / H200: what the launch geometry is planned for under the stand-in


@dataclass
class Launch:
    """One launch as the stand-in launcher received it (``args``: only with ``Launches.record_args``)."""

    name: str
    grid: tuple
    launcher: object  # the compiled kernel's launcher object (``CompiledKernel.run``)
    enter_hook: object  # what the launch path passed for Triton's launch hooks (None: no hooks)
    args: tuple | None


@dataclass
class Launches:
    """Every launch the stand-in launcher received, in order."""

    calls: list = field(default_factory=list)
    record_args: bool = False

    def clear(self) -> None:
        self.calls.clear()


LAUNCHES = Launches()


class Launcher:
    """Stands for Triton's CUDA launcher of one compiled kernel (``driver.launcher_cls``)."""

    def __init__(self, src, metadata):
        self.name = getattr(metadata, "name", "?")

    def __call__(self, grid_x, grid_y, grid_z, stream, function, packed_metadata, launch_metadata,
                 enter_hook, exit_hook, *args):
        LAUNCHES.calls.append(Launch(self.name, (grid_x, grid_y, grid_z), self, enter_hook,
                                     args if LAUNCHES.record_args else None))


class _Utils:
    def load_binary(self, name, kernel, shared, device):
        return 1, 1, 64, 0, 1024  # module, function, registers, spills, max threads: never used

    def get_device_properties(self, device):
        return {"max_shared_mem": 232448, "multiprocessor_count": SM90_SMS, "max_num_regs": 65536,
                "warpSize": 32, "sm_clock_rate": 1, "mem_clock_rate": 1, "mem_bus_width": 1}


class StandInDriver:
    """The methods of Triton's ``CudaDriver`` that the launch path calls, for device 0 of sm_90."""

    def __init__(self):
        self.utils = _Utils()
        self.launcher_cls = Launcher

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_device_capability(self, device=None):
        return 9, 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self):
        import torch

        return torch.device("cpu")

    def get_device_interface(self):
        import torch

        return torch.cuda

    def map_python_to_cpp_type(self, ty: str) -> str:
        from triton.backends.nvidia.driver import ty_to_cpp

        return ty_to_cpp(ty)

    def get_benchmarker(self):
        raise RuntimeError("the stand-in driver has no device to benchmark on")


@contextlib.contextmanager
def stand_in_driver():
    """Make Triton launch through ``StandInDriver`` inside the ``with``; the previous driver after."""
    import os

    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("stand_in_driver needs TRITON_INTERPRET unset (the interpreter bypasses the driver)")
    from triton.runtime import driver

    saved = driver._active
    driver.set_active(StandInDriver())
    LAUNCHES.clear()
    try:
        yield LAUNCHES
    finally:
        driver._active = saved


@contextlib.contextmanager
def cpu_as_device():
    """Let the launchers take CPU tensors and plan their grids for an sm_90 device of ``SM90_SMS``
    SMs (with ``stand_in_driver``: the launches a call makes on an H100/H200, no values)."""
    from fastssl.kernels import contrastive, tokens

    saved = [(contrastive, "on_kernel_device"), (contrastive, "_sms"), (tokens, "_sm_count")]
    saved = [(mod, name, getattr(mod, name)) for mod, name in saved]
    contrastive.on_kernel_device = lambda t: True
    contrastive._sms = lambda device: SM90_SMS
    tokens._sm_count = lambda device: SM90_SMS
    try:
        yield
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)
