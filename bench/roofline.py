"""Roofline per benchmarked shape: the time a fused op cannot go below on a GPU, beside what the last run measured.

Contrastive losses (rows M, columns C, feature size D; bf16; forward + backward):
  tensor  matmul FLOPs at the bf16 matmul rate measured in the same GPU run. The least work: the forward's
          scores 2·M·C·D; the backward recomputes them once (2·M·C·D) and forms dRows (2·M·C·D) and, when
          the columns need a gradient, dCols (2·M·C·D), except where rows are the columns (single-process
          SimCLR / DCL), whose gradient dZ = (dS + dSᵀ)·Z is one matmul. As implemented, columns that need
          a gradient get their own pass, which recomputes the scores a second time.
  exp     one exp2 per score element in the forward and in every recomputation, at the special-function
          rate: 3.9 T/s on an H100 SXM (FlashAttention-3's figure for the MUFU; the H200 has the same SMs).
  memory  every operand read once, every output written once, at the measured copy rate (rows and columns
          are MiB: never the bound at these shapes).
  "overlap" = the largest of the three (softmax hidden under the matmuls, as FlashAttention-3's
  ping-pong schedule does); "serial" = tensor + exp + memory (a loop whose softmax waits for its
  matmul and the other way round, this project's loop model: notes/contrastive.md).
Token ops: the bytes that must move (``bench/tokens.py``'s ``min_bytes``) at the measured copy rate.

    python bench/roofline.py     # reads bench/results/{contrastive,tokens}-nvidia-h200.json, prints the
                                 # tables, writes bench/results/roofline-nvidia-h200.md
CPU only: no GPU is used; the measured figures are the committed ones.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
EXP_PER_S = 3.9e12  # H100 SXM special-function (MUFU) throughput, FlashAttention-3 (Shah et al., 2024), §1


@dataclass(frozen=True)
class Floor:
    tensor_ms: float
    exp_ms: float
    memory_ms: float

    @property
    def overlap_ms(self) -> float:
        return max(self.tensor_ms, self.exp_ms, self.memory_ms)

    @property
    def serial_ms(self) -> float:
        return self.tensor_ms + self.exp_ms + self.memory_ms


def contrastive_work(m: int, c: int, d: int, *, cols_grad: bool, same: bool, as_implemented: bool = False):
    """(matmul FLOPs, exp2 count, bytes) of one forward + backward (bf16 operands, fp32 per-row vectors).

    ``same``: rows are the columns (the square single-process case); ``as_implemented``: count the
    kernels' own work (a separate column pass that recomputes the scores) instead of the least work."""
    mcd, mc = m * c * d, m * c
    if same:
        flops, exps = 2 * mcd + 2 * mcd + 2 * mcd, 2 * mc  # scores, recomputed scores, dZ = (dS + dSᵀ)·Z
    elif cols_grad:
        passes = 2 if as_implemented else 1
        flops, exps = 2 * mcd + passes * 2 * mcd + 2 * mcd + 2 * mcd, (1 + passes) * mc
    else:
        flops, exps = 2 * mcd + 2 * mcd + 2 * mcd, 2 * mc
    operands = (m * d if same else (m + c) * d) * 2  # bf16, read by the forward
    grads = (m * d if same else (m + (c if cols_grad else 0)) * d) * 2  # written by the backward (+ read again)
    per_row = m * 4 * 4  # loss, LSE₂ written; LSE₂ and dloss read back
    return flops, exps, operands * 2 + grads + per_row


def contrastive_floor(m: int, c: int, d: int, matmul_tflops: float, copy_gbps: float, *, cols_grad: bool,
                      same: bool, as_implemented: bool = False) -> Floor:
    flops, exps, nbytes = contrastive_work(m, c, d, cols_grad=cols_grad, same=same, as_implemented=as_implemented)
    return Floor(flops / (matmul_tflops * 1e9), exps / EXP_PER_S * 1e3, nbytes / (copy_gbps * 1e6))


# The benchmark's cases: which operands need a gradient (bench/contrastive.py's Case.cols_grad)
_CASES = {"square": dict(cols_grad=True, same=True), "dist": dict(cols_grad=True, same=False),
          "mmoco": dict(cols_grad=False, same=False), "queue": dict(cols_grad=False, same=False)}


def contrastive_rows(doc: dict) -> list[dict]:
    ceil = doc["ceilings"]
    out = []
    for r in doc["records"]:
        if r["provider"] != "triton" or r.get("error") or r["case"].get("dtype") != "bfloat16":
            continue
        c = r["case"]
        kind, m, cols, d = c["case"], c["M"], c["C"], c["D"]
        least = contrastive_floor(m, cols, d, ceil["matmul_tflops"], ceil["copy_gbps"], **_CASES[kind])
        ours = contrastive_floor(m, cols, d, ceil["matmul_tflops"], ceil["copy_gbps"], **_CASES[kind], as_implemented=True)
        kernel = r["extra"].get("kernel_ms")
        out.append(dict(shape=f"{kind} {m}x{cols}", D=d, tensor_ms=least.tensor_ms, exp_ms=least.exp_ms,
                        memory_ms=least.memory_ms, overlap_ms=least.overlap_ms, serial_ms=least.serial_ms,
                        implemented_serial_ms=ours.serial_ms, kernel_ms=kernel, wall_ms=r["total"]["median"],
                        pct_of_floor=100 * least.overlap_ms / kernel if kernel else None))
    return out


def token_rows(doc: dict) -> list[dict]:
    copy = doc["ceilings"]["copy_gbps"]
    out = []
    for r in doc["records"]:
        if r["provider"] != "triton" or r.get("error"):
            continue
        c, e = r["case"], r["extra"]
        nbytes = e["min_bytes_fwd"] + e["min_bytes_bwd"]
        floor = nbytes / (copy * 1e6)
        kernel = e.get("kernel_ms_total")
        out.append(dict(op=c["op"], B=c["B"], D=c["D"], MB=nbytes / 1e6, floor_ms=floor, kernel_ms=kernel,
                        wall_ms=r["total"]["median"], pct_of_floor=100 * floor / kernel if kernel else None))
    return out


def _f(v, spec=".3f") -> str:
    return "–" if v is None else format(v, spec)


def markdown(contrastive: list[dict], tokens: list[dict], device: str, ceilings: dict) -> str:
    lines = [f"# Roofline per shape, {device} (`python bench/roofline.py`)", "",
             f"Ceilings measured in the GPU run: bf16 matmul {ceilings['matmul_tflops']:.0f} TFLOP/s, copy "
             f"{ceilings['copy_gbps']:.0f} GB/s; exp2 at {EXP_PER_S / 1e12:.1f} T/s. Times in ms, forward + backward.", "",
             "## Contrastive losses (bf16)", "",
             "| shape | D | tensor | exp | overlap floor | serial floor | serial, as implemented | kernels measured | wall measured | floor / kernels |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in contrastive:
        lines.append(f"| {r['shape']} | {r['D']} | {_f(r['tensor_ms'])} | {_f(r['exp_ms'])} | {_f(r['overlap_ms'])} | "
                     f"{_f(r['serial_ms'])} | {_f(r['implemented_serial_ms'])} | {_f(r['kernel_ms'])} | {_f(r['wall_ms'])} | "
                     f"{_f(r['pct_of_floor'], '.0f')} % |")
    lines += ["", "## Token ops (bf16, 75 % masked)", "",
              "| op | B | D | bytes that must move (MB) | copy floor | kernels measured | wall measured | floor / kernels |",
              "|---|---|---|---|---|---|---|---|"]
    for r in tokens:
        lines.append(f"| {r['op']} | {r['B']} | {r['D']} | {r['MB']:.0f} | {_f(r['floor_ms'])} | {_f(r['kernel_ms'])} | "
                     f"{_f(r['wall_ms'])} | {_f(r['pct_of_floor'], '.0f')} % |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="nvidia-h200", help="the <device> of bench/results/<bench>-<device>.json")
    p.add_argument("--out", type=Path, default=None, help="the markdown file (default bench/results/roofline-<device>.md)")
    args = p.parse_args(argv)
    con = json.loads((RESULTS / f"contrastive-{args.device}.json").read_text())
    tok = json.loads((RESULTS / f"tokens-{args.device}.json").read_text())
    text = markdown(contrastive_rows(con), token_rows(tok), con["device"], con["ceilings"])
    out = args.out or RESULTS / f"roofline-{args.device}.md"
    out.write_text(text)
    print(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
