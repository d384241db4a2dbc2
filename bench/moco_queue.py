"""Benchmark of MoCo v2's InfoNCE with a queue: eager [N, 1+K] logits vs torch.compile of it vs the Triton kernel.
(Not ``bench/queue.py``: run as a script, that name would shadow the standard library's ``queue``.)

The op is ``fastssl.ops.info_nce(q, k, τ, queue=queue)``: q [N, D] requires grad (the online
encoder), k [N, D] does not (the momentum encoder), queue [K, D] is a buffer. Providers:
  eager    MoCo v2's official loss: normalise, l_pos by einsum, l_neg = q·queueᵀ, cat, cross-entropy
  compile  torch.compile of that same function (one compile per shape)
  triton   fastssl.ops.info_nce(..., queue=queue, backend="triton"): queue tiles, per-row logsumexp,
           no [N, 1+K] logits
Sweep N (one GPU's batch) ∈ {32, 256, 1024, 4096} × K ∈ {4096, 16384, 65536} × D = 128 (MoCo v2's
head) × {bf16, fp32}; forward, backward and forward+backward time (median, 20/80 %), peak extra
memory, achieved TFLOP/s counting 4·N·K·D for forward+backward (2·N·K·D forward; the kernel's
recompute of the logits in the backward is not counted), against a bf16 matmul measured in the
same run. Out-of-memory and other failures are recorded per case, not raised.

    python bench/moco_queue.py            # full GPU sweep -> bench/results/moco_queue-<device>.{json,png}
    python bench/moco_queue.py --quick    # bf16, K = 65536, N ∈ {256, 1024}
    python bench/moco_queue.py --smoke    # tiny sweep that runs anywhere (CPU: Triton interpreter), not a measurement
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

if not torch.cuda.is_available():  # the kernels run in the interpreter on CPU (smoke only)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bench.common import (  # noqa: E402
    Column, Record, derive_speedups, device, free_memory, measure_ceilings, ms, parse_args, pick_list, plot,
    print_table, run_guarded, time_grad_case, write_results,
)
from fastssl.ops import info_nce  # noqa: E402

TAU = 0.2  # MoCo v2
FULL = dict(n=[32, 256, 1024, 4096], k=[4096, 16384, 65536], d=[128], dtypes=["bfloat16", "float32"])
QUICK = dict(n=[256, 1024], k=[65536], d=[128], dtypes=["bfloat16"])
SMOKE = dict(n=[8, 33], k=[300], d=[16], dtypes=["float32"])  # K > 128: the interpreter splits the queue


def eager_queue_info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo v2's official loss in plain PyTorch: the full [N, 1+K] logits and a cross-entropy to label 0."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    negatives = F.normalize(queue, dim=1).to(q.dtype)
    l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
    l_neg = q @ negatives.t()
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def triton_queue_info_nce(q, k, queue, temperature):
    return info_nce(q, k, temperature, queue=queue, backend="triton")


def _add_args(p) -> None:
    p.add_argument("--quick", action="store_true", help="reduced GPU sweep (bf16, K=65536, N in 256/1024)")
    p.add_argument("--n", default=None, help="comma-separated batch sizes N (overrides the sweep)")
    p.add_argument("--k", default=None, help="comma-separated queue sizes K (overrides the sweep)")
    p.add_argument("--dtypes", default=None, help="comma-separated dtypes: bfloat16,float32,float16")


_COLUMNS = [
    Column("dtype", 9, lambda r: r.case["dtype"]), Column("N", 6, lambda r: r.case["N"]),
    Column("K", 7, lambda r: r.case["K"]), Column("provider", 10, lambda r: r.provider),
    Column("fwd ms", 9, lambda r: ms(r.fwd), ".3f"), Column("bwd ms", 9, lambda r: ms(r.bwd), ".3f"),
    Column("tot ms", 9, lambda r: ms(r.total), ".3f"), Column("MiB", 9, lambda r: r.peak_mem_mib, ".0f"),
    Column("TFLOP/s", 9, lambda r: r.extra.get("tflops_total"), ".1f"),
    Column("%mm", 6, lambda r: r.extra.get("pct_matmul"), ".0f"),
    Column("x eager", 8, lambda r: r.extra.get("speedup_vs_eager"), ".2f"),
    Column("x comp", 8, lambda r: r.extra.get("speedup_vs_compile"), ".2f"),
]


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], _add_args)
    dev = device()
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    sweep = SMOKE if args.smoke else QUICK if args.quick else FULL
    sizes, queues, dtypes = pick_list(args.n, sweep["n"]), pick_list(args.k, sweep["k"]), pick_list(args.dtypes, sweep["dtypes"], str)
    ceilings = measure_ceilings(smoke=args.smoke)
    print(f"device {torch.cuda.get_device_name() if dev.type == 'cuda' else dev}; "
          f"matmul ceiling {ceilings.matmul_tflops:.1f} TFLOP/s ({'bf16' if dev.type == 'cuda' else 'fp32'})")
    records: list[Record] = []
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        for d in sweep["d"]:
            for kq in queues:
                for n in sizes:
                    torch.manual_seed(0)
                    torch._dynamo.reset()  # a fresh compile per shape
                    meta = {"N": n, "K": kq, "D": d, "dtype": dtype_name, "temperature": TAU}
                    q = torch.randn(n, d, device=dev, dtype=dtype, requires_grad=True)
                    k = torch.randn(n, d, device=dev, dtype=dtype)
                    queue = F.normalize(torch.randn(kq, d, device=dev), dim=1).to(dtype)
                    compiled = torch.compile(eager_queue_info_nce, dynamic=False)
                    fns = {"eager": eager_queue_info_nce, "compile": compiled, "triton": triton_queue_info_nce}
                    first: dict = {}
                    for provider in providers:
                        fn = lambda f=fns[provider]: f(q, k, queue, TAU)  # noqa: E731

                        def measure(fn=fn):
                            # forward sanity on the benchmark's own inputs (the unit tests are the real check)
                            loss = fn().detach().float()
                            torch.testing.assert_close(loss, first.setdefault("loss", loss), rtol=2e-2, atol=2e-2)
                            return time_grad_case(fn, (q,), 2 * n * kq * d, 4 * n * kq * d, smoke=args.smoke)

                        records.append(run_guarded(provider, meta, measure))
                    del q, k, queue, compiled, fns
                    free_memory()
    derive_speedups(records, ceilings.matmul_tflops)
    path = write_results("moco_queue", records, ceilings, args, meta={
        "op": "info_nce(queue=...)", "temperature": TAU, "flops_total": "4*N*K*D", "flops_fwd": "2*N*K*D",
        "quick": bool(args.quick)})
    png = plot(
        path,
        [("forward + backward", lambda r: r.total.median if r.total else None, "ms"),
         ("peak extra memory", lambda r: r.peak_mem_mib, "MiB"),
         ("achieved (4·N·K·D per fwd+bwd)", lambda r: r.extra.get("tflops_total"), "TFLOP/s")],
        x_key="K",
        series_key=lambda c: f"N={c['N']} {c['dtype']}",
    )
    print_table(records, _COLUMNS)
    print(f"\nwrote {path} and {png}")


if __name__ == "__main__":
    main()
