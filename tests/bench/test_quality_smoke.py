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
    assert "| raw pixels |" in (tmp_path / "quality-smoke.md").read_text()


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
