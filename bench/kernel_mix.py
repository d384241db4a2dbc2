"""Instructions per streamed tile of the contrastive kernels, compiled for sm_90 without a GPU.

What a GPU-less session can measure of a kernel change: ptxas's registers, spills and shared memory,
and the SASS of each main loop, path by path (``tests/ops/_kernel_aot.py --mix``). The contrastive
kernels' loop body has two paths since mask-free tiles: the masked tile update (compares and selects
for excluded, positive and out-of-range columns) and the plain one, which every tile not meeting a row
block's excluded / positive columns or a ragged end takes (all but a few per row block at training
sizes). This script compiles the launchers' fixed config of each kernel (bf16, D = 128 and 256) twice:
as launched now and with ``MASK_ALL`` (every tile masked), and puts the counts side by side
with the loop model of notes/contrastive.md:
  tensor clocks per tile = MACs / 2048 (an H100/H200 SM's dense bf16 rate: 4096 FLOP per clock);
  issue clocks per tile  = SASS instructions per warp × warps / 4 (four schedulers, one issue each);
  serial = tensor + issue (the loop waits for its wgmma, then the softmax: this project's kernels);
  overlap = max(tensor, issue) (a ping-pong schedule's ideal).
These are counts and a model, not GPU times: the GPU run's `triton` vs `triton[masked]` rows
(``bench/contrastive.py``) time the same change.

    python bench/kernel_mix.py            # bench/results/kernel-mix-sm90.{json,md,png} (~1 min on 2 cores)
    PYTHONPATH=.venv/gpu-triton python bench/kernel_mix.py --name triton3.6   # the GPU machine's Triton
    python bench/kernel_mix.py --smoke    # the forward at D = 128 only: kernel-mix-smoke.* (tests/bench)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

RESULTS = _ROOT / "bench" / "results"
KERNELS = ("fwd", "bwd_rows", "bwd_sym", "bwd_cols")
MACS_PER_CLOCK = 2048  # dense bf16 per SM per clock on sm_90
SCHEDULERS = 4


def _compile(only: str, mask_all: bool) -> list[dict]:
    """The AOT records of the variants matching ``only``, compiled in a fresh process (Triton's JIT, no
    interpreter) with ``MASK_ALL`` as given."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["FASTSSL_AOT_MASK_ALL"] = "1" if mask_all else "0"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "aot.json"
        subprocess.run([sys.executable, str(_ROOT / "tests" / "ops" / "_kernel_aot.py"), str(out), "--mix",
                        "--only", only], env=env, check=True, capture_output=True, text=True)
        return json.loads(out.read_text())["records"]


def _model(tile_macs: int, instructions: int, warps: int) -> dict:
    tensor = tile_macs / MACS_PER_CLOCK
    issue = instructions * warps / SCHEDULERS
    return {"tensor_clk": tensor, "issue_clk": issue, "serial_clk": tensor + issue, "overlap_clk": max(tensor, issue)}


def rows_for(d: int, kernels=KERNELS) -> list[dict]:
    """One row per kernel at bf16 and feature size ``d``: the fixed config with NT-Xent's switches (the AOT
    script's "light" variant: no weights, positives kept), before (every tile masked) and after (its
    masked and unmasked paths)."""
    from fastssl.kernels import contrastive_tiles as tiles

    out = []
    for kernel in kernels:
        bm, bn, warps, stages = tiles.fixed_config(kernel, "bf16", d)
        config = f"{bm}x{bn}w{warps}s{stages}"
        only = f"contrastive/{kernel}/bf16/{d}/{config}"
        recs = {mask_all: [r for r in _compile(only, mask_all)
                           if r["kernel"] == kernel and r["config"] == config and r.get("flags") == "light"]
                for mask_all in (True, False)}
        before, after = recs[True][0], recs[False][0]
        for r in (before, after):
            if "error" in r:
                raise RuntimeError(f"{only}: {r['error']}")
        before_n = before["loop_paths"][-1]["instructions"]
        masked_n = after["loop_paths"][-1]["instructions"]
        plain_n = after["loop_paths"][0]["instructions"]
        # MACs of one streamed tile: the score matmul, plus dS·operand in the backward passes
        tile_macs = bm * bn * d * (1 if kernel == "fwd" else 2)
        out.append({
            "kernel": kernel, "dtype": "bf16", "D": d, "config": config, "warps": warps,
            "regs": {"before": before["regs"], "after": after["regs"]},
            "spill_bytes": {"before": before["spill_stores"], "after": after["spill_stores"]},
            "smem": {"before": before["smem"], "after": after["smem"]},
            "paths_after": len(after["loop_paths"]),
            "instructions_per_tile": {"before": before_n, "after_masked": masked_n, "after_plain": plain_n},
            "plain_vs_before": plain_n / before_n - 1,
            "model": {"before": _model(tile_macs, before_n, warps), "after_plain": _model(tile_macs, plain_n, warps)},
            "ops_plain": after["loop_paths"][0]["ops"], "ops_before": before["loop_paths"][-1]["ops"],
        })
    return out


def _span(idx: list[int]) -> tuple[int, int]:
    valid = [i for i in idx if i >= 0]
    return (min(valid), max(valid)) if valid else (1 << 30, -1)


def _meets(start: int, block: int, span: tuple[int, int]) -> bool:
    return start <= span[1] and start + block > span[0]


def masked_share(kernel: str, m: int, c: int, pos: list[int], excl: list[int], d: int = 256) -> float:
    """The share of streamed tiles that take the masked path, by the kernels' rule (a Python twin of
    the conditions in ``kernels/contrastive.py``), for the launch ``contrastive_tiles.geometry`` plans on a
    132-SM device: the weight of the masked path in a call's loop time."""
    from fastssl.kernels import contrastive_tiles as tiles

    geo = tiles.geometry(kernel, "bf16", d, m, c, 132)
    bm, bn, chunk = geo.block_m, geo.block_n, geo.chunk
    total = masked = 0
    if kernel == "bwd_cols":  # column tiles loop over row tiles
        for n0 in range(0, c, bn):
            for lo in range(0, m, chunk):
                hi = min(m, lo + chunk)
                for a0 in range(lo, hi, bm):
                    rows = range(a0, min(a0 + bm, hi))
                    total += 1
                    masked += (n0 + bn > c or _meets(n0, bn, _span([excl[a] for a in rows]))
                               or _meets(n0, bn, _span([pos[a] for a in rows])))
        return masked / total
    for a0 in range(0, m, bm):
        rows = range(a0, min(a0 + bm, m))
        e, p = _span([excl[a] for a in rows]), _span([pos[a] for a in rows])
        for lo in range(0, c, chunk):
            hi = min(c, lo + chunk)
            for n0 in range(lo, hi, bn):
                total += 1
                special = n0 + bn > hi or _meets(n0, bn, e) or (kernel != "fwd" and _meets(n0, bn, p))
                if kernel == "bwd_sym" and not special:
                    cols = range(n0, min(n0 + bn, hi))
                    special = (_meets(a0, bm, _span([excl[j] for j in cols]))
                               or _meets(a0, bm, _span([pos[j] for j in cols])))
                masked += special
    return masked / total


def shape_rows(mix: list[dict]) -> list[dict]:
    """Masked share and the loop model's time per call at the two target shapes (D = 256): NT-Xent at
    2N = 8192 on one GPU (forward + symmetric backward) and a rank's 1024 rows against 32768 gathered
    columns (forward, dRows, dCols)."""
    by = {(r["kernel"], r["D"]): r for r in mix}
    n = 4096
    sq_pos = [n + a for a in range(n)] + list(range(n))
    sq_self = list(range(2 * n))
    nl, total, off = 512, 16384, 4096  # 1024 local rows = 2 views of 512; rank 8 of 32 (offset 4096)
    di_pos = [total + off + i for i in range(nl)] + [off + i for i in range(nl)]
    di_self = [off + i for i in range(nl)] + [total + off + i for i in range(nl)]
    cases = [("square 8192x8192", 2 * n, 2 * n, sq_pos, sq_self, ("fwd", "bwd_sym")),
             ("dist 1024x32768", 2 * nl, 2 * total, di_pos, di_self, ("fwd", "bwd_rows", "bwd_cols"))]
    out = []
    for shape, m, c, pos, excl, kernels in cases:
        for kernel in kernels:
            r = by[(kernel, 256)]
            share = masked_share(kernel, m, c, pos, excl)
            i = r["instructions_per_tile"]
            mb = r["model"]["before"]["serial_clk"]
            tensor = r["model"]["before"]["tensor_clk"]
            masked = tensor + i["after_masked"] * r["warps"] / SCHEDULERS
            plain = r["model"]["after_plain"]["serial_clk"]
            after = share * masked + (1 - share) * plain
            out.append({"shape": shape, "kernel": kernel, "masked_share": share, "serial_clk_before": mb,
                        "serial_clk_after": after, "change": after / mb - 1})
    return out


def markdown(rows: list[dict], shapes: list[dict] | None = None, triton_version: str = "") -> str:
    lines = [
        "# Contrastive kernels: SASS instructions per streamed tile (sm_90, bf16; `python bench/kernel_mix.py`)",
        "",
        f"Compiled for sm_90 on a CPU by Triton {triton_version} (no GPU time). `before`: every tile through the",
        "masked update (`FASTSSL_CONTRASTIVE_MASK_ALL=1`, bench's `triton[masked]`); `after`: the masked path (the few tiles",
        "at excluded / positive columns and ragged ends) and the plain path (all other tiles). Loop model",
        "in clocks per tile (tensor = MACs / 2048, issue = instructions × warps / 4): serial = tensor + issue.",
        "",
        "| kernel | D | config | regs before → after | spills after | instr. / tile before | after, masked | after, plain | plain vs before | serial clk before → plain | overlap clk before → plain |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        i, mb, ma = r["instructions_per_tile"], r["model"]["before"], r["model"]["after_plain"]
        lines.append(
            f"| {r['kernel']} | {r['D']} | {r['config']} | {r['regs']['before']} → {r['regs']['after']} "
            f"| {r['spill_bytes']['after']} B | {i['before']} "
            f"| {i['after_masked']} | {i['after_plain']} | {100 * r['plain_vs_before']:+.0f} % "
            f"| {mb['serial_clk']:.0f} → {ma['serial_clk']:.0f} ({100 * (ma['serial_clk'] / mb['serial_clk'] - 1):+.0f} %) "
            f"| {mb['overlap_clk']:.0f} → {ma['overlap_clk']:.0f} |")
    if shapes:
        lines += [
            "",
            "At the two target shapes (D = 256; launches as planned for 132 SMs): the share of streamed tiles",
            "that take the masked path, and the serial loop model's clocks per tile, weighted by it.",
            "",
            "| shape | kernel | tiles masked | serial clk / tile before → after | change |",
            "|---|---|---|---|---|",
        ]
        for r in shapes:
            lines.append(f"| {r['shape']} | {r['kernel']} | {100 * r['masked_share']:.1f} % | {r['serial_clk_before']:.0f} → "
                         f"{r['serial_clk_after']:.0f} | {100 * r['change']:+.0f} % |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['kernel']}\nD={r['D']}" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 3.6))
    for k, (key, name) in enumerate((("before", "before (every tile masked)"), ("after_masked", "after, masked tiles"),
                                     ("after_plain", "after, other tiles"))):
        ax.bar([i + (k - 1) * 0.27 for i in x], [r["instructions_per_tile"][key] for r in rows], 0.27, label=name)
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("SASS instructions per warp per tile")
    ax.set_title("Contrastive kernels' main loop, sm_90 bf16 (compiled on CPU)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="the forward at D = 128 only (kernel-mix-smoke.*)")
    p.add_argument("--out-dir", type=Path, default=RESULTS, help="folder for kernel-mix-{sm90,smoke}.{json,md,png}")
    p.add_argument("--name", default="", help="suffix of the files: kernel-mix-sm90-NAME.* (e.g. triton3.6)")
    args = p.parse_args(argv)
    rows = rows_for(128, ("fwd",)) if args.smoke else [r for d in (128, 256) for r in rows_for(d)]
    shapes = None if args.smoke else shape_rows(rows)
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    import triton

    # --name: e.g. the GPU machine's Triton (PYTHONPATH=.venv/gpu-triton) beside the installed one's files
    stem = out / ("kernel-mix-smoke" if args.smoke else "kernel-mix-sm90" + ("" if args.name == "" else f"-{args.name}"))

    doc = {"target": "sm_90 (GPUTarget cuda 90), compiled on CPU", "triton": triton.__version__, "smoke": args.smoke,
           "model": {"macs_per_clock": MACS_PER_CLOCK, "schedulers": SCHEDULERS}, "rows": rows, "shapes": shapes}

    def file(ext: str) -> Path:  # not with_suffix: a name such as "triton3.6" has a dot of its own
        return stem.parent / f"{stem.name}.{ext}"

    file("json").write_text(json.dumps(doc, indent=1))
    file("md").write_text(markdown(rows, shapes, triton.__version__))
    plot(rows, file("png"))
    print(markdown(rows, shapes, triton.__version__))
    print(f"wrote {stem}.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
