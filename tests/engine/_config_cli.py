"""Shared by the config-error tests: run ``fastssl/train.py``'s main in-process and read its one line.

``no_training`` is an autouse fixture for the modules that import it: each of their cases must stop at
config time, so reaching the train loop fails the test. ``write_tree`` writes a config (JSON is YAML)
from a base tree updated section by section.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastssl import train


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    import fastssl.engine.loop as loop

    monkeypatch.setattr(loop, "run", lambda cfg: pytest.fail("the config was accepted and training started"))


def write_tree(tmp_path: Path, tree: dict, sections: dict) -> Path:
    for key, value in sections.items():
        tree.setdefault(key, {}).update(value)
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(tree))
    return path


def one_line_exit_2(capsys, argv) -> str:
    """train.main(argv) must exit 2 with one ``fastssl: config error:`` line and no traceback; returns it."""
    code = train.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err and err.startswith("fastssl: config error:"), err
    return err
