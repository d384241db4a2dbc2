"""bench/quality.py --smoke: two methods (one with an EMA target) train 2 steps from the CLI, the
reference rows are computed, and the JSON / Markdown / PNG are written. Every registered method's
CLI run is tested in tests/methods/test_method_cli.py; two keep this test's time down."""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quality_smoke(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT))
    import bench.quality as q
    monkeypatch.setattr(q, "RESULTS", tmp_path)
    rows = q.main(["--smoke", "--methods", "simclr,mocov3", "--runs-dir", str(tmp_path / "runs")])
    assert [r["row"] for r in rows] == ["random init (test_vit)", "raw pixels", "simclr", "mocov3"]
    for r in rows:
        assert r["scores"] and all(0.0 <= v <= 1.0 for v in r["scores"].values()), r
    for r in rows[2:]:
        assert r["steps"] == 2 and r["images_per_s"] > 0
    saved = json.loads((tmp_path / "quality-smoke.json").read_text())
    assert len(saved["rows"]) == len(rows)
    assert (tmp_path / "quality-smoke.png").stat().st_size > 0
    md = (tmp_path / "quality-smoke.md").read_text()
    assert "| raw pixels |" in md and "CPU; max load" in md  # trained rows name their machine


def test_one_random_init_row_per_encoder():
    sys.path.insert(0, str(ROOT))
    import bench.quality as q

    rows = [{"encoder": "vit_tiny", "init": {"a": 0.5}}, {"encoder": "resnet18", "init": {"a": 0.2}},
            {"encoder": "vit_tiny", "init": {"a": 0.5}}]
    assert q.random_init_rows(rows) == [{"row": "random init (vit_tiny)", "method": None, "scores": {"a": 0.5}},
                                        {"row": "random init (resnet18)", "method": None, "scores": {"a": 0.2}}]


def test_merge_keeps_other_rows_and_replaces_same_label():
    sys.path.insert(0, str(ROOT))
    import bench.quality as q

    old = [{"row": "random init (vit)", "method": None}, {"row": "raw pixels", "method": None},
           {"row": "simclr", "method": "simclr", "v": 1}, {"row": "mae", "method": "mae", "v": 1},
           {"row": "dac", "method": "dac", "v": 1}]
    new = [{"row": "mae", "method": "mae", "v": 2}, {"row": "mae (600 steps)", "method": "mae", "v": 2}]
    assert [(r["row"], r["v"]) for r in q.merge_rows(old, new)] == [
        ("simclr", 1), ("mae", 2), ("dac", 1), ("mae (600 steps)", 2)]
    assert q.merge_rows([], new) == new


def test_bad_row_specs_stop_before_any_training(tmp_path, capsys):
    sys.path.insert(0, str(ROOT))
    import bench.quality as q
    import pytest

    for argv, says in ((["--methods", ""], "nothing to run"), (["--long", "byol"], "NAME:STEPS"),
                       (["--methods", "nope"], "no configs/fmnist/<name>.yaml")):
        with pytest.raises(SystemExit):
            q.main([*argv, "--runs-dir", str(tmp_path)])
        assert says in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_seeds_run_each_row_k_times_and_report_mean_and_std(tmp_path, monkeypatch):
    """--seeds K: K runs per row (run.seed 0..K-1, one directory each), scores = mean, std = sample std."""
    sys.path.insert(0, str(ROOT))
    import bench.quality as q
    import pytest

    seen = []

    def fake(name, out_dir, steps, extra, label, reuse=False):
        seed = int(next((o for o in extra if o.startswith("run.seed=")), "run.seed=-1")[9:])
        seen.append((out_dir.name, seed))
        return {"row": label, "method": name, "encoder": "vit", "steps": 2, "wall_s": 10.0 + seed, "images_per_s": 5.0,
                "scores": {"linear_top1": 0.5 + 0.1 * seed}, "init": {"linear_top1": 0.1},
                "overrides": [f"run.output_dir={out_dir}", "a=1", f"run.seed={seed}"], "machine": None}

    monkeypatch.setattr(q, "train_method", fake)
    row = q.train_seeds("simclr", tmp_path / "simclr", None, [], "simclr", False, 3)
    assert seen == [("seed0", 0), ("seed1", 1), ("seed2", 2)]
    assert row["scores"]["linear_top1"] == pytest.approx(0.6) and row["std"]["linear_top1"] == pytest.approx(0.1)
    assert row["seeds"] == 3 and row["wall_s"] == 11.0 and row["overrides"] == ["a=1"]
    assert [s["scores"]["linear_top1"] for s in row["per_seed"]] == pytest.approx([0.5, 0.6, 0.7])
    assert q.score_cell(row, "linear_top1") == "60.00 ± 10.00%"
    assert q.score_cell({"scores": {"linear_top1": 0.5}}, "linear_top1") == "50.00%"
    seen.clear()
    q.train_seeds("simclr", tmp_path / "simclr", None, [], "simclr", False, 1)  # K = 1: the layout without --seeds
    assert seen == [("simclr", -1)]  # one run in the row's own directory, the config's seed


def test_where_cell_names_the_cpu_and_the_highest_load():
    sys.path.insert(0, str(ROOT))
    import bench.quality as q

    a = {"cpu": "AMD EPYC", "cores": 2, "load_before": 0.4, "load_after": 1.2}
    b = {"cpu": "AMD EPYC", "cores": 2, "load_before": 3.5, "load_after": 0.9}
    assert q.where_cell({"machine": a}) == "AMD EPYC ×2; 1.2"
    assert q.where_cell({"per_seed": [{"machine": a}, {"machine": b}]}) == "AMD EPYC ×2; 3.5"
    assert q.where_cell({"row": "raw pixels"}) == "-"
