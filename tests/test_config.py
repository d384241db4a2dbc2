"""Config loading: defaults, overrides, and one clear line (exit 2, no traceback) for each bad input kind."""
import subprocess
import sys
from pathlib import Path

import pytest

from fastssl.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


@pytest.fixture
def folder_data(tmp_path):
    """A minimal image-folder data set root (validation only checks that it exists and is not empty)."""
    root = tmp_path / "imgs"
    for split in ("train", "test"):
        (root / split / "a").mkdir(parents=True)
        (root / split / "a" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return root


def test_defaults_and_overrides(tmp_path):
    cfg = load_config(write(tmp_path, "method: {name: simclr, loss: dclw}\n"), ["optim.epochs=3", "method.temperature=0.2", "run.output_dir=/tmp/x"])
    assert cfg.optim.epochs == 3 and cfg.method.temperature == 0.2 and cfg.method.loss == "dclw"
    assert str(cfg.run.output_dir) == "/tmp/x"
    assert cfg.method.weight_sigma == 0.5 and cfg.eval.knn_k == 200 and cfg.eval.knn_temperature == 0.1


def test_shipped_configs_validate(folder_data):
    for path in sorted((REPO / "configs").glob("*.yaml")):
        load_config(path, [f"data.root={folder_data}"] if "dataset: folder" in path.read_text() else [])


@pytest.mark.parametrize(
    "text, overrides, needle",
    [
        ("optim: {epochs: 1, batchsize: 4}\n", [], "optim.batchsize: unknown key"),
        ("optim: {epochs: many}\n", [], "optim.epochs"),
        ("", ["optim.base_lr=abc"], "optim.base_lr"),
        ("", ["model.patch_size=5"], "model.patch_size=5 must divide"),
        ("", ["engine.precision=fp16"], "engine.precision=fp16 needs engine.zero_stage"),
        ("", ["method.loss=infonce"], "method.loss"),
        ("", ["nosection.key=1"], "nosection: unknown key"),
        ("", ["method.name=foo"], "method.name: unknown method 'foo' (one of simclr"),
        ("", ["model.arch=vit_huge_nonsense"], "model.arch: 'vit_huge_nonsense' is not a timm ViT"),
        ("", ["optim.epochs"], "not of the form"),
        ("optim: [1, 2\n", [], "not valid YAML"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, text, overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), overrides)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_missing_data_folder_named(tmp_path):
    missing = tmp_path / "no-such-dir"
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, f"data: {{dataset: folder, root: {missing}}}\n"))
    assert str(missing) in str(err.value)


def test_cli_reports_one_line_and_exit_2(tmp_path):
    cfg = write(tmp_path, "optim: {epochs: 0}\n")
    proc = subprocess.run([sys.executable, str(REPO / "fastssl" / "train.py"), "--config", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("fastssl: config error: optim.epochs"), proc.stderr
    assert "Traceback" not in proc.stderr
