"""Host time of the fused ops, per call, on any machine: what bounds their small calls on the GPU.

The GPU runs of issues 21 and 22 found the small fused calls host-bound: NT-Xent at 2N = 8192 took
0.81 ms of wall time for 0.33 ms of kernels, gather_tokens at B = 256 0.64 ms for 0.10 ms. That host
time (Python, autograd, allocations, Triton's launch path) does not need a GPU to be measured: under
``bench/host_driver.py``'s stand-in driver every launch runs its host side in full (Triton compiles
for sm_90, the launchers plan their grids for a 132-SM device) and stops where the C launcher would
hand the kernel to the driver. Tensors are CPU tensors: no values, and nothing of the device time.

Rows: one op call, forward + backward (``.backward()`` of the loss, or of the token op's output with a
gradient made once; input gradients reset to None each call, so no accumulation kernel runs), at the GPU benches' shapes, under each launch mode:
- ``jit``: every launch through ``jit[grid](...)`` (Triton's ``JITFunction.run``), as before;
- ``direct``: ``fastssl.kernels.launch`` (the compiled kernel's launcher, once its launch class is known);
- ``nodes`` (the contrastive losses): ``direct`` with each loss as the chain of autograd nodes it was
  before ``fastssl.ops.contrastive_nodes`` made it one node (normalisation, loss, mean).
Plus Triton's launch path alone (one contrastive forward launch, ``jit`` vs ``direct``), a torch floor
(``(x * 1).sum().backward()`` on a small tensor: the cheapest autograd round trip) and launches per call.

    python bench/host_path.py              # the table; bench/results/host-path-<cpu>.{json,png}
    python bench/host_path.py --smoke      # a few calls of two ops (tests/bench/test_host_path_smoke.py)

Must run without TRITON_INTERPRET=1 (this script unsets it before Triton is imported). Numbers are
this machine's host; the GPU machine's host is another CPU, so the ratio jit/direct is what carries
over, and the GPU wall time is measured by ``bench/contrastive.py`` / ``bench/tokens.py`` (their
``triton[jit]`` variants time the old launch path side by side).
"""
from __future__ import annotations

import os

os.environ.pop("TRITON_INTERPRET", None)  # before Triton is imported: the stand-in driver needs the JIT

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import torch  # noqa: E402

from bench.host_driver import cpu_as_device, stand_in_driver  # noqa: E402

RESULTS = _ROOT / "bench" / "results"
MODES = ("jit", "direct", "nodes")
# nodes: direct launches with each contrastive loss as the ops' chain of autograd nodes (unit rows, loss,
# mean) instead of one node (fastssl.ops.contrastive_nodes); the token ops have no such chain.
NODE_CASES = ("nt_xent", "dcl", "info_nce")


def _set_mode(mode: str) -> None:
    from fastssl.kernels import launch as L
    from fastssl.ops import contrastive_doors as D

    L.OPTIONS["direct"] = mode != "jit"
    D.OPTIONS["one_node"] = mode != "nodes"


def _modes(case: str) -> tuple:
    return MODES if case.startswith(NODE_CASES) else MODES[:2]


def _cases(smoke: bool) -> dict:
    """name -> (description, make() -> call()): each call is one op forward + backward."""
    from fastssl.ops import contrastive as C
    from fastssl.ops import tokens as T
    from fastssl.ops.patchify import patchify_noise as noisy_patches

    bf16 = torch.bfloat16

    def leaf(*shape, dtype=bf16):
        return torch.randn(*shape, dtype=dtype).requires_grad_()

    def run(fn, leaves, grad=None):
        """fn() -> a scalar loss, or a tensor whose gradient is ``grad`` (made once: no eager reduction
        over a large CPU tensor inside the timed call)."""
        def call():
            for t in leaves:
                t.grad = None
            fn().backward(grad)
        return call

    def nt_xent():
        z1, z2 = leaf(4096, 256), leaf(4096, 256)
        return run(lambda: C.nt_xent(z1, z2, 0.1, backend="triton"), (z1, z2))

    def dcl():
        z1, z2 = leaf(4096, 256), leaf(4096, 256)
        return run(lambda: C.dcl(z1, z2, 0.1, backend="triton"), (z1, z2))

    def mmoco():
        q, k = leaf(8, 1024, 256), torch.randn(1024, 256, dtype=bf16)
        return run(lambda: C.info_nce(q, k, 0.2, backend="triton"), (q,))

    def queue():
        # N = 256 (a GPU bench shape too): the positives' dot products are an eager O(N·D) pass that
        # computes for real on CPU tensors, and at N = 1024 it outweighed the host work measured here
        q, k = leaf(256, 256), torch.randn(256, 256, dtype=bf16)
        # a queue of unit keys, called as MoCo v2 calls it (no renormalisation: ``unit_queue``)
        bank = torch.nn.functional.normalize(torch.randn(65536, 256), dim=1).to(bf16)
        return run(lambda: C.info_nce(q, k, 0.2, queue=bank, unit_queue=True, backend="triton"), (q,))

    def ids(b, l=196, keep=49):
        return torch.rand(b, l).argsort(dim=1)[:, :keep].contiguous()

    def gather(b=256):
        x, pos, keep = leaf(b, 196, 768), leaf(196, 768), ids(b)
        return run(lambda: T.gather_tokens(x, keep, pos, backend="triton"), (x, pos), torch.randn(b, 49, 768, dtype=bf16))

    def scatter(b=256):
        x, mt, pos, keep = leaf(b, 49, 512), leaf(512), leaf(196, 512), ids(b)
        return run(lambda: T.scatter_tokens(x, keep, 196, mt, pos, backend="triton"), (x, mt, pos),
                   torch.randn(b, 196, 512, dtype=bf16))

    def patchify_noise(b=256):
        imgs, sigma, keep = torch.randn(b, 3, 224, 224, dtype=bf16), torch.full((b,), 0.5), ids(b)

        def call():
            noisy_patches(imgs, 16, sigma, ids_keep=keep, norm_target=True, backend="triton")
        return call

    cases = {
        "nt_xent 4096+4096 x 256": nt_xent,
        "dcl 4096+4096 x 256": dcl,
        "info_nce 8 chunks 8192 x 1024": mmoco,
        "info_nce queue 256 x 65536": queue,
        "gather_tokens B=256 (+pos)": gather,
        "scatter_tokens B=256 (+mt, +pos)": scatter,
        "patchify_noise B=256 (fwd)": patchify_noise,
    }
    if smoke:
        return {k: cases[k] for k in ("nt_xent 4096+4096 x 256", "gather_tokens B=256 (+pos)")}
    return cases


def _time(call, repeats: int, number: int) -> float:
    """Median over ``repeats`` of the mean µs per call over ``number`` calls."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            call()
        out.append((time.perf_counter() - t0) / number * 1e6)
    return statistics.median(out)


def _launch_alone(number: int) -> dict:
    """µs per launch of the contrastive forward kernel (21 runtime arguments), Triton's path vs the direct one."""
    from fastssl.kernels import contrastive as K
    from fastssl.kernels import launch as L

    m, d = 8192, 256
    rows = torch.randn(m, d, dtype=torch.bfloat16)
    idx = torch.zeros(m, dtype=torch.int32)
    loss, lse2 = torch.empty(m), torch.empty(m)
    geo = K.plan("fwd", rows, m, m, d)
    part = torch.empty(2, geo.splits, m)
    args = (rows, rows, rows, idx, idx, loss, loss, lse2, part, m, m, d, geo.chunk, geo.splits, d, 1, d, 1, d, 1, 14.4)
    consts = dict(SPLIT=geo.splits > 1, QUEUE=False, MASK_ALL=False, **K.launch_flags("bf16", d, has_w=False, exclude_pos=False),
                  BLOCK_M=geo.block_m, BLOCK_N=geo.block_n, num_warps=geo.warps, num_stages=geo.stages)
    out = {}
    for mode in MODES[:2]:
        L.OPTIONS["direct"] = mode == "direct"
        call = lambda: L.launch(K._contrastive_fwd_kernel, geo.grid, *args, **consts)  # noqa: E731
        call()
        out[mode] = _time(call, 7, number)
    L.OPTIONS["direct"] = True
    return out


def _floor(number: int) -> float:
    x = torch.randn(64, requires_grad=True)

    def call():
        x.grad = None
        (x * 1).sum().backward()
    call()
    return _time(call, 7, number)


def _cpu_name() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} cores"


def measure(smoke: bool = False) -> dict:
    number, repeats = (5, 2) if smoke else (100, 15)
    torch.manual_seed(0)
    rows = []
    with stand_in_driver() as launches, cpu_as_device():
        for name, make in _cases(smoke).items():
            call = make()
            row = {"case": name}
            modes = _modes(name)
            times: dict = {mode: [] for mode in modes}
            for mode in modes:
                _set_mode(mode)
                for _ in range(3):  # compile (first time), then the launch classes are known
                    call()
            launches.clear()
            for _ in range(repeats):  # the modes alternate, so that a drift of the machine hits all alike
                for mode in modes:
                    _set_mode(mode)
                    times[mode].append(_time(call, 1, number))
            _set_mode("direct")
            for mode in modes:
                row[f"{mode}_us"] = statistics.median(times[mode])
            row["launches"] = len(launches.calls) / (repeats * number * len(modes))
            row["saved_us"] = row["jit_us"] - row["direct_us"]
            rows.append(row)
            nodes = f"  chain of nodes {row['nodes_us']:7.1f} µs" if "nodes_us" in row else ""
            print(f"  {name:36s} jit {row['jit_us']:7.1f} µs  direct {row['direct_us']:7.1f} µs  "
                  f"({row['launches']:.0f} launches, {row['saved_us']:5.1f} µs less){nodes}", flush=True)
        alone = _launch_alone(number * 10)
    floor = _floor(number * 10)
    print(f"  one launch (contrastive fwd, 25 args): jit {alone['jit']:.2f} µs, direct {alone['direct']:.2f} µs; "
          f"torch autograd floor {floor:.1f} µs", flush=True)
    return {
        "device": f"cpu: {_cpu_name()} (host side only; stand-in sm_90 driver)", "cpu": _cpu_name(),
        "machine": platform.machine(), "torch": torch.__version__, "triton": __import__("triton").__version__,
        "load_avg_1m": os.getloadavg()[0], "smoke": smoke, "rows": rows, "launch_alone_us": alone,
        "autograd_floor_us": floor,
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(rows) + 1.6))
    y = range(len(rows))
    ax.barh([i + 0.27 for i in y], [r["jit_us"] for r in rows], height=0.27, label="Triton's launch path (jit)")
    ax.barh([i for i in y], [r.get("nodes_us", float("nan")) for r in rows], height=0.27,
            label="direct, the loss as a chain of autograd nodes")
    ax.barh([i - 0.27 for i in y], [r["direct_us"] for r in rows], height=0.27,
            label="fastssl.kernels.launch (direct), one node per loss")
    ax.set_yticks(list(y), [f"{r['case']} ({r['launches']:.0f} launches)" for r in rows])
    ax.invert_yaxis()
    ax.axvline(result["autograd_floor_us"], color="gray", ls=":", label="autograd floor")
    ax.set_xlabel("host µs per call, forward + backward (this CPU; no device time)")
    ax.set_title(f"Host time per call of the fused ops\n{result['cpu']} (stand-in sm_90 driver)", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="two ops, a few calls: the script works, not a measurement")
    p.add_argument("--out-dir", type=Path, default=None, help="folder for the JSON + PNG (default bench/results)")
    args = p.parse_args(argv)
    result = measure(args.smoke)
    out = args.out_dir or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    stem = "host-path-smoke" if args.smoke else f"host-path-cpu-{platform.machine().replace('_', '-')}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out / f"{stem}.png")
    print(f"wrote {out / stem}.json / .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
