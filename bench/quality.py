"""Method comparison on Fashion-MNIST: every registered method for the same budget, kNN + linear probe.

    python bench/quality.py                      # every method with its configs/fmnist/<name>.yaml (CPU)
    python bench/quality.py --methods simclr,byol --steps 300
    python bench/quality.py --long simclr:600    # add a longer row (also configs/fmnist/<name>.yaml)
    python bench/quality.py --smoke              # tiny: 2 steps of timm's test ViT per method (the test suite)
    python bench/quality.py --methods mae --long mae:600 --merge   # re-run some rows, keep the others
    python bench/quality.py --methods "" --long byol:600 --merge   # only a longer row
    python bench/quality.py --methods simclr,dac --seeds 3        # each row 3 times: mean ± std

Each method trains as a user would start it (``fastssl/train.py`` in a subprocess, one process),
with the same steps, batch, model and evaluation subset; the rows are read from each run's
``summary.json``. Two reference rows need no training: **random init** (the encoder every run
starts from — the same seed builds the same encoder before any head) and **raw pixels** (the
normalised 28×28×3 pixels as features, through the same kNN and probe); one random-init row per
encoder (arch + stem) among the rows. With ``--seeds K`` every trained row runs K times (``run.seed``
0 … K−1, one run directory each) and reports the mean and the sample standard deviation of each score
over the seeds: a difference between two rows counts only when it is larger than that spread. Writes
``bench/results/quality-<device>.json``, ``.png`` and ``.md`` (``-smoke`` for smoke runs).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
TRAIN = ROOT / "fastssl" / "train.py"
SMOKE_OVERRIDES = ["model.arch=test_vit", "optim.max_steps=2", "optim.batch_size=32", "eval.train_samples=300",
                   "eval.test_samples=100", "eval.knn_extra=[]", "eval.knn_k=20"]


def _smoke_heads(name: str) -> list[str]:
    """Narrow heads so smoke runs stay seconds (keys differ per method)."""
    from fastssl.config import load_config

    cfg = load_config(ROOT / "configs" / "fmnist" / f"{name}.yaml").method
    out = []
    for head in ("head", "projector", "predictor"):
        if hasattr(cfg, head):
            out += [f"method.{head}.hidden_dim=32"]
    if hasattr(cfg, "predictor"):  # predictor output = projector output (SimSiam requires it)
        out += ["method.projector.out_dim=16", "method.predictor.out_dim=16"]
    return out


def train_method(name: str, out_dir: Path, steps: int | None, extra: list[str], label: str, reuse: bool = False) -> dict:
    """One CLI run; returns its row (scores, wall time, images/s). ``reuse``: take a finished run
    already in ``out_dir`` (same command) instead of training again."""
    cmd = [sys.executable, str(TRAIN), "--config", str(ROOT / "configs" / "fmnist" / f"{name}.yaml"),
           f"run.output_dir={out_dir}", "run.resume=never", "engine.progress=false", *extra]
    if steps is not None:
        cmd.append(f"optim.max_steps={steps}")
    timing = out_dir / "quality_wall_s.txt"
    where = out_dir / "quality_machine.json"  # the machine and its load, so merged rows name where they ran
    if reuse and (out_dir / "summary.json").is_file():
        wall = float(timing.read_text()) if timing.is_file() else float("nan")
        machine = json.loads(where.read_text()) if where.is_file() else None
    else:
        machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "load_before": round(os.getloadavg()[0], 2)}
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        machine["load_after"] = round(os.getloadavg()[0], 2)  # 1-min load average: > cores means the wall time is not idle
        timing.write_text(f"{wall:.1f}")
        where.write_text(json.dumps(machine))
    summary = json.loads((out_dir / "summary.json").read_text())
    scores = {_label(s): s["accuracy"] for s in summary["eval_final"]}
    init = {_label(s): s["accuracy"] for s in summary["eval_init"]}
    return {"row": label, "method": name, "encoder": _encoder_name(Path(cmd[3]), extra), "steps": summary["steps"], "wall_s": round(wall, 1),
            "images_per_s": round(summary["images_per_second"], 1), "scores": scores, "init": init,
            "overrides": [c for c in cmd[5:] if "=" in c], "machine": machine}


def cpu_name() -> str:
    """The CPU model string (Linux /proc/cpuinfo), else the platform's processor name."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def train_seeds(name: str, out_dir: Path, steps: int | None, extra: list[str], label: str, reuse: bool,
                seeds: int) -> dict:
    """``seeds`` = 1: one run in ``out_dir`` (the table as before). More: one run per seed in
    ``out_dir/seed<s>`` with ``run.seed=s``; the row holds each seed's scores and their mean ± std."""
    if seeds == 1:
        return train_method(name, out_dir, steps, extra, label, reuse)
    runs = [train_method(name, out_dir / f"seed{s}", steps, [*extra, f"run.seed={s}"], label, reuse) for s in range(seeds)]
    return seed_row(runs)


def seed_row(runs: list[dict]) -> dict:
    """One row from the same row's runs at several seeds: scores = mean, ``std`` = sample standard
    deviation (ddof 1) per score, wall time and images/s averaged, each run kept under ``per_seed``."""
    import statistics

    keys = list(runs[0]["scores"])

    def mean_std(get):
        vals = [get(r) for r in runs]
        return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)

    row = {k: v for k, v in runs[0].items() if k not in ("scores", "wall_s", "images_per_s", "overrides", "machine")}
    row["scores"] = {k: mean_std(lambda r: r["scores"][k])[0] for k in keys}
    row["std"] = {k: mean_std(lambda r: r["scores"][k])[1] for k in keys}
    row["wall_s"] = round(mean_std(lambda r: r["wall_s"])[0], 1)
    row["images_per_s"] = round(mean_std(lambda r: r["images_per_s"])[0], 1)
    row["seeds"] = len(runs)
    row["overrides"] = [o for o in runs[0]["overrides"] if not o.startswith("run.seed=") and not o.startswith("run.output_dir=")]
    row["per_seed"] = [{"seed": s, "scores": r["scores"], "wall_s": r["wall_s"], "images_per_s": r["images_per_s"],
                        "machine": r.get("machine")} for s, r in enumerate(runs)]
    return row


def random_init_rows(rows: list[dict]) -> list[dict]:
    """One "random init" row per encoder (arch + stem): the initial encoder differs per architecture,
    so a ResNet row is compared with a ResNet at init, a ViT row with a ViT. Taken from the first run
    of each encoder (every run with the same seed and encoder starts from the same weights)."""
    out: dict[str, dict] = {}
    for r in rows:
        out.setdefault(r["encoder"], {"row": f"random init ({r['encoder']})", "method": None, "scores": r["init"]})
    return list(out.values())


def _encoder_name(cfg_path: Path, extra: list[str]) -> str:
    from fastssl.config import load_config

    m = load_config(cfg_path, extra).model
    return m.arch + (", small stem" if m.small_stem else "")


def _label(score: dict) -> str:
    return f"knn_top1@k{score['k']}_T{score['temperature']:g}" if "k" in score else "linear_top1"


def raw_pixels_row(cfg_path: Path, overrides: list[str]) -> dict:
    """kNN and linear probe on the normalised pixels themselves (no model)."""
    import torch

    from fastssl.config import load_config
    from fastssl.data.loader import EvalLoader
    from fastssl.data.prepare import ensure_dataset
    from fastssl.eval.knn import knn_accuracy
    from fastssl.eval.linear_probe import linear_probe_accuracy

    cfg = load_config(cfg_path, overrides)
    ensure_dataset(cfg.data)
    ev = cfg.eval

    def pixels(split, n):
        loader = EvalLoader(cfg.data, split, batch_size=256, max_samples=n)
        xs, ys = zip(*[(x.flatten(1), y) for x, y in loader])
        return torch.cat(xs), torch.cat(ys)

    bank, bank_y = pixels("train", ev.train_samples)
    q, q_y = pixels("test", ev.test_samples)
    classes = int(bank_y.max()) + 1
    scores = {f"knn_top1@k{k}_T{t:g}": knn_accuracy(bank, bank_y, q, q_y, k=k, temperature=t, num_classes=classes)
              for k, t in [(ev.knn_k, ev.knn_temperature)] + [(p.k, p.temperature) for p in ev.knn_extra]}
    scores["linear_top1"] = linear_probe_accuracy(bank, bank_y, q, q_y, num_classes=classes, weight_decay=ev.probe_weight_decay)
    return {"row": "raw pixels", "method": None, "scores": scores}


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """Trained rows of an earlier table (``old``) with the rows of this invocation (``new``): a row
    with the same label is replaced in place, a new label is appended. Reference rows (``method``
    None) are dropped: they are recomputed from the merged rows."""
    fresh = {r["row"]: r for r in new}
    merged = [fresh.pop(r["row"], r) for r in old if r.get("method") is not None]
    return merged + [r for r in new if r["row"] in fresh]


def score_cell(row: dict, key: str) -> str:
    """``63.65%``, or ``63.65 ± 0.41%`` for a row trained at several seeds."""
    if key not in row["scores"]:
        return "-"
    if key in row.get("std", {}):
        return f"{100 * row['scores'][key]:.2f} ± {100 * row['std'][key]:.2f}%"
    return f"{100 * row['scores'][key]:.2f}%"


def where_cell(row: dict) -> str:
    """The CPU(s) a row's runs were trained on and the highest 1-min load average seen around them
    (``AMD EPYC ×2; 1.4``): a load above the core count means its wall time is not an idle measurement."""
    machines = [s["machine"] for s in row.get("per_seed", []) if s.get("machine")] or \
        ([row["machine"]] if row.get("machine") else [])
    if not machines:
        return "-"
    cpus = ", ".join(dict.fromkeys(f"{m['cpu']} ×{m['cores']}" for m in machines))
    return f"{cpus}; {max(max(m['load_before'], m['load_after']) for m in machines):.1f}"


def write_outputs(rows: list[dict], meta: dict, stem: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    cols = list(dict.fromkeys(c for r in rows for c in r["scores"]))  # every score, first-seen order
    where = any(where_cell(r) != "-" for r in rows)  # rows record their machine since --seeds; older tables do not
    head = "| row | " + " | ".join(cols) + " | steps | wall (s) | images/s |" + (" CPU; max load |" if where else "")
    lines = [head, "|" + "---|" * (len(cols) + 4 + where)]
    for r in rows:
        cells = [score_cell(r, c) for c in cols]
        lines.append(f"| {r['row']} | " + " | ".join(cells) + f" | {r.get('steps', '-')} | {r.get('wall_s', '-')} | {r.get('images_per_s', '-')} |"
                     + (f" {where_cell(r)} |" if where else ""))
    note = f"\n\n{meta['device']}; {meta['budget']}; evaluation on {meta['eval']}.\n"
    if meta.get("seeds"):
        note += f"\n{meta['seeds']}; a gap between two rows counts only when it exceeds their spread.\n"
    if meta.get("notes"):  # how and when the rows were measured (kept across --merge)
        note += "\n" + meta["notes"].strip() + "\n"
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + note)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(rows)), 4))
    width = 0.8 / max(len(cols), 1)
    for j, c in enumerate(cols):
        ax.bar([i + j * width for i in range(len(rows))], [100 * r["scores"].get(c, 0) for r in rows], width, label=c)
    ax.set_xticks([i + width * (len(cols) - 1) / 2 for i in range(len(rows))], [r["row"] for r in rows], rotation=20, ha="right")
    for j, c in enumerate(cols):  # error bars: the spread over seeds (rows with --seeds)
        xs = [i + j * width for i, r in enumerate(rows) if c in r.get("std", {})]
        if xs:
            ax.errorbar(xs, [100 * r["scores"][c] for r in rows if c in r.get("std", {})],
                        [100 * r["std"][c] for r in rows if c in r.get("std", {})], fmt="none", ecolor="k", capsize=2)
    ax.set_ylabel("top-1 on the test subset (%)")
    ax.set_title(f"Fashion-MNIST, {meta['budget']}")
    lo = min(100 * v for r in rows for v in r["scores"].values())
    ax.set_ylim(max(0, lo - 10), 100)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{stem}.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    from fastssl.methods.registry import method_names

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(method_names()), help="comma-separated method names")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per method (default: each config's)")
    p.add_argument("--long", action="append", default=[], metavar="NAME:STEPS", help="an extra, longer row")
    p.add_argument("--smoke", action="store_true", help="2 steps of a tiny ViT per method; not a measurement")
    p.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "quality")
    p.add_argument("--set", action="append", default=[], help="extra config override for every run, e.g. optim.batch_size=64")
    p.add_argument("--seeds", type=int, default=1, metavar="K",
                   help="train every row K times (run.seed 0..K-1) and report mean ± std over the seeds")
    p.add_argument("--reuse", action="store_true", help="use finished runs already in --runs-dir instead of training again")
    p.add_argument("--merge", action="store_true",
                   help="keep the other rows (and notes) of the existing results JSON; replace rows with the same label")
    args = p.parse_args(argv)

    if args.seeds < 1:
        p.error(f"--seeds takes K >= 1, got {args.seeds}")
    names = [n for n in args.methods.split(",") if n]  # may be empty: only --long rows (with --merge)
    bad = [spec for spec in args.long if not spec.partition(":")[2].isdigit()]
    if bad:
        p.error(f"--long takes NAME:STEPS, got {bad}")
    longs = [(n, int(k)) for n, _, k in (spec.partition(":") for spec in args.long)]
    every_name = names + [n for n, _ in longs]
    if not every_name:
        p.error("nothing to run: give --methods and/or --long")
    # A name is a config of configs/fmnist/ (a method's own, or a variant such as simclr_resnet18).
    unknown = {n for n in every_name if not (ROOT / "configs" / "fmnist" / f"{n}.yaml").is_file()}
    if unknown:
        p.error(f"no configs/fmnist/<name>.yaml for {sorted(unknown)} (methods: {', '.join(method_names())})")
    runs_dir = args.runs_dir / ("smoke" if args.smoke else "")
    rows: list[dict] = []

    def method_row(name: str) -> dict:
        extra = [*SMOKE_OVERRIDES, *_smoke_heads(name)] if args.smoke else []
        return train_seeds(name, runs_dir / name, args.steps, extra + args.set, name, args.reuse, args.seeds)

    # Smoke rows are not measurements: their runs go side by side (one per core; the test suite waits
    # half as long). Real rows run one at a time, so each wall time is the machine's alone.
    jobs = min(len(names), os.cpu_count() or 1) if args.smoke else 1
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        for name, row in zip(names, pool.map(method_row, names)):
            rows.append(row)
            print(f"[quality] {name}: {row['scores']} in {row['wall_s']} s", flush=True)
    for name, steps in longs:
        rows.append(train_seeds(name, runs_dir / f"{name}-{steps}", steps, args.set, f"{name} ({steps} steps)", args.reuse,
                                args.seeds))
        print(f"[quality] {name}:{steps}: {rows[-1]['scores']} in {rows[-1]['wall_s']} s", flush=True)
    stem = "quality-smoke" if args.smoke else "quality-cpu"
    previous = None
    if args.merge and (RESULTS / f"{stem}.json").is_file():
        previous = json.loads((RESULTS / f"{stem}.json").read_text())
        rows = merge_rows(previous["rows"], rows)
    ref_cfg = ROOT / "configs" / "fmnist" / f"{every_name[0]}.yaml"
    reference = [*random_init_rows(rows), raw_pixels_row(ref_cfg, SMOKE_OVERRIDES if args.smoke else [])]
    rows = reference + rows
    first = rows[len(reference)]
    meta = {
        "device": "CPU (smoke)" if args.smoke else f"CPU, {os.cpu_count()} cores",
        "budget": f"{first['steps']} steps × {_batch(ref_cfg, args)} images (other step counts in the steps column), configs/fmnist/<name>.yaml",
        "eval": "kNN bank = fixed train subset, queries = fixed test subset (eval.train_samples / test_samples)",
        "python": sys.version.split()[0],
    }
    if args.seeds > 1:
        meta["seeds"] = f"{args.seeds} seeds per trained row (run.seed 0..{args.seeds - 1}): mean ± sample std"
    if previous is not None and previous["meta"].get("notes"):
        meta["notes"] = previous["meta"]["notes"]
    write_outputs(rows, meta, stem)
    print((RESULTS / f"{stem}.md").read_text())
    return rows


def _batch(cfg_path: Path, args) -> int:
    from fastssl.config import load_config

    overrides = (SMOKE_OVERRIDES if args.smoke else []) + args.set
    return load_config(cfg_path, overrides).optim.batch_size


if __name__ == "__main__":
    main()
