"""bench/trends.py: the claims' definitions, the verdict rule, the table's shape on made-up scores
(--smoke), resuming per row and per run, and one tiny real row through fastssl/train.py."""
import json
import math
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import bench.trends as t  # noqa: E402

LIN = t.METRICS["linear"]


def _row(label, mean, std, seeds=3):
    return {"row": label, "scores": {LIN: mean}, "std": {LIN: std}, "seeds": seeds}


def test_claims_are_well_formed_and_fit_the_budget(capsys):
    assert [c.name for c in t.CLAIMS] == ["dcl", "can", "mmoco", "accel", "dac"]
    # Opt-in claims: a default claim again at a longer budget, same rows and checks, its own name.
    assert [c.name for c in t.EXTRA_CLAIMS] == ["can@150"]
    can, can150 = t.CLAIMS[1], t.EXTRA_CLAIMS[0]
    assert [(r.label, r.overrides) for r in can150.rows] == [(r.label, r.overrides) for r in can.rows]
    assert {r.steps for r in can150.rows} == {150} and can150.checks == can.checks
    for c in t.CLAIMS + t.EXTRA_CLAIMS:
        labels = [r.label for r in c.rows]
        assert len(set(labels)) == len(labels), c.name
        assert c.metric in t.METRICS and c.checks
        for check in c.checks:
            assert {label for label, _ in check.terms} <= set(labels), (c.name, check.text)
        for r in c.rows:
            assert (ROOT / "configs" / "fmnist" / f"{r.config}.yaml").is_file()
            assert r.config in t.SECONDS_PER_IMAGE
    # Every row is a valid config (DAC's symmetric row too: method.small_feature=decoder).
    bad = {(c.name, r.label) for c in t.CLAIMS + t.EXTRA_CLAIMS for r in c.rows if t.config_error(r) is not None}
    assert bad == set()
    # DCL: the same images at every batch size (the paper keeps epochs fixed).
    assert {r.steps * r.batch for r in t.CLAIMS[0].rows} == {t.STEPS * 128}
    # The whole table, K = 3, within about two hours on the first CPU's per-image times.
    total = t.print_plan(t.CLAIMS, 3)
    assert 1.5 * 3600 < total < 2.1 * 3600
    assert "total ~" in capsys.readouterr().out


def test_same_run_in_two_claims_shares_one_directory():
    """The run directory is named by the validated settings, not the label: the same run is trained once."""
    accel = {r.label: r for r in t.CLAIMS[3].rows}
    twin = t.Row("another label", "simclr_resnet18", ("method.loss=nt_xent",))  # the config's own loss, spelled out
    assert t.run_name(twin) == t.run_name(accel["SimCLR"])
    dcl = {r.label: r for r in t.CLAIMS[0].rows}
    assert t.run_name(dcl["nt_xent@128"]) != t.run_name(accel["SimCLR"])  # τ 0.07 (DCL paper) vs 0.2
    assert t.run_name(dcl["nt_xent@128"]) != t.run_name(dcl["dcl@128"])


def test_verdicts_reproduced_not_reproduced_inconclusive_not_run():
    checks = (t.better("a", "b"), t.better("a", "c"))
    rows = {"a": _row("a", 0.70, 0.005), "b": _row("b", 0.65, 0.005), "c": _row("c", 0.68, 0.005)}
    out = [t.check_outcome(c, rows, "linear") for c in checks]
    assert [o["outcome"] for o in out] == ["holds", "holds"] and t.verdict(out) == "reproduced"
    assert out[0]["value"] == pytest.approx(0.05) and out[0]["spread"] == pytest.approx(math.sqrt(2) * 0.005)
    # The gap 0.02 against a spread of √(0.01² + 0.02²) = 0.022: within spread -> inconclusive.
    rows["c"] = _row("c", 0.68, 0.02)
    rows["a"] = _row("a", 0.70, 0.01)
    out = [t.check_outcome(c, rows, "linear") for c in checks]
    assert [o["outcome"] for o in out] == ["holds", "within spread"] and t.verdict(out) == "inconclusive"
    # A gap beyond the spread the other way -> not reproduced, whatever the other checks say.
    rows["c"] = _row("c", 0.75, 0.01)
    out = [t.check_outcome(c, rows, "linear") for c in checks]
    assert [o["outcome"] for o in out] == ["holds", "fails"] and t.verdict(out) == "not reproduced"
    # One seed per row: no spread measured, nothing counts.
    one = {k: _row(k, v["scores"][LIN], 0.0, seeds=1) for k, v in rows.items()}
    assert t.check_outcome(checks[0], one, "linear")["outcome"] == "within spread"
    # A missing row -> the claim was not run.
    del rows["b"]
    assert t.verdict([t.check_outcome(c, rows, "linear") for c in checks]) == "not run"


def _seeded(label, per_seed):
    """A row with its runs: mean and sample std from ``per_seed`` (the linear scores at seeds 0, 1, …)."""
    import statistics

    return {"row": label, "scores": {LIN: statistics.fmean(per_seed)}, "std": {LIN: statistics.stdev(per_seed)},
            "seeds": len(per_seed), "per_seed": [{"seed": s, "scores": {LIN: v}} for s, v in enumerate(per_seed)]}


def test_spread_is_paired_over_the_seeds_the_rows_share():
    """Seed 1 low in both rows (shared data order and init): the gap 0.01 is steady seed by seed (paired
    spread 0.001) though each row alone moves by 0.04 (independent spread ~0.057)."""
    rows = {"a": _seeded("a", [0.71, 0.66, 0.72]), "b": _seeded("b", [0.70, 0.65, 0.70])}
    out = t.check_outcome(t.better("a", "b"), rows, "linear")
    assert out["paired"] and out["value"] == pytest.approx(0.04 / 3)
    assert out["spread"] == pytest.approx(math.sqrt(((0.01 - 0.04 / 3) ** 2 * 2 + (0.02 - 0.04 / 3) ** 2) / 2))
    assert out["spread_independent"] == pytest.approx(math.sqrt(rows["a"]["std"][LIN] ** 2 + rows["b"]["std"][LIN] ** 2))
    assert out["spread_independent"] > 5 * out["spread"] and out["outcome"] == "holds"
    # b's scores at other seeds (its low run at seed 0): no shared movement, the gap is within the paired spread.
    rows["b"] = _seeded("b", [0.65, 0.70, 0.70])
    out = t.check_outcome(t.better("a", "b"), rows, "linear")
    assert out["paired"] and out["outcome"] == "within spread"
    # Rows with fewer than two seeds in common fall back to the independent figure.
    rows["b"] = {**rows["b"], "per_seed": rows["b"]["per_seed"][:1]}
    out = t.check_outcome(t.better("a", "b"), rows, "linear")
    assert not out["paired"] and out["spread"] == pytest.approx(out["spread_independent"])


def test_trend_check_is_a_difference_of_differences():
    dcl = t.CLAIMS[0]
    trend = dcl.checks[1]
    rows = {"dcl@32": _row("", 0.60, 0.0), "nt_xent@32": _row("", 0.55, 0.0),
            "dcl@128": _row("", 0.66, 0.0), "nt_xent@128": _row("", 0.65, 0.0)}
    rows = {k: {**v, "scores": {t.METRICS[dcl.metric]: v["scores"][LIN]}, "std": {t.METRICS[dcl.metric]: 0.0}}
            for k, v in rows.items()}
    out = t.check_outcome(trend, rows, dcl.metric)
    assert out["value"] == pytest.approx(0.04) and out["outcome"] == "holds"


def test_smoke_table_shape(tmp_path, monkeypatch):
    monkeypatch.setattr(t, "RESULTS", tmp_path)
    claims = t.main(["--smoke", "--seeds", "3", "--runs-dir", str(tmp_path / "runs")])
    assert [c["claim"] for c in claims] == [c.name for c in t.CLAIMS]
    # The made-up set is built to give every verdict (FAKE_POINTS); DAC's rows are equal: inconclusive.
    assert [c["verdict"] for c in claims] == ["reproduced", "not reproduced", "inconclusive", "inconclusive",
                                              "inconclusive"]
    assert claims[-1]["not_run"] == {}
    assert [o["outcome"] for o in claims[1]["checks"]] == ["holds", "fails", "holds"]
    for c, spec in zip(claims, t.CLAIMS):
        assert len(c["rows"]) + len(c["not_run"]) == len(spec.rows)
        assert [o["check"] for o in c["checks"]] == [k.text for k in spec.checks]
        assert c["verdict"] in {"reproduced", "not reproduced", "inconclusive", "not run"}
        for r in c["rows"]:
            assert r["seeds"] == 3 and len(r["per_seed"]) == 3 and set(r["std"]) == set(r["scores"])
    saved = json.loads((tmp_path / "trends-smoke.json").read_text())
    assert [c["claim"] for c in saved["claims"]] == [c.name for c in t.CLAIMS]
    md = (tmp_path / "trends-smoke.md").read_text()
    for spec in t.CLAIMS:
        assert f"## {spec.name} ({spec.paper}):" in md
    assert (tmp_path / "trends-smoke.png").stat().st_size > 0
    assert not (tmp_path / "runs").exists()  # made-up scores: nothing trained, nothing written there


def test_stored_rows_are_kept_and_changed_rows_retrained(tmp_path):
    claim = t.CLAIMS[1]  # CAN: four valid rows
    calls = []

    def counting(row, seed, out_dir):
        calls.append((row.label, seed))
        return t.fake_train(row, seed, out_dir)

    first = t.run_claim(claim, 2, counting, tmp_path, {})
    assert len(calls) == 2 * len(claim.rows)
    stored = {r["row"]: r for r in first["rows"]}
    calls.clear()
    again = t.run_claim(claim, 2, counting, tmp_path, stored)
    assert calls == [] and again["verdict"] == first["verdict"]
    # A row whose definition changed, or that has fewer seeds than asked, is trained again.
    stored["CAN (full)"] = {**stored["CAN (full)"], "key": {"config": "can", "overrides": [], "steps": 1}}
    t.run_claim(claim, 2, counting, tmp_path, stored)
    assert calls == [("CAN (full)", 0), ("CAN (full)", 1)]
    calls.clear()
    t.run_claim(claim, 3, counting, tmp_path, stored)
    assert len(calls) == 3 * len(claim.rows)


def test_one_tiny_real_row_then_resumed_without_training(tmp_path):
    """fastssl/train.py for one 3-step run of the test ViT (~10 s); the second call reads it back."""
    from bench.quality import SMOKE_OVERRIDES, _smoke_heads

    small = [o for o in SMOKE_OVERRIDES if not o.startswith(("optim.max_steps", "optim.batch_size"))]
    row = t.Row("tiny", "simclr", (*small, *_smoke_heads("simclr")), steps=3, batch=32)
    claim = t.Claim("tiny", "-", "-", "linear", (row,), (t.Check("tiny above 0", (("tiny", 1.0),)),))
    out = t.run_claim(claim, 1, t.train_real, tmp_path, {})
    r = out["rows"][0]
    assert r["steps"] == 3 and r["seeds"] == 1 and 0.0 <= r["scores"][LIN] <= 1.0
    assert r["per_seed"][0]["machine"]["cores"] >= 1
    assert out["verdict"] == "inconclusive"  # one seed: no spread
    assert (tmp_path / t.run_name(row) / "seed0" / "summary.json").is_file()
    start = time.perf_counter()
    again = t.run_claim(claim, 1, t.train_real, tmp_path, {})
    assert time.perf_counter() - start < 5 and again["rows"][0]["scores"] == r["scores"]
