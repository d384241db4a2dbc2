"""``fastssl/train.py --print-config``: the resolved config a run of the same command would train with
(every default spelled out, overrides applied) on stdout, exit 0, nothing trained or written; a config
mistake is still the one line and exit 2."""
from __future__ import annotations

import yaml

from _config_cli import no_training, one_line_exit_2, write_tree  # noqa: F401 (autouse fixture: reaching training fails)
from _helpers import layout_only_folder

from fastssl import train
from fastssl.config import TrainConfig, load_config

def _config(tmp_path):
    tree = {"run": {"output_dir": str(tmp_path / "run")},
            "data": {"dataset": "folder", "root": str(layout_only_folder(tmp_path / "ds")), "image_size": 16},
            "model": {"arch": "test_vit", "patch_size": 4}, "optim": {"batch_size": 4}}
    return write_tree(tmp_path, tree, {})


def test_prints_the_resolved_config_and_writes_nothing(tmp_path, capsys):
    path = _config(tmp_path)
    overrides = ["optim.epochs=30", "method.temperature=0.2"]
    for argv in (["--config", str(path), *overrides, "--print-config"],  # the flag after the overrides
                 ["--print-config", "--local_rank=0", "--config", str(path), *overrides]):  # or first, launcher-style
        assert train.main(argv) == 0
        out, err = capsys.readouterr()
        assert err == ""
        printed = TrainConfig.model_validate(yaml.safe_load(out))
        assert printed == load_config(path, overrides)
        assert printed.optim.epochs == 30 and printed.method.temperature == 0.2
        assert "warmup_epochs:" in out and "resume: auto" in out  # defaults the file did not name
    assert not (tmp_path / "run").exists()


def test_a_mistake_is_still_one_line(tmp_path, capsys):
    err = one_line_exit_2(capsys, ["--config", str(_config(tmp_path)), "optim.epoch=3", "--print-config"])
    assert "optim.epoch: unknown key" in err
    assert capsys.readouterr().out == ""
