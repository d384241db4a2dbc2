"""Benchmark of the MAE token ops: eager MAE-style code vs torch.compile of it vs the Triton kernels.

Cases (ViT-B, 224 px, p = 16, L = 196, bf16 activations and parameters):
  gather          encoder side, D = 768: kept tokens + pos embed; backward to x and pos
  scatter         decoder side, D = 512: kept tokens + mask token + pos embed; backward to all three
  patchify_noise  CAN's noisy kept patches + noise + MAE-normalised target from the image (no backward)
over mask ratio {0.75, 0.5} and B {64, 256, 1024}. pos_embed requires grad here (MAE keeps its
sin-cos table fixed; a learned one is the costlier case, so it is the one timed).

Effective GB/s counts the minimum bytes: every input the op needs read once (only the kept rows
of x for gather) and every output written once (dx in full: its zeros must be written too),
against a large device copy measured in the same run (``bench.common.measure_ceilings``).

    python bench/tokens.py            # full GPU sweep -> bench/results/tokens-<device>.{json,png}
    python bench/tokens.py --quick    # reduced GPU sweep (B 256 and 1024, ratio 0.75), a few minutes
    python bench/tokens.py --smoke    # tiny sweep that runs anywhere (CPU: Triton interpreter)
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

if not torch.cuda.is_available():  # the kernels run in the interpreter on CPU (smoke only)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bench.common import (  # noqa: E402
    Column, Record, device, free_memory, measure_ceilings, ms, parse_args, peak_memory_mib, plot, print_table, run_guarded,
    time_fn, write_results,
)
from fastssl.ops import gather_tokens, patchify_noise, random_masking, scatter_tokens  # noqa: E402

# ----------------------------------------------------------------------------- eager MAE-style code


def eager_gather(x, pos, ids_keep):
    """MAE forward_encoder: add the embedding to every token, then gather the kept ones."""
    x = x + pos.unsqueeze(0)
    return torch.gather(x, 1, ids_keep.unsqueeze(-1).repeat(1, 1, x.shape[2]))


def eager_scatter(x, mask_token, pos, ids_restore):
    """MAE forward_decoder: append mask tokens, unshuffle with ids_restore, add the embedding."""
    b, k, d = x.shape
    mask_tokens = mask_token.reshape(1, 1, d).repeat(b, ids_restore.shape[1] - k, 1)
    x_ = torch.cat([x, mask_tokens], dim=1)
    x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, d))
    return x_ + pos.unsqueeze(0)


def eager_patchify_noise(imgs, sigma, ids_keep, p: int):
    """CAN-style: noise the image, patchify image and noise (MAE einsum), keep, normalise target."""
    n, c, h, w = imgs.shape

    def patchify(t):
        t = t.reshape(n, c, h // p, p, w // p, p)
        return torch.einsum("nchpwq->nhwpqc", t).reshape(n, (h // p) * (w // p), p * p * c)

    noise_img = sigma.reshape(-1, 1, 1, 1).to(imgs.dtype) * torch.randn_like(imgs)
    idx = ids_keep.unsqueeze(-1).repeat(1, 1, p * p * c)
    inputs = torch.gather(patchify(imgs + noise_img), 1, idx)
    noise = torch.gather(patchify(noise_img), 1, idx)
    target = patchify(imgs)
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    target = (target - mean) / (var + 1.0e-6) ** 0.5
    return inputs, target, noise


# ----------------------------------------------------------------------------- cases


def make_case(op: str, b: int, ratio: float, grid: int, p: int, d: int, dtype: torch.dtype, dev: torch.device) -> dict:
    """Inputs, the three providers' callables, and the minimum bytes of forward and backward."""
    L = grid * grid
    ids_keep, ids_restore, _ = random_masking(b, L, ratio, device=dev)
    k = ids_keep.shape[1]
    s = torch.tensor([], dtype=dtype).element_size()
    idx_bytes = ids_keep.numel() * 8
    if op == "gather":
        x = torch.randn(b, L, d, device=dev, dtype=dtype, requires_grad=True)
        pos = torch.randn(L, d, device=dev, dtype=dtype, requires_grad=True)
        leaves = (x, pos)
        fns = {
            "eager": lambda: eager_gather(x, pos, ids_keep),
            "triton": lambda: gather_tokens(x, ids_keep, pos, backend="triton"),
        }
        compiled = torch.compile(eager_gather, dynamic=False)
        fns["compile"] = lambda: compiled(x, pos, ids_keep)
        fwd_bytes = (b * k * d + L * d) * s + idx_bytes + b * k * d * s
        bwd_bytes = b * k * d * s + idx_bytes + (b * L * d + L * d) * s
    elif op == "scatter":
        x = torch.randn(b, k, d, device=dev, dtype=dtype, requires_grad=True)
        mt = torch.randn(d, device=dev, dtype=dtype, requires_grad=True)
        pos = torch.randn(L, d, device=dev, dtype=dtype, requires_grad=True)
        leaves = (x, mt, pos)
        fns = {
            "eager": lambda: eager_scatter(x, mt, pos, ids_restore),
            "triton": lambda: scatter_tokens(x, ids_keep, L, mt, pos, backend="triton"),
        }
        compiled = torch.compile(eager_scatter, dynamic=False)
        fns["compile"] = lambda: compiled(x, mt, pos, ids_restore)
        fwd_bytes = (b * k * d + d + L * d) * s + idx_bytes + b * L * d * s
        bwd_bytes = b * L * d * s + idx_bytes + (b * k * d + d + L * d) * s
    elif op == "patchify_noise":
        imgs = torch.randn(b, 3, grid * p, grid * p, device=dev, dtype=dtype)
        sigma = torch.rand(b, device=dev) * 0.05
        leaves = ()
        P = p * p * 3
        fns = {
            "eager": lambda: eager_patchify_noise(imgs, sigma, ids_keep, p),
            "triton": lambda: patchify_noise(imgs, p, sigma, ids_keep=ids_keep, norm_target=True, backend="triton"),
        }
        compiled = torch.compile(eager_patchify_noise, dynamic=False)
        fns["compile"] = lambda: compiled(imgs, sigma, ids_keep, p)
        fwd_bytes = imgs.numel() * s + b * 4 + idx_bytes + (2 * b * k * P + b * L * P) * s
        bwd_bytes = 0
    else:
        raise ValueError(op)
    return {"fns": fns, "leaves": leaves, "fwd_bytes": fwd_bytes, "bwd_bytes": bwd_bytes, "K": k, "L": L,
            "ids_keep": ids_keep, "check": op}


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def check_against_eager(op: str, eager_out, out) -> None:
    """Forward sanity on the benchmark's own inputs (the unit tests are the real correctness check)."""
    if op == "patchify_noise":
        e_in, e_t, e_n = eager_out
        t_in, t_t, t_n = out
        torch.testing.assert_close(t_t.float(), e_t.float(), rtol=2e-2, atol=2e-2)
        torch.testing.assert_close((t_in.float() - t_n.float()), (e_in.float() - e_n.float()), rtol=2e-2, atol=2e-2)
    else:
        torch.testing.assert_close(out.float(), eager_out.float(), rtol=1e-2, atol=1e-2)


def run_case(op, case, provider, smoke) -> Record:
    fn = case["fns"][provider]
    leaves = case["leaves"]
    out = fn()
    extra: dict = {}
    fwd = time_fn(fn, smoke=smoke)
    bwd = total = None
    if leaves:
        grad = torch.randn_like(out)

        # autograd.grad, not .backward: accumulating into .grad would add a read-modify-write of dx
        def backward():
            torch.autograd.grad(out, leaves, grad, retain_graph=True)

        def both():
            torch.autograd.grad(fn(), leaves, grad)

        bwd = time_fn(backward, smoke=smoke)
        total = time_fn(both, smoke=smoke)
        peak = peak_memory_mib(both)
    else:
        total = fwd
        peak = peak_memory_mib(fn)
    extra["gbps_fwd"] = case["fwd_bytes"] / fwd.median / 1e6
    if bwd is not None:
        extra["gbps_bwd"] = case["bwd_bytes"] / bwd.median / 1e6
    extra["gbps_total"] = (case["fwd_bytes"] + case["bwd_bytes"]) / total.median / 1e6
    extra["min_bytes_fwd"] = case["fwd_bytes"]
    extra["min_bytes_bwd"] = case["bwd_bytes"]
    return Record(provider=provider, case={}, fwd=fwd, bwd=bwd, total=total, peak_mem_mib=peak, extra=extra)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], lambda p: p.add_argument("--quick", action="store_true", help="reduced GPU sweep"))
    dev = device()
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    if args.smoke:
        grid, p, dims, batches, ratios, dtype = 4, 4, {"gather": 24, "scatter": 16, "patchify_noise": 0}, [2], [0.75], torch.float32
    else:
        grid, p, dims, dtype = 14, 16, {"gather": 768, "scatter": 512, "patchify_noise": 0}, torch.bfloat16
        batches, ratios = ([256, 1024], [0.75]) if args.quick else ([64, 256, 1024], [0.75, 0.5])
    ceilings = measure_ceilings(smoke=args.smoke)
    print(f"device {torch.cuda.get_device_name() if dev.type == 'cuda' else dev}; copy {ceilings.copy_gbps:.0f} GB/s")
    records: list[Record] = []
    for op in ("gather", "scatter", "patchify_noise"):
        for ratio in ratios:
            for b in batches:
                torch.manual_seed(0)
                torch._dynamo.reset()  # a fresh compile per shape: no recompile limit, no stale graphs
                case = make_case(op, b, ratio, grid, p, dims[op], dtype, dev)
                meta = {"op": op, "B": b, "mask_ratio": ratio, "L": case["L"], "K": case["K"], "D": dims[op] or p * p * 3,
                        "dtype": str(dtype).replace("torch.", "")}
                eager_out = case["fns"]["eager"]()
                for provider in providers:
                    def measure(provider=provider):
                        if provider != "eager":
                            check_against_eager(op, eager_out, case["fns"][provider]())
                        return run_case(op, case, provider, args.smoke)

                    records.append(run_guarded(provider, meta, measure))
                del case, eager_out
                free_memory()
    # speed-up over eager and share of the copy bandwidth, per case
    by_case = {}
    for r in records:
        by_case.setdefault(tuple(sorted(r.case.items())), {})[r.provider] = r
    for group in by_case.values():
        eager = group.get("eager")
        for r in group.values():
            if r.error is None:
                r.extra["pct_copy"] = 100 * r.extra["gbps_total"] / ceilings.copy_gbps
                if eager is not None and eager.error is None:
                    r.extra["speedup_vs_eager"] = eager.total.median / r.total.median
    path = write_results("tokens", records, ceilings, args, meta={"grid": grid, "patch": p, "dims": dims, "quick": bool(args.quick)})
    png = plot(
        path,
        [("forward + backward", lambda r: r.total.median if r.total else None, "ms"),
         ("effective bandwidth (min bytes)", lambda r: r.extra.get("gbps_total"), "GB/s")],
        x_key="B",
        series_key=lambda c: f"{c['op']} r={c['mask_ratio']}",
    )
    print_table(records, [
        Column("op", 15, lambda r: r.case["op"]), Column("ratio", 6, lambda r: r.case["mask_ratio"]),
        Column("B", 6, lambda r: r.case["B"]), Column("provider", 10, lambda r: r.provider),
        Column("fwd ms", 9, lambda r: ms(r.fwd), ".3f"), Column("bwd ms", 9, lambda r: ms(r.bwd), ".3f"),
        Column("tot ms", 9, lambda r: ms(r.total), ".3f"), Column("GB/s", 9, lambda r: r.extra.get("gbps_total"), ".3g"),
        Column("%copy", 7, lambda r: r.extra.get("pct_copy"), ".0f"),
        Column("x eager", 8, lambda r: r.extra.get("speedup_vs_eager"), ".2f"),
    ])
    # the targets (H100): at the largest batch, triton >= 80% of the copy bandwidth and >= 3x eager
    b_max = max(batches)
    for r in records:
        if not args.smoke and r.provider == "triton" and r.case["B"] == b_max and r.error is None:
            pct, su = r.extra["pct_copy"], r.extra.get("speedup_vs_eager", float("nan"))
            print(f"target {r.case['op']:<15} r={r.case['mask_ratio']} B={b_max}: {pct:5.1f}% of copy "
                  f"({'ok' if pct >= 80 else 'MISS'}), {su:.2f}x eager ({'ok' if su >= 3 else 'MISS'})")
    print(f"\nwrote {path} and {png}")


if __name__ == "__main__":
    main()
