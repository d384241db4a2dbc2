"""The papers' claims at CPU scale: each claim a named experiment, its rows trained at K seeds, a verdict.

    python bench/trends.py --plan                  # the rows, their budgets and the estimated time; trains nothing
    python bench/trends.py                         # every claim, K = 3 seeds (about 2 h on 2 idle cores)
    python bench/trends.py --claims dcl,can        # some claims; the other claims' rows in the JSON are kept
    python bench/trends.py --claims can@150        # opt-in: CAN's rows again at 150 steps (~35 min here)
    python bench/trends.py --smoke                 # a fake result set through the same table (the test suite)

Every row is ``fastssl/train.py`` with one of ``configs/fmnist/<config>.yaml`` plus the row's overrides
(``bench/quality.py``'s runner), once per seed (``run.seed`` 0 … K−1). Resumable per run: a seed whose
run directory (``--runs-dir``) holds a finished ``summary.json`` is read back, not trained again, and a
row already in ``bench/results/trends-cpu.json`` with the same config, overrides and at least K seeds
is kept as it is (so a table can be finished over several sessions or machines; every run names its
CPU and the load average around it).

Verdicts. A claim is a set of checks; each check is a signed sum of rows' mean scores on the claim's
metric (e.g. ``dcl@32 − nt_xent@32``, or for a trend ``(dcl@32 − nt_xent@32) − (dcl@128 − nt_xent@128)``)
that the paper says is positive. Its spread is the spread of the same sum over one run of each row:
the rows of a table share their seeds (seed s gives every row the same data order, masks and, where the
encoder is the same, the same initial weights), so the sum is taken seed by seed and its sample standard
deviation over the seeds is the spread (*paired*). Runs of one seed move together (in the CAN rows seed 1
gave the lowest linear probe of every row), and treating the rows as independent, √Σ cᵢ²·stdᵢ², would
count that shared movement once per row; that figure is still reported beside it. A check *holds* when
the sum exceeds its spread, *fails* when it is below minus its spread, and is *within spread* otherwise
(always so with one seed). A claim is **reproduced** when every check holds, **not reproduced** when any
fails, and **inconclusive** otherwise.

Budgets: 40 optimizer steps of 128 images (5,120 images) per row for every claim (the DCL rows keep
5,120 images at every batch size, as the paper's Table 1 keeps epochs fixed; the Accel rows take
their baselines' wall time). No per-claim tuning: each row is its fmnist config with only what the
paper's own ablation changes; a schedule counted in epochs that would outlast a 40-step run is
scaled to the run (noted where it happens).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
STEPS = 40          # optimizer steps per row at batch 128 (the budget: see the module docstring)
# Every trends run: one evaluation (after training). The random-init encoder's scores are in the
# method comparison (quality-cpu.md); skipping them here saves one evaluation per run.
COMMON = ("eval.knn_at_init=false",)
METRICS = {"knn200": "knn_top1@k200_T0.1", "knn20": "knn_top1@k20_T0.07", "linear": "linear_top1"}


@dataclass(frozen=True)
class Row:
    label: str
    config: str                       # configs/fmnist/<config>.yaml
    overrides: tuple[str, ...] = ()
    steps: int = STEPS
    batch: int = 128

    def args(self) -> list[str]:
        return [*COMMON, f"optim.batch_size={self.batch}", *self.overrides]


@dataclass(frozen=True)
class Check:
    text: str
    terms: tuple[tuple[str, float], ...]   # (row label, coefficient): the paper says Σ c·mean > 0


@dataclass(frozen=True)
class Claim:
    name: str
    paper: str
    statement: str
    metric: str                       # a key of METRICS: the score the paper reports for this claim
    rows: tuple[Row, ...]
    checks: tuple[Check, ...]
    notes: str = ""
    untested: str = ""                # the part of the paper's claim this table cannot test, and why


def better(a: str, b: str, text: str | None = None) -> Check:
    return Check(text or f"{a} > {b}", ((a, 1.0), (b, -1.0)))


def _dcl() -> Claim:
    # The paper's Table 1 setting (§4, "CIFAR and STL10"): ResNet-18, τ = 0.07 for every loss, LR scaled
    # linearly with the batch (base_lr × B / 256, as the paper's 0.03 × B / 256), the same epochs at every
    # batch size, kNN with k = 200. The rest is the baseline's config (simclr_resnet18.yaml, AdamW: the
    # paper's SGD is not what this project's short CPU runs use, and it is the same for every row).
    rows = []
    # Two batch sizes carry the trend (a third, 64, would add ~23 min at K = 3: over the two-hour budget).
    for batch in (32, 128):
        steps = STEPS * 128 // batch  # 5,120 images at every batch size
        for loss in ("nt_xent", "dcl"):
            rows.append(Row(f"{loss}@{batch}", "simclr_resnet18", (f"method.loss={loss}", "method.temperature=0.07"),
                            steps, batch))
    rows.append(Row("dclw@128", "simclr_resnet18", ("method.loss=dclw", "method.temperature=0.07"), STEPS, 128))  # σ 0.5
    return Claim(
        "dcl", "dcl.txt", "DCL beats SimCLR's NT-Xent, most at small batch (Table 1: the gap grows as the batch "
        "shrinks); DCLW ≥ DCL (Table 3)", "knn200", tuple(rows),
        (better("dcl@32", "nt_xent@32"),
         Check("(dcl − nt_xent)@32 > (dcl − nt_xent)@128",
               (("dcl@32", 1.0), ("nt_xent@32", -1.0), ("dcl@128", -1.0), ("nt_xent@128", 1.0))),
         better("dclw@128", "dcl@128", "dclw@128 ≥ dcl@128")),
        notes="ResNet-18 (timm stem) as the paper's CIFAR runs; 5,120 images per row at batch 32 / 128 "
              "(160 / 40 steps); τ = 0.07 (the paper's CIFAR value) for all three losses; AdamW from the baseline "
              "config (the paper: SGD).")


def _can(steps: int = STEPS) -> Claim:
    # Table 5 removes a term by setting its weight to zero. Our loss is λ_N·L_nce + (1 − λ_N)(λ·L_rec +
    # (1 − λ)·L_den): λ_N = 0 drops C, λ = 0 drops A, λ = 1 drops N. Table 5's "CA" (67.9) is Table 4's
    # "None" (no noise at all, 67.9), not "+noise" (68.6): without N the input gets no noise either.
    longer = steps != STEPS
    return Claim(
        f"can@{steps}" if longer else "can", "can.txt",
        "each of CAN's terms helps: contrastive + reconstruction + denoising ≥ any two (Table 5)", "linear",
        (Row("CAN (full)", "can", (), steps),
         Row("AN (no contrastive)", "can", ("method.infonce_weight=0.0",), steps),
         Row("CN (no reconstruction)", "can", ("method.rec_weight=0.0",), steps),
         Row("CA (no denoising, no noise)", "can", ("method.rec_weight=1.0", "method.sigma_max=0.0"), steps)),
        (better("CAN (full)", "AN (no contrastive)"), better("CAN (full)", "CN (no reconstruction)"),
         better("CAN (full)", "CA (no denoising, no noise)")),
        notes="Linear probe, as Table 5 (paper: full 68.9, AN 42.8, CN 68.5, CA 67.9: the N and A gaps are "
              "0.4 and 1.0 point at 100 ImageNet epochs). ViT-tiny, configs/fmnist/can.yaml (λ_InfoNCE 0.03, λ 0.5, "
              "σ_max 0.05)." + (f" {steps} steps: the method comparison's budget, where the full CAN is above the "
                               "random-init encoder on every score (quality-cpu.md); opt-in (--claims can@150), "
                               "not part of the two-hour table." if longer else ""))


def _mmoco() -> Claim:
    # Table 1 (online chunks n, full target) and Table 1a (target chunks m with n = 1), linear probe.
    # 28 px / patch 7 = 16 patches: n = 8 leaves 2 patches per chunk (the paper's n = 8 on 196 patches ~25).
    rows = [Row(f"n={n}, m=1", "mmoco", (f"method.n_chunks={n}", "method.target_chunks=1")
                + (("method.kappa_monitor=false",) if n == 1 else ())) for n in (1, 2, 4, 8)]
    rows.append(Row("n=1, m=2", "mmoco", ("method.n_chunks=1", "method.target_chunks=2", "method.kappa_monitor=false")))
    return Claim(
        "mmoco", "masked_moco_byol.txt", "M-MoCo's chunk count n matters: linear accuracy peaks at small n and "
        "drops below n = 1 for n > 4 (Table 1); masking the target alone (n = 1, m = 2) costs linear accuracy (Table 1a)",
        "linear", tuple(rows),
        (better("n=2, m=1", "n=8, m=1"), better("n=1, m=1", "n=8, m=1"), better("n=1, m=1", "n=1, m=2")),
        notes="ViT-tiny, configs/fmnist/mmoco.yaml (τ 0.2, momentum 0.99 → 1).",
        untested="n = 8 best for fine-tuning: fastssl evaluates frozen features (kNN, linear probe) only.")


# Accel rows take the baseline's training time: steps × (Accel images/s ÷ baseline images/s). The
# ratios are the ones measured where this table was trained (2-core CPU, 2026-12-04, mean images/s of
# three 40-step baseline runs and three Accel runs; SwAV has 4 local crops, so its baseline step costs
# the most). A first pass took the ratios of quality-cpu.json's slower CPU (357 Accel steps ≈ 150
# baseline steps for SimCLR / MoCo v2, 341 for SwAV): here they gave the SimCLR and MoCo v2 Accel rows
# 1.5× their baselines' training time, so the budgets were re-measured (notes/resnet_methods.md).
ACCEL_RATIO = {"simclr_resnet18": 448.6 / 280.9, "mocov2": 476.3 / 312.2, "swav": 406.7 / 138.0}


def _accel() -> Claim:
    rows, checks = [], []
    for base, accel, name in (("simclr_resnet18", "simclr_accel", "SimCLR"), ("mocov2", "mocov2_accel", "MoCo v2"),
                              ("swav", "swav_accel", "SwAV")):
        extra = ()
        if base == "swav":
            # The prototypes stay frozen for 0.1 epoch (47 steps) in swav.yaml, longer than a 40-step run:
            # frozen for the same share of the baseline's run (47/150 of it) in both rows.
            extra = (f"method.freeze_prototypes_epochs={0.1 * STEPS / 150:.4f}",)
        rows += [Row(name, base, extra, STEPS), Row(f"Accel-{name}", accel, extra, round(STEPS * ACCEL_RATIO[base]))]
        checks.append(better(f"Accel-{name}", name))
    return Claim(
        "accel", "intermediate_contrastive_loss.txt", "partial back-prop + hard pairs: better accuracy at equal wall "
        "time (Figure 3) for SimCLR, MoCo v2 and SwAV", "linear", tuple(rows), tuple(checks),
        notes="ResNet-18 (timm stem); PB + HP as configs/fmnist/*_accel.yaml (M = 2, stages 1–2). Equal training "
              "time: the Accel row's steps = the baseline's × the images/s ratio measured on this table's CPU "
              "(ACCEL_RATIO); the train column shows the seconds each row trained.")


def _dac() -> Claim:
    # Table 7: the resized view's feature for the contrastive loss is its encoder output through the
    # decoder embedding (asymmetric, fastssl's DAC) or its decoder output (symmetric).
    return Claim(
        "dac", "dac.txt", "the asymmetric design (resized view's encoder feature vs masked view's decoder feature) "
        "≥ the symmetric one (both decoder features; Table 7)", "linear",
        (Row("asymmetric", "dac"), Row("symmetric", "dac", ("method.small_feature=decoder",))),
        (better("asymmetric", "symmetric", "asymmetric ≥ symmetric"),),
        notes="ViT-tiny, configs/fmnist/dac.yaml. The paper's own gap is 0.1 point (39.5 vs 39.4): at this scale "
              "expect it within the spread. Symmetric: view A's tokens go through the decoder with nothing "
              "masked (method.small_feature=decoder, fastssl/methods/dac.py).")


CLAIMS: tuple[Claim, ...] = (_dcl(), _can(), _mmoco(), _accel(), _dac())
# Opt-in (--claims): a claim again at a longer budget, where the 40-step rows are near their random init.
EXTRA_CLAIMS: tuple[Claim, ...] = (_can(150),)

# Training seconds per image, 2 idle cores of the first CPU (quality-cpu.json: 128 ÷ images/s of each
# config's idle row; mmoco from its 600-step row on the 1.9× faster CPU, × 1.9), and one process start
# + one evaluation (10k bank / 2k queries) per run: MAE's 150-step run minus its training, halved for
# one evaluation instead of two, × 1.9 = ~35 s, raised to 45 s because 2-step runs with a 300-image
# evaluation took 22–48 s here (ResNet-18 the longest; load ~2). For --plan only; the per-image times
# assume a batch of 32 costs what 128 does per image (it costs somewhat more).
SECONDS_PER_IMAGE = {"simclr_resnet18": 1 / 121.3, "can": 1 / 53.8, "mmoco": 1.9 / 117.8, "mocov2": 1 / 150.7,
                     "mocov2_accel": 1 / 328.2, "simclr_accel": 1 / 251.3, "swav": 1 / 46.5, "swav_accel": 1 / 233.3,
                     "dac": 1 / 125.4}
SECONDS_PER_RUN = 45.0


def estimate_s(row: Row) -> float:
    return row.steps * row.batch * SECONDS_PER_IMAGE[row.config] + SECONDS_PER_RUN


def row_key(row: Row) -> dict:
    """What makes two runs of a row the same experiment (compared before reusing a stored row); ``run``
    digests the validated settings, so an edited configs/fmnist/*.yaml retrains the rows that use it."""
    return {"config": row.config, "overrides": row.args(), "steps": row.steps, "run": run_name(row)}


def run_name(row: Row) -> str:
    """The run directory's name: the config plus a digest of the validated settings, so two rows of
    different claims that are the same run (e.g. SimCLR NT-Xent at batch 128 in dcl and accel) share it."""
    import hashlib

    from fastssl.config import load_config

    cfg = load_config(ROOT / "configs" / "fmnist" / f"{row.config}.yaml", row.args()).model_dump(mode="json")
    cfg["run"].pop("output_dir", None)
    digest = hashlib.sha1(json.dumps([cfg, row.steps], sort_keys=True).encode()).hexdigest()[:10]
    return f"{row.config}-{digest}"


def config_error(row: Row) -> str | None:
    """None when the row's config + overrides validate, else the one-line reason."""
    from fastssl.config import ConfigError, load_config

    try:
        load_config(ROOT / "configs" / "fmnist" / f"{row.config}.yaml", row.args())
    except ConfigError as err:
        return str(err)
    return None


# ---- verdicts ---------------------------------------------------------------------------------------

def check_outcome(check: Check, rows: dict[str, dict], metric: str) -> dict:
    """``{"value", "spread", "spread_independent", "paired", "outcome"}``: outcome holds / fails /
    within spread / not run. The spread is paired over the seeds every term's row has (``per_seed``;
    at least two), else √Σ c²·std² of the rows (module docstring)."""
    import statistics

    key = METRICS[metric]
    if any(label not in rows for label, _ in check.terms):
        return {"check": check.text, "value": None, "spread": None, "spread_independent": None, "paired": False,
                "outcome": "not run"}
    value = sum(c * rows[label]["scores"][key] for label, c in check.terms)
    independent = math.sqrt(sum(c * c * rows[label]["std"][key] ** 2 for label, c in check.terms))
    per_seed = [{p["seed"]: p["scores"][key] for p in rows[label].get("per_seed", [])} for label, _ in check.terms]
    common = sorted(set.intersection(*(set(p) for p in per_seed)))
    if len(common) >= 2:
        sums = [sum(c * p[s] for (_, c), p in zip(check.terms, per_seed)) for s in common]
        spread, paired = statistics.stdev(sums), True
    elif min(rows[label].get("seeds", 1) for label, _ in check.terms) < 2:
        spread, paired = math.inf, False  # one run per row: no spread measured, nothing can count
    else:
        spread, paired = independent, False
    outcome = "holds" if value > spread else "fails" if value < -spread else "within spread"
    return {"check": check.text, "value": value, "spread": spread if math.isfinite(spread) else None,
            "spread_independent": independent if math.isfinite(spread) else None, "paired": paired, "outcome": outcome}


def verdict(outcomes: list[dict]) -> str:
    kinds = {o["outcome"] for o in outcomes}
    if "not run" in kinds:
        return "not run"
    if kinds == {"holds"}:
        return "reproduced"
    if "fails" in kinds:
        return "not reproduced"
    return "inconclusive"


# ---- running ----------------------------------------------------------------------------------------

TrainFn = Callable[[Row, int, Path], dict]


def train_real(row: Row, seed: int, out_dir: Path) -> dict:
    """One seed of one row through ``fastssl/train.py``; a finished run in ``out_dir`` is read back."""
    from bench.quality import train_method

    return train_method(row.config, out_dir, row.steps, [*row.args(), f"run.seed={seed}"], row.label, reuse=True)


def run_claim(claim: Claim, seeds: int, train: TrainFn, runs_dir: Path, stored: dict[str, dict]) -> dict:
    """Train (or take from ``stored``, by label) every row of ``claim`` at ``seeds`` seeds; its verdict."""
    from bench.quality import seed_row

    rows, skipped = {}, {}
    for row in claim.rows:
        error = config_error(row)
        if error is not None:
            skipped[row.label] = error
            print(f"[trends] {claim.name} / {row.label}: not run ({error})", flush=True)
            continue
        old = stored.get(row.label)
        if old is not None and old.get("key") == row_key(row) and old.get("seeds", 1) >= seeds:
            rows[row.label] = old
            continue
        runs = [train(row, s, runs_dir / run_name(row) / f"seed{s}") for s in range(seeds)]
        rows[row.label] = {**seed_row(runs), "row": row.label, "key": row_key(row), "batch": row.batch,
                           "config": row.config, "changes": list(row.overrides)}
        r = rows[row.label]
        print(f"[trends] {claim.name} / {row.label}: " + ", ".join(
            f"{m} {100 * r['scores'][k]:.2f}±{100 * r['std'][k]:.2f}" for m, k in METRICS.items() if k in r["scores"])
            + f" ({r['wall_s']} s/run)",
            flush=True)
    outcomes = [check_outcome(c, rows, claim.metric) for c in claim.checks]
    return {"claim": claim.name, "paper": claim.paper, "statement": claim.statement, "metric": claim.metric,
            "rows": [rows[r.label] for r in claim.rows if r.label in rows], "not_run": skipped,
            "checks": outcomes, "verdict": verdict(outcomes), "notes": claim.notes, "untested": claim.untested}


# --smoke's made-up result set: points above 60 % per row label, chosen so that the five claims come
# out reproduced (dcl), not reproduced (can: CN beats the full loss), inconclusive (mmoco: all equal;
# accel: one check holds, two are within spread; dac: equal rows).
FAKE_POINTS = {"dcl@32": 5.0, "dcl@128": 1.0, "dclw@128": 3.0, "AN (no contrastive)": -3.0,
               "CN (no reconstruction)": 3.0, "CA (no denoising, no noise)": -3.0, "Accel-SimCLR": 2.0}


def fake_train(row: Row, seed: int, out_dir: Path) -> dict:
    """A made-up run (``--smoke``): 60 % + FAKE_POINTS[label], plus −0.5, 0 or +0.5 points by seed,
    rotated by the label's length (a spread of 0.5 points per row, and paired differences that are not
    all zero); no training, nothing written."""
    score = 0.6 + FAKE_POINTS.get(row.label, 0.0) / 100 + ((seed + len(row.label)) % 3 - 1) * 0.005
    scores = {k: score for k in METRICS.values()}
    return {"row": row.label, "method": row.config, "encoder": "fake", "steps": row.steps, "wall_s": 1.0,
            "images_per_s": 1.0, "scores": scores, "init": {}, "overrides": row.args(), "machine": None}


# ---- outputs ----------------------------------------------------------------------------------------

def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.2f}"


def random_init_scores() -> dict[str, dict]:
    """The random-init encoder's scores by encoder name, from the method comparison (``quality-cpu.json``;
    the trends runs skip that evaluation): the floor a row's score is read against."""
    path = RESULTS / "quality-cpu.json"
    rows = json.loads(path.read_text())["rows"] if path.is_file() else []
    return {r["row"][len("random init ("):-1]: r["scores"] for r in rows if r["row"].startswith("random init (")}


def _train_s(r: dict) -> str:
    """Seconds of training per run (images ÷ images/s; the wall column adds process start and evaluation)."""
    ips, batch = r.get("images_per_s"), r.get("batch")
    return "-" if not ips or not batch else f"{r['steps'] * batch / ips:.1f}"


def write_outputs(claims: list[dict], meta: dict, stem: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "claims": claims}, indent=1))
    from bench.quality import score_cell, where_cell

    lines = [f"# Trends: the papers' claims at CPU scale ({meta['device']})", "",
             "| claim | paper | metric | verdict |", "|---|---|---|---|"]
    lines += [f"| {c['claim']} | {c['paper']} | {c['metric']} | **{c['verdict']}** |" for c in claims]
    for c in claims:
        lines += ["", f"## {c['claim']} ({c['paper']}): {c['verdict']}", "", c["statement"][0].upper() + c["statement"][1:] + ".", ""]
        lines += ["| row | " + " | ".join(METRICS) + " | steps × batch | seeds | train (s/run) | wall (s/run) | CPU, max load | config + changes |",
                  "|---|" + "---|" * (len(METRICS) + 6)]
        for r in c["rows"]:
            cells = " | ".join(score_cell(r, k) for k in METRICS.values())
            changes = " ".join(f"`{o}`" for o in r.get("changes", []))
            lines.append(f"| {r['row']} | {cells} | {r['steps']} × {r.get('batch', '-')} | {r.get('seeds', 1)} | "
                         f"{_train_s(r)} | {r['wall_s']} | {where_cell(r)} | {r.get('config', r.get('method', '-'))} {changes} |")
        for label, why in c["not_run"].items():
            lines.append(f"| {label} | not run: {why} |" + " |" * (len(METRICS) + 5))
        lines += ["", f"| check ({c['metric']}) | gap (points) | spread (paired over seeds) | spread (rows as independent) | outcome |",
                  "|---|---|---|---|---|"]
        for o in c["checks"]:
            spread = "-" if o["spread"] is None else f"{100 * o['spread']:.2f}" + ("" if o.get("paired") else " (not paired)")
            indep = "-" if o.get("spread_independent") is None else f"{100 * o['spread_independent']:.2f}"
            lines.append(f"| {o['check']} | {_pct(o['value'])} | {spread} | {indep} | {o['outcome']} |")
        if c["notes"]:
            lines += ["", c["notes"]]
        if c["untested"]:
            lines += ["", "Not tested here: " + c["untested"]]
    lines += ["", f"{meta['budget']}; {meta['seeds']}; {meta['verdicts']}", ""]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inits = random_init_scores()
    fig, axes = plt.subplots(1, max(len(claims), 1), figsize=(4.2 * max(len(claims), 1), 4.2), squeeze=False)
    for ax, c in zip(axes[0], claims):
        key = METRICS[c["metric"]]
        xs = range(len(c["rows"]))
        ax.bar(xs, [100 * r["scores"][key] for r in c["rows"]], yerr=[100 * r.get("std", {}).get(key, 0) for r in c["rows"]],
               capsize=3, color="tab:blue")
        ax.set_xticks(list(xs), [r["row"] for r in c["rows"]], rotation=35, ha="right", fontsize=7)
        vals = [100 * r["scores"][key] for r in c["rows"]]
        if vals:
            ax.set_ylim(max(0.0, min(vals) - 5), min(100.0, max(vals) + 3))
        init = inits.get(c["rows"][0]["encoder"], {}).get(key) if c["rows"] else None
        if init is not None and vals and 100 * init >= ax.get_ylim()[0]:
            ax.axhline(100 * init, color="gray", ls="--", lw=1, label="random init (quality-cpu)")
            ax.legend(fontsize=7, loc="lower right")
        elif init is not None:
            ax.set_xlabel(f"random init: {100 * init:.1f} %", fontsize=7)
        ax.set_title(f"{c['claim']}: {c['verdict']}", fontsize=9)
        ax.set_ylabel(f"{c['metric']} top-1 (%)", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Fashion-MNIST, {meta['budget']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{stem}.png", dpi=100)
    plt.close(fig)


def print_plan(claims: tuple[Claim, ...], seeds: int) -> float:
    total = 0.0
    for c in claims:
        for r in c.rows:
            error = config_error(r)
            est = 0.0 if error else seeds * estimate_s(r)
            total += est
            print(f"{c.name:6s} {r.label:30s} {r.config:16s} {r.steps:4d} × {r.batch:3d}  ~{est / 60:5.1f} min  "
                  + " ".join(r.overrides) + (f"  (not runnable: {error})" if error else ""))
    print(f"total ~{total / 3600:.2f} h for {seeds} seed(s) on 2 idle cores of the first CPU (quality-cpu.json)")
    return total


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--claims", default=",".join(c.name for c in CLAIMS), help="comma-separated claim names")
    p.add_argument("--seeds", type=int, default=3, metavar="K", help="runs per row (run.seed 0..K-1)")
    p.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "trends")
    p.add_argument("--plan", action="store_true", help="print the rows and the estimated time; train nothing")
    p.add_argument("--smoke", action="store_true", help="made-up scores through the same table; not a measurement")
    args = p.parse_args(argv)
    by_name = {c.name: c for c in CLAIMS + EXTRA_CLAIMS}
    names = [n for n in args.claims.split(",") if n]
    unknown = [n for n in names if n not in by_name]
    if unknown or not names:
        p.error(f"--claims: unknown or none {unknown} (claims: {', '.join(by_name)})")
    if args.seeds < 1:
        p.error(f"--seeds takes K >= 1, got {args.seeds}")
    chosen = tuple(by_name[n] for n in names)
    if args.plan:
        print_plan(chosen, args.seeds)
        return []

    stem = "trends-smoke" if args.smoke else "trends-cpu"
    previous = json.loads((RESULTS / f"{stem}.json").read_text()) if (RESULTS / f"{stem}.json").is_file() else None
    stored = {c["claim"]: {r["row"]: r for r in c["rows"]} for c in (previous or {}).get("claims", [])}
    train = fake_train if args.smoke else train_real
    # Claims not run now keep their stored results (in the table's order).
    kept = {c["claim"]: c for c in (previous or {}).get("claims", []) if not args.smoke}
    done: dict[str, dict] = {}
    for c in chosen:  # the table is rewritten after every claim: a session cut short keeps what it finished
        done[c.name] = run_claim(c, args.seeds, train, args.runs_dir, {} if args.smoke else stored.get(c.name, {}))
        claims = [done.get(k.name) or kept[k.name] for k in CLAIMS + EXTRA_CLAIMS if k.name in done or k.name in kept]
        write_outputs(claims, _meta(args), stem)
    print((RESULTS / f"{stem}.md").read_text())
    return claims


def _meta(args) -> dict:
    from bench.quality import cpu_name

    return {
        "device": "CPU (smoke: made-up scores)" if args.smoke else f"CPU, {os.cpu_count()} cores ({cpu_name()})",
        "budget": f"{STEPS} steps × 128 images per row unless the row says otherwise, configs/fmnist/<config>.yaml",
        "seeds": f"{args.seeds} seeds per row (run.seed 0..{args.seeds - 1}), mean ± sample std",
        "verdicts": "a check holds when its gap exceeds its spread (the sample std over seeds of the same gap "
                    "taken seed by seed), fails below minus that; "
                    "reproduced = every check holds, not reproduced = one fails, else inconclusive",
        "python": sys.version.split()[0],
    }


if __name__ == "__main__":
    main()
