"""The trainer itself, per method: images/s and MFU of ``fastssl/train.py`` on synthetic batches.

Each row is one ``python fastssl/train.py --config configs/imagenet/<method>.yaml data.synthetic=true
eval.enabled=false ...`` run (``fastssl.train.main``: the real CLI, the DeepSpeed engine, the method,
logging), bf16 on one device, DeepSpeed ZeRO 0 or 2, with or without ``engine.compile``, bf16 by
``engine.amp`` (``autocast``: fp32 weights under torch.autocast, torch's AdamW stepped by DeepSpeed as it
is; ``deepspeed``: DeepSpeed's bf16 model and optimizer wrapper; ``auto``: autocast at ZeRO 0 on CUDA;
fastssl/engine/amp.py). Rows run in
a child process, several in one (``--rows-per-process``: imports and CUDA start-up, ~15 s on the GPU
machine, are paid once); the parent watches every row: past its cap (``--row-timeout``) or the
sweep's budget (``--budget``) the child is killed, the row recorded as an error, and a fresh child
takes the rows after it. The JSON is rewritten after every row, so a cap keeps what was measured.

Per row, in order:
  ceilings   bf16 matmul TFLOP/s and copy GB/s (``bench.common.measure_ceilings``), once per process:
             every row of a process is measured against the same rate
  flops      model FLOPs of one optimizer step (once per method and shape in a process), counted by
             ``torch.utils.flop_counter.FlopCounterMode`` over the method's eager forward + backward on
             one synthetic batch of the row's shape
             (matmuls, convolutions, attention; elementwise work, norms and the optimizer are not FLOPs
             here, as in nanoGPT's and PaLM's MFU). The count runs the losses on their eager reference,
             attention as one SDPA call per run of equal-length sequences on SDPA's math path (two
             batched matmuls forward, four backward: 12·L·D·T² per view), so every FLOP is an aten op
             the counter sees and the count is the same on every device; the trainer itself runs the
             fused kernels (same maths). notes/gpu.md lists the count per method.
  trainer    ``fastssl.train.main`` for ``warmup + steps`` optimizer steps, the loss read every
             ``warmup`` steps only; images/s = the trainer's steady rate between the first log step
             (after ``warmup`` steps: compilation, allocator, autotuning) and the last. The run ends
             with its summary only (``--full-finish``: the CLI's own end, final checkpoint, encoder
             export and curves, which the tests cover and a speed row need not pay for).
             ``--profile N``: N steps under torch.profiler (device-busy time vs wall per step, kernel
             launches per step, top device and host ops).
  bare       (``--bare``, default on) the model step of ``bench/throughput.py`` at the same shape, for
             this method: forward + backward + torch fused AdamW + ``after_step``, bf16 autocast, no
             DeepSpeed, timed with ``triton.testing.do_bench``; with ``engine.compile`` the same regions.
             Measured once per method, shape and compile setting in a process: rows that differ only in
             ZeRO stage or ``engine.amp`` share it (``bare_shared``), unless their memory layout differs
  memory     (CUDA) peak device memory of the trainer run and of the bare step, allocated and reserved (GiB):
             whether the row's shape fits a smaller GPU
  derived    MFU = flops / trainer step time / matmul rate; trainer overhead = bare rate / trainer rate - 1

Shapes: the imagenet templates at ViT-B/16 224 px (``--arch``; ResNet methods keep ResNet-50), bf16,
B = 256 per GPU for every method unless ``train_plan.ROW_BATCH`` says otherwise; SimCLR runs its DCL loss.

    python bench/train.py --quick        # GPU: the plan of ``train_plan.quick_rows`` (the amp lever on SimCLR first)
    python bench/train.py                # GPU: every method, eager and compile, ZeRO 0
    python bench/train.py --smoke        # anywhere: timm test_vit / test_resnet, 16 px, B=8, 3 steps; not a measurement
    python bench/train.py --methods simclr --variants compile --profile 3 --steps 6
    python bench/train.py --flops        # FLOPs per method only (CPU will do): bench/results/train-flops.json

Files: this one is the sweep (the parent: child processes, caps, the JSON, table and PNG);
``bench/train_plan.py`` the rows and their CLI overrides; ``bench/train_measure.py`` one row measured
in a child, and the FLOP table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import Ceilings, Column, Record, RESULTS, Timing, device_name, plot, print_table  # noqa: E402
from bench.train_measure import flops_table, run_rows  # noqa: E402
from bench.train_plan import AMP_LABEL, METHODS, make_rows  # noqa: E402


def _record(res: dict) -> Record:
    row = res.get("row", {})
    case = {k: row.get(k) for k in ("method", "arch", "batch", "zero", "compile", "precision", "channels_last")}
    case["amp"] = row.get("amp_resolved")
    case["variant"] = ("compile" if row.get("compile") else "eager") + f" z{row.get('zero')}" + \
        (f" {AMP_LABEL[case['amp']]}" if case["amp"] in AMP_LABEL else "") + \
        "".join(" +" + x for x in row.get("extra", []))
    extra = {k: v for k, v in res.items() if k not in ("row", "errors")}
    ips = res.get("trainer_images_per_s")
    total = Timing(*(3 * [1e3 * row["batch"] / ips])) if ips else None
    errors = res.get("errors")
    return Record(provider=case["variant"], case=case, total=total, extra=extra,
                  error="; ".join(f"{k}: {v}" for k, v in errors.items())[:1500] if errors else None)


def derive(res: dict) -> None:
    """MFU of the trainer and of the bare step against the matmul rate measured in the row; overhead."""
    row, c = res["row"], res.get("ceilings")
    flops, ips, bare = res.get("flops_per_step"), res.get("trainer_images_per_s"), res.get("bare_images_per_s")
    if flops and c:
        peak = c["matmul_tflops"] * 1e12
        if ips:
            res["trainer_tflops"] = flops * ips / row["batch"] / 1e12
            res["mfu_pct"] = 100 * flops * ips / row["batch"] / peak
        if bare:
            res["bare_mfu_pct"] = 100 * flops * bare / row["batch"] / peak
    if ips and bare:
        res["trainer_overhead_pct"] = 100 * (bare / ips - 1)


COLUMNS = [
    Column("method", 9, lambda r: r.case["method"]), Column("variant", 20, lambda r: r.provider),
    Column("B", 5, lambda r: r.case["batch"]),
    Column("img/s", 9, lambda r: r.extra.get("trainer_images_per_s"), ".0f"),
    Column("bare img/s", 11, lambda r: r.extra.get("bare_images_per_s"), ".0f"),
    Column("ovh %", 7, lambda r: r.extra.get("trainer_overhead_pct"), ".1f"),
    Column("GFLOP/img", 10, lambda r: r.extra["flops_per_step"] / r.case["batch"] / 1e9 if r.extra.get("flops_per_step") else None, ".1f"),
    Column("MFU %", 7, lambda r: r.extra.get("mfu_pct"), ".1f"),
    Column("bare MFU", 9, lambda r: r.extra.get("bare_mfu_pct"), ".1f"),
    Column("peak GiB", 9, lambda r: r.extra.get("trainer_peak_allocated_gib"), ".1f"),
    Column("matmul TF", 10, lambda r: r.extra.get("ceilings", {}).get("matmul_tflops"), ".0f"),
]


def write(args, results: list[dict], started: float) -> Path:
    args.out_dir.mkdir(parents=True, exist_ok=True)
    from bench.common import _slug

    path = args.out_dir / f"train-{_slug(device_name())}{'-smoke' if args.smoke else ''}.json"
    records = [_record(r) for r in results]
    ceil = next((r["ceilings"] for r in results if r.get("ceilings")), None)
    doc = {"benchmark": "train", "device": device_name(), "torch": torch.__version__, "smoke": bool(args.smoke),
           "ceilings": ceil or asdict(Ceilings(float("nan"), float("nan"))),
           "meta": {"rows": "fastssl/train.py per method on data.synthetic, one subprocess each",
                    "flops": "FlopCounterMode over one eager forward+backward at the row's shape",
                    "mfu": "flops_per_step * trainer images/s / batch / measured bf16 matmul rate",
                    "overhead": "bare images/s / trainer images/s - 1 (bare: method step + fused AdamW, no DeepSpeed)",
                    "elapsed_s": round(time.time() - started, 1), "argv": sys.argv[1:]},
           "records": [asdict(r) for r in records]}
    path.write_text(json.dumps(doc, indent=1, default=str))
    return path


def _line(res: dict) -> str:
    line = f"  {res['row']['name']:<22} {res.get('wall_s', 0):6.1f} s"
    if res.get("trainer_images_per_s"):
        line += f"  {res['trainer_images_per_s']:8.1f} img/s"
    if res.get("mfu_pct") is not None:
        line += f"  MFU {res['mfu_pct']:.1f} %"
    if res.get("trainer_overhead_pct") is not None:
        line += f"  overhead {res['trainer_overhead_pct']:+.1f} %"
    if res.get("trainer_peak_allocated_gib") is not None:
        line += f"  peak {res['trainer_peak_allocated_gib']:.1f} GiB"
    if res.get("profile"):
        p = res["profile"]
        line += f"  [profile: device {p['device_ms_per_step']:.1f} ms/step, {p['kernel_launches_per_step']:.0f} launches/step]"
    if res.get("errors"):
        line += "  ERROR " + "; ".join(f"{k}: {str(v).splitlines()[0][:90]}" for k, v in res["errors"].items())
    return line


_CHILDREN: list = []


def _stop_children(signum, frame) -> None:
    """SIGTERM / SIGINT (a time cap outside, Ctrl-C): the child runs in its own session, so take it down
    with us, then leave through SystemExit (the JSON is already up to date after every row)."""
    for c in _CHILDREN:
        try:
            os.killpg(c.pid, 9)
        except ProcessLookupError:
            pass
    raise SystemExit(128 + signum)


def run_parent(args) -> None:
    """Run the rows in child processes, ``--rows-per-process`` at a time. The parent watches each row:
    past its cap (or the sweep's budget) the child is killed, that row is recorded as an error, and a
    fresh child takes the rows after it. The JSON is rewritten after every row."""
    import signal

    signal.signal(signal.SIGTERM, _stop_children)
    signal.signal(signal.SIGINT, _stop_children)
    rows = make_rows(args)
    started = time.time()
    results: list[dict] = []
    path = None
    print(f"bench/train.py: {len(rows)} rows, {args.row_timeout:.0f} s per row, {args.budget:.0f} s in all, "
          f"{args.rows_per_process} per process", flush=True)
    todo = list(rows)
    while todo:
        if args.budget - (time.time() - started) < args.min_left:
            results += [{"row": r, "errors": {"skipped": f"the sweep's budget of {args.budget:.0f} s is spent"}} for r in todo]
            break
        group, todo = todo[:args.rows_per_process], todo[args.rows_per_process:]
        progress = Path(tempfile.mkdtemp(prefix="fastssl-bench-rows-")) / "progress.json"
        log = progress.with_name("child.log")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(group), "--result", str(progress)]
        with open(log, "w") as out:  # own session: a kill takes its compile workers too
            child = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        _CHILDREN[:] = [child]
        seen, t_group = 0, time.time()
        row_started = {0: t_group}
        killed_at = None

        def state() -> dict:
            try:
                return json.loads(progress.read_text())
            except (OSError, json.JSONDecodeError):
                return {"results": [], "current": None}

        def tail() -> str:
            try:
                return log.read_text(errors="replace")[-1500:]
            except OSError:
                return ""

        while True:
            rc = child.poll()
            st = state()
            if st.get("current"):
                row_started[st["current"]["index"]] = st["current"]["started"]
            for res in st["results"][seen:]:  # rows finished since the last look
                res["wall_s"] = round(time.time() - row_started.get(seen, t_group), 1)
                if res.get("errors"):
                    res["log_tail"] = tail()
                derive(res)
                results.append(res)
                print(_line(res), flush=True)
                path = write(args, results, started)
                seen += 1
            if rc is not None:
                break
            now = time.time()
            current = seen  # the row in progress
            if current >= len(group):  # every row reported; the child is only finishing (or over budget): end it
                if now - started > args.budget:
                    os.killpg(child.pid, 9)
                    child.wait()
                    break
                time.sleep(0.5)
                continue
            over_row = now - row_started.get(current, t_group) > args.row_timeout
            over_all = now - started > args.budget
            if over_row or over_all:
                os.killpg(child.pid, 9)
                child.wait()
                killed_at = current
                why = f"row time cap of {args.row_timeout:.0f} s reached" if over_row else \
                    f"the sweep's budget of {args.budget:.0f} s is spent"
                res = {"row": group[current], "wall_s": round(now - row_started.get(current, t_group), 1),
                       "errors": {"process": f"{why}; killed\n{tail()}"}}
                results.append(res)
                print(_line(res), flush=True)
                path = write(args, results, started)
                break
            time.sleep(0.5)
        if killed_at is None and seen < len(group):  # the child died inside a row (crash, OOM kill)
            res = {"row": group[seen], "errors": {"process": f"exit {child.returncode}: {tail()}"}}
            results.append(res)
            print(_line(res), flush=True)
            path = write(args, results, started)
            killed_at = seen
        if killed_at is not None:
            todo = group[killed_at + 1:] + todo
    if path is None:
        path = write(args, results, started)
    try:
        png = plot(path, [("trainer images/s", lambda r: r.extra.get("trainer_images_per_s"), "images/s"),
                          ("MFU (vs measured bf16 matmul)", lambda r: r.extra.get("mfu_pct"), "%"),
                          ("trainer overhead vs bare step", lambda r: r.extra.get("trainer_overhead_pct"), "%")],
                   x_key="method", series_key=lambda c: "")
        print_table([_record(r) for r in results], COLUMNS)
        print(f"\nwrote {path} and {png}")
    except Exception as err:  # noqa: BLE001  (the JSON is what matters)
        print_table([_record(r) for r in results], COLUMNS)
        print(f"\nwrote {path} (no PNG: {type(err).__name__}: {err})")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny models at 16 px, B=8, 3 steps: runs on CPU, not a measurement")
    p.add_argument("--quick", action="store_true", help="the amp lever on SimCLR/DCL (ZeRO 0, 2, compile), then every method "
                   "at ZeRO 0, then ZeRO 2 and compile rows (quick_rows)")
    p.add_argument("--methods", default=None, help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--variants", default="eager,compile", help="eager,compile (engine.compile off / on)")
    p.add_argument("--zero", default="0", help="DeepSpeed ZeRO stages, comma-separated (0, 2)")
    p.add_argument("--precision", default=None, choices=("bf16", "fp32"),
                   help="engine.precision of every row (default: bf16 on CUDA, fp32 elsewhere)")
    p.add_argument("--amp", default="auto", help="engine.amp values, comma-separated (auto, autocast, deepspeed)")
    p.add_argument("--plan", action="store_true", help="print the rows this invocation would run on a GPU machine, and stop")
    p.add_argument("--arch", default="vit_base_patch16_224", help="timm ViT for the ViT methods (224 px, patch 16)")
    p.add_argument("--batch", type=int, default=None, help="per-GPU batch for every row (default 256; smoke 8)")
    p.add_argument("--steps", type=int, default=None, help="timed optimizer steps after the warm-up")
    p.add_argument("--warmup", type=int, default=None, help="optimizer steps before timing starts (the first log step)")
    p.add_argument("--row-timeout", type=float, default=float(os.environ.get("TRAIN_ROW_CAP", 120)), help="seconds per row")
    p.add_argument("--rows-per-process", type=int, default=int(os.environ.get("TRAIN_ROWS_PER_PROCESS", 100)),
                   help="rows sharing one child process (start-up paid once; 1: every row in its own process)")
    p.add_argument("--min-left", type=float, default=15, help="start no child with fewer seconds of budget left")
    p.add_argument("--bare", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the bare model step (the trainer overhead); --no-bare saves ~5 s per row")
    p.add_argument("--full-finish", action="store_true",
                   help="end each run as the CLI does (final checkpoint, encoder export, curves) instead of the summary only")
    p.add_argument("--profile", type=int, default=0,
                   help="profile this many trainer steps after the warm-up (device-busy vs wall time, launches, top ops)")
    p.add_argument("--extra", default="", help="space-separated overrides added to every row, e.g. 'optim.clip_grad=null'")
    p.add_argument("--budget", type=float, default=float(os.environ.get("TRAIN_CAP", 480)), help="seconds for the whole sweep")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--flops", action="store_true", help="only the FLOP count per method (any device; writes train-flops.json)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 2 if args.smoke else 9
    if args.warmup is None:
        args.warmup = 1 if args.smoke else 3
    return args


def main(argv=None) -> None:
    args = parse(argv)
    if args.flops:
        flops_table(args)
        return
    if args.child:
        if not torch.cuda.is_available():
            os.environ.setdefault("TRITON_INTERPRET", "1")
            torch.set_num_threads(1)
        run_rows(json.loads(args.child), args.result)
        return
    if args.plan:  # as it runs on a GPU machine (bf16), whatever this machine is
        for i, row in enumerate(make_rows(args, cuda=True), 1):
            print(f"  {i:2d}. {row['name']}" + ("" if row["bare"] else "  (no bare step)"))
        return
    run_parent(args)


if __name__ == "__main__":
    main()
