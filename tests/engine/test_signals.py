"""Stop requests (issue 13, cases 3 and 4) at unit level: flags, the second Ctrl-C, the launcher watch.

The end-to-end behaviour (checkpoint at the step boundary, exit 130 / 143) is in
``test_reliability_runs.py``; here each mechanism is driven directly.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fastssl.engine import signals


def test_sigint_and_sigterm_set_the_flag_and_give_their_exit_codes(capsys):
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under nohup / a background job
    for signum, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        stop = signals.StopSignals(watch_launcher=False)
        try:
            assert not stop.raised
            os.kill(os.getpid(), signum)
            time.sleep(0.05)
            assert stop.raised
            err = stop.stopped(Path("/x/step3"))
            assert err.exit_code == code and "checkpoint saved at /x/step3" in str(err)
        finally:
            stop.restore()
    assert signal.getsignal(signal.SIGINT) is before  # restored
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "Ctrl-C again to exit at once" in lines[0]


def test_second_ctrl_c_exits_at_once():
    code = ("import os, signal, time\nfrom fastssl.engine.signals import StopSignals\n"
            "s = StopSignals(watch_launcher=False)\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(0.1)\n"
            "os.kill(os.getpid(), signal.SIGINT)\ntime.sleep(5)\nprint('not reached')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130 and "not reached" not in proc.stdout
    assert "second Ctrl-C: exiting now" in proc.stderr and "Traceback" not in proc.stderr


def test_launcher_ancestors_follow_deepspeed_command_lines():
    # pid 10 (rank) <- 9 (launch.py) <- 8 (the deepspeed runner) <- 7 (a shell)
    parents = {10: 9, 9: 8, 8: 7, 7: 1}
    cmd = {9: "python -u -m deepspeed.launcher.launch --world_info=x", 8: "python /v/bin/deepspeed train.py", 7: "bash"}
    found = signals.launcher_ancestors(10, cmdline=lambda p: cmd.get(p, ""), stat=lambda p: (parents[p], f"t{p}"))
    assert found == [(9, "t9"), (8, "t8")]


def test_the_death_of_a_watched_launcher_requests_a_stop():
    """A stand-in launcher process is killed (SIGTERM, as a user would); the watch turns that into a stop."""
    launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = signals._proc_stat(launcher.pid)[1]
        stop = signals.StopSignals(watch_launcher=False, poll_s=0.05)
        stop._watched = [(launcher.pid, start)]
        import threading

        threading.Thread(target=stop._watch, args=(0.05,), daemon=True).start()
        time.sleep(0.2)
        assert not stop.raised
        launcher.terminate()
        launcher.wait()
        deadline = time.time() + 5
        while not stop.raised and time.time() < deadline:
            time.sleep(0.05)
        assert stop.raised and stop.stopped(Path("c")).exit_code == 143 and "launcher" in stop.reason
    finally:
        stop.restore()
        launcher.kill()


def test_a_reused_pid_does_not_count_as_alive():
    me = signals._proc_stat(os.getpid())
    assert signals.alive(os.getpid(), me[1]) and not signals.alive(os.getpid(), "0")
