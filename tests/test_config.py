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
    cfg = load_config(write(tmp_path, "method: {name: simclr, loss: dclw}\n"), ["optim.epochs=30", "method.temperature=0.2", "run.output_dir=/tmp/x"])
    assert cfg.optim.epochs == 30 and cfg.method.temperature == 0.2 and cfg.method.loss == "dclw"
    assert str(cfg.run.output_dir) == "/tmp/x"
    assert cfg.method.weight_sigma == 0.5 and cfg.eval.knn_k == 200 and cfg.eval.knn_temperature == 0.1


def test_shipped_configs_validate(folder_data):
    paths = sorted((REPO / "configs").glob("*.yaml"))
    assert paths
    for path in paths:
        cfg = load_config(path, [f"data.root={folder_data}"] if "dataset: folder" in path.read_text() else [])
        assert cfg.method.name and cfg.model.arch, path


@pytest.mark.parametrize(
    "text, overrides, needle",
    [
        ("optim: {epochs: 1, batchsize: 4}\n", [], "optim.batchsize: unknown key"),
        ("optim: {epochs: many}\n", [], "optim.epochs"),
        ("run: {}\n", ["optim.base_lr=abc"], "optim.base_lr"),
        ("run: {}\n", ["model.patch_size=5"], "model.patch_size=5 must divide"),
        ("run: {}\n", ["engine.precision=fp16"], "engine.precision=fp16 needs engine.zero_stage"),
        ("run: {}\n", ["method.loss=infonce"], "method.loss"),
        ("run: {}\n", ["nosection.key=1"], "nosection: unknown key"),
        ("run: {}\n", ["method.name=foo"], "method.name: unknown method 'foo' (one of simclr"),
        ("run: {}\n", ["model.arch=vit_huge_nonsense"], "model.arch: 'vit_huge_nonsense' is not a timm ViT"),
        ("run: {}\n", ["optim.epochs"], "not of the form"),
        ("optim: [1, 2\n", [], "not valid YAML"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, text, overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), overrides)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_every_attention_backend_can_be_forced_from_the_config(tmp_path):
    # The dispatcher's docstring promises any backend by name through model.attn_backend; the
    # config's choices once lagged behind it (flex and sdpa_tiles were refused).
    from fastssl.models.vit.attention import BACKENDS

    for name in ("auto", *BACKENDS):
        assert load_config(write(tmp_path, "run: {}\n"), [f"model.attn_backend={name}"]).model.attn_backend == name
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "run: {}\n"), ["model.attn_backend=flash"])
    assert "model.attn_backend" in str(err.value) and "flex" in str(err.value) and "\n" not in str(err.value)


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


# ---- issue 25, class 6: config files -------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "\n\n", "# just a comment\n  # another\n", "---\n", "   \n# x\n"])
def test_an_empty_or_comment_only_config_is_refused(tmp_path, text):
    with pytest.raises(ConfigError, match=r"holds no settings \(it is empty or only comments\)") as err:
        load_config(write(tmp_path, text), ["optim.epochs=1"])  # overrides do not make an empty file intended
    assert "\n" not in str(err.value)


def test_run_every_default_on_purpose(tmp_path):
    assert load_config(write(tmp_path, "run: {}\n")).optim.epochs == 100


@pytest.mark.parametrize("text, line, needle", [
    ("optim:\n  epochs: 1\n  betas: [0.9, 0.99\n", 4, "not valid YAML"),  # unclosed bracket: reported where the flow ends
    ("optim:\n  epochs: 1\n\tbatch_size: 4\n", 3, "not valid YAML"),  # a tab
    ("run:\n  seed: 1\nmodel:\n  arch: x\n   patch_size: 4\n", 5, "not valid YAML"),  # bad indentation
    ("optim:\n  epochs: 1\n  epochs: 2\n", 3, "key 'epochs' appears twice in one section (first on line 2)"),
    ("optim: {epochs: 1}\nrun: {seed: 0}\noptim: {batch_size: 2}\n", 3, "key 'optim' appears twice"),
])
def test_yaml_errors_name_file_and_line(tmp_path, text, line, needle):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert msg.startswith(f"{path} line {line},") and needle in msg and "\n" not in msg, msg


@pytest.mark.parametrize("make, needle", [
    (lambda p: p.mkdir(), "is a folder; give a YAML file"),
    (lambda p: p.write_bytes(b"\xff\xfe\x00binary\x80"), "is not a text file"),
    (lambda p: p.write_text("- optim\n- run\n"), "the top level must be a mapping of sections"),
    (lambda p: p.write_text("just a sentence\n"), "not a str"),
])
def test_other_config_file_mistakes(tmp_path, make, needle):
    path = tmp_path / "c.yaml"
    make(path)
    with pytest.raises(ConfigError, match=needle):
        load_config(path)


def test_an_override_into_a_section_left_empty(tmp_path):
    assert load_config(write(tmp_path, "run: {}\noptim:\n"), ["optim.epochs=30"]).optim.epochs == 30


def test_the_cli_says_it_in_one_line(tmp_path, capsys):
    from fastssl import train

    assert train.main(["--config", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a folder" in err
