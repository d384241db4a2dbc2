"""Issue 25, class 8: ranks. Which rank died (instead of a gloo traceback), the stop reason agreed
over ranks (no empty field), world-size advice that leads to a command that works, and SIGTERM
outside the train loop (one line, 143).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _helpers import layout_only_folder

from fastssl import train
from fastssl.config import ConfigError, TrainConfig, dump_config
from fastssl.engine import peers, resume_rules, signals, world_change
from fastssl.engine.checkpoint import SHAPE_FILE

GLOO_ERROR = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:45678")


@pytest.fixture
def two_ranks(monkeypatch):
    """This process as rank 0 and a finished process as rank 1 (a kill -9 leaves the same trace)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    monkeypatch.setattr(peers, "_peers", [(0, host, os.getpid()), (1, host, dead.pid)])
    monkeypatch.setattr(peers, "_me", [0])
    return dead.pid


def test_the_dead_rank_and_the_last_checkpoint_are_named(tmp_path, two_ranks):
    (tmp_path / "checkpoints" / "step6").mkdir(parents=True)
    assert peers.looks_like_peer_loss(GLOO_ERROR) and not peers.looks_like_peer_loss(ValueError("bad value"))
    assert peers.dead_ranks() == ([1], []) and peers.should_speak()
    msg = peers.lost_rank_message(tmp_path)
    assert msg == (f"rank 0 stops: rank 1 (pid {two_ranks}) died; the last complete checkpoint is "
                   f"{tmp_path / 'checkpoints' / 'step6'} (re-run the same command to resume)")


def test_one_rank_or_other_hosts(tmp_path, monkeypatch):
    monkeypatch.setattr(peers, "_peers", [(0, socket.gethostname(), os.getpid())])
    assert not peers.looks_like_peer_loss(GLOO_ERROR)  # one rank: no peer to lose
    peers.record(0)  # no process group: this process only
    assert peers._peers == [(0, socket.gethostname(), os.getpid())]
    monkeypatch.setattr(peers, "_peers", [(0, socket.gethostname(), os.getpid()), (1, "other-host", 1)])
    assert "a rank on another host (1) stopped answering; the last complete checkpoint is none" in peers.lost_rank_message(tmp_path)


def test_the_cli_says_it_in_one_line(tmp_path, two_ranks, capsys, monkeypatch):
    import fastssl.engine.loop as loop

    cfg = _config_file(tmp_path)
    monkeypatch.setattr(loop, "run", lambda c: (_ for _ in ()).throw(GLOO_ERROR))
    assert train.main(["--config", str(cfg)]) == train.EXIT_RANK_LOST
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"fastssl: rank 0 stops: rank 1 (pid {two_ranks}) died")


def test_a_stop_that_reached_another_rank_is_named():
    stop = signals.StopSignals(watch_launcher=False)
    try:
        err = stop.stopped(Path("/r/step5"), signals.describe(signal.SIGTERM, 1))
        assert str(err) == "SIGTERM to rank 1: checkpoint saved at /r/step5; re-run the same command to resume"
        assert err.exit_code == 143
        assert signals.describe(signals.LAUNCHER_GONE, 2) == "the deepspeed launcher of rank 2 is gone"
        assert not str(stop.stopped(Path("/r/step5"))).startswith(":")  # never an empty field
    finally:
        stop.restore()


def test_who_stopped_on_one_rank():
    import torch

    from fastssl.engine.epoch import _who_stopped

    class S:
        world, rank, device = 1, 0, torch.device("cpu")

    stop = signals.StopSignals(watch_launcher=False)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop.code == signal.SIGTERM and _who_stopped(stop, S) == "SIGTERM to rank 0"
    finally:
        stop.restore()


# ---- world-size change: the advice leads to a command that works ------------------------------------

def _cfg(tmp_path, batch):
    layout_only_folder(tmp_path / "d")
    return TrainConfig.model_validate({"run": {"output_dir": str(tmp_path / "run")},
                                       "data": {"dataset": "folder", "root": str(tmp_path / "d")},
                                       "model": {"arch": "test_vit", "patch_size": 4}, "optim": {"batch_size": batch}})


@pytest.mark.parametrize("saved, now, batch, global_batch, advice", [
    (1, 2, 16, 16, 8), (1, 4, 16, 16, 4), (2, 1, 24, 32, 16), (1, 3, 6, 12, 4), (4, 2, 12, 64, 8),
])
def test_following_the_advice_works(tmp_path, saved, now, batch, global_batch, advice):
    old = _cfg(tmp_path, global_batch // saved)
    folder = tmp_path / "run" / "checkpoints" / "step4"
    folder.mkdir(parents=True)
    (folder / SHAPE_FILE).write_text(json.dumps({"world_size": saved, "global_batch": global_batch, "zero_stage": 0}))
    (folder / "config.yaml").write_text(dump_config(old))
    with pytest.raises(ConfigError) as err:
        world_change.adapt(_cfg(tmp_path, batch), folder, now)
    assert f"add optim.batch_size={advice} to the command" in str(err.value)
    adapted = world_change.adapt(_cfg(tmp_path, advice), folder, now)  # the command the line suggests
    assert adapted.optim.batch_size * adapted.optim.grad_accum * now == global_batch
    resume_rules.check(adapted, folder, world_changed=True)  # and the resume rules accept it


def test_a_global_batch_the_ranks_cannot_share(tmp_path):
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / SHAPE_FILE).write_text(json.dumps({"world_size": 1, "global_batch": 12, "zero_stage": 0}))
    with pytest.raises(ConfigError, match=r"which 8 ranks cannot share evenly; resume on a rank count that divides 12 \(e.g. 1, 2, 3, 4, 6, 12\)"):
        world_change.adapt(_cfg(tmp_path, 2), folder, 8)


# ---- SIGTERM outside the train loop -------------------------------------------------------------------

def _config_file(tmp_path: Path) -> Path:
    data = layout_only_folder(tmp_path / "d")
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"run": {"output_dir": str(tmp_path / "run")}, "data": {"dataset": "folder", "root": str(data)},
                                "model": {"arch": "test_vit", "patch_size": 4}}))
    return path


@pytest.mark.parametrize("where, phase", [("config", "set-up"), ("set-up", "set-up"), ("finish", "the final evaluation and export")])
def test_sigterm_outside_the_train_loop_is_one_line_and_143(tmp_path, capsys, monkeypatch, where, phase):
    import fastssl.config
    import fastssl.engine.loop as loop

    def killed(*a, **k):
        signals.phase[0] = phase if where != "config" else signals.phase[0]
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        pytest.fail("SIGTERM did not stop the process")

    signals.phase[0] = "set-up"
    if where == "config":
        monkeypatch.setattr(fastssl.config, "load_config", killed)
    else:
        monkeypatch.setattr(loop, "run", killed)
    before = signal.getsignal(signal.SIGTERM)
    assert train.main(["--config", str(_config_file(tmp_path))]) == 143
    err = capsys.readouterr().err.strip()
    assert err == f"fastssl: SIGTERM during {phase}; complete checkpoints are kept: re-run the same command to continue"
    assert signal.getsignal(signal.SIGTERM) is before  # restored for the caller


def _catches_sigterm(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def test_sigterm_at_start_up_of_a_real_process(tmp_path):
    """A real process, signalled while it imports torch and DeepSpeed: one line, 143 (was: silence)."""
    from test_train_run import REPO, TRAIN, env

    proc = subprocess.Popen([sys.executable, str(TRAIN), "--config", str(_config_file(tmp_path))],
                            stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO)
    deadline = time.time() + 60
    while time.time() < deadline and not _catches_sigterm(proc.pid):  # main() has started (the first thing it does)
        time.sleep(0.05)
    time.sleep(0.5)  # now inside the config check / the imports of torch and DeepSpeed
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("fastssl:")]
    assert lines and lines[-1].startswith("fastssl: SIGTERM during ") and "Traceback" not in err, err[-2000:]


def test_a_rank_lost_during_set_up_is_said_too(tmp_path, monkeypatch):
    monkeypatch.setattr(peers, "_peers", [(0, socket.gethostname(), os.getpid()), (1, None, 0), (2, None, 0)])
    monkeypatch.setattr(peers, "_me", [0])
    assert peers.looks_like_peer_loss(GLOO_ERROR) and peers.should_speak()
    assert "rank 0 stops: another rank (1, 2) stopped answering during set-up; the last complete checkpoint is none" in \
        peers.lost_rank_message(tmp_path)


def test_the_same_command_again_after_a_rank_count_change(tmp_path):
    """2 ranks → 1 set grad_accum 2 (global batch 16); interrupted again, the same 1-rank command (grad_accum 1
    in its file) must resume, not be refused for grad_accum; a deliberate other batch size is still refused."""
    folder = tmp_path / "run" / "checkpoints" / "step9"
    folder.mkdir(parents=True)
    (folder / SHAPE_FILE).write_text(json.dumps({"world_size": 1, "global_batch": 16, "zero_stage": 0}))
    written = _cfg(tmp_path, 8)
    written = written.model_copy(update={"optim": written.optim.model_copy(update={"grad_accum": 2})})
    (folder / "config.yaml").write_text(dump_config(written))
    again = world_change.adapt(_cfg(tmp_path, 8), folder, 1)
    assert again.optim.grad_accum == 2
    assert resume_rules.check(again, folder, world_changed=False) == []
    other = world_change.adapt(_cfg(tmp_path, 4), folder, 1)
    assert other.optim.grad_accum == 1  # not adapted: the resume rules refuse the batch size
    with pytest.raises(ConfigError, match=r"optim.batch_size changed since checkpoint .* \(8 there, 4 now\)"):
        resume_rules.check(other, folder, world_changed=False)
