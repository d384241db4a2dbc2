"""Settings this machine cannot run end the run at set-up in one line (exit 2), before any write.

- A forced ``model.attn_backend`` that does not run on the run's device in its compute dtype
  (``forced_problem`` probes it once): before, the run prepared its directory and built its engine,
  then stopped with a traceback from its first forward (the kNN at random init, or the first step;
  varlen on CPU: flash's kernel has no CPU backend).
- ``method.backend=triton`` off CUDA without Triton's interpreter (``triton_problem``): before, a
  traceback from the first loss.
A machine without DALI: tests/test_gpu_machine_imports.py.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench.train_plan import tiny_overrides  # noqa: E402


def _argv(tmp_path, *extra):
    return ["--config", str(ROOT / "configs/imagenet/mmoco.yaml"), "data.synthetic=true", "eval.enabled=false",
            f"run.output_dir={tmp_path / 'run'}", "engine.progress=false", "optim.batch_size=4", "optim.max_steps=2",
            "optim.warmup_epochs=0", *tiny_overrides("mmoco"), *extra]


def test_varlen_on_cpu_is_one_line_before_any_write(tmp_path, one_rank, capsys):
    from fastssl import train

    code = train.main(_argv(tmp_path, "model.attn_backend=varlen"))
    err = capsys.readouterr().err.strip()
    assert code == train.EXIT_CONFIG and "Traceback" not in err, err[-2000:]
    assert err.splitlines()[-1].startswith("fastssl: config error: model.attn_backend=varlen does not run on cpu in bfloat16 ("), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("backend", ["sdpa_tiles", "auto"])
def test_a_backend_that_runs_here_trains(tmp_path, one_rank, backend):
    from fastssl import train

    assert train.main(_argv(tmp_path, f"model.attn_backend={backend}")) == 0
    assert (tmp_path / "run" / "finished.json").exists()


def test_triton_backend_off_cuda_without_the_interpreter_is_one_line(tmp_path, one_rank, capsys, monkeypatch):
    from fastssl import train

    monkeypatch.delenv("TRITON_INTERPRET")  # (the tests' conftest sets it)
    code = train.main(_argv(tmp_path, "method.backend=triton"))
    err = capsys.readouterr().err.strip()
    assert code == train.EXIT_CONFIG and "Traceback" not in err, err[-2000:]
    assert err.splitlines()[-1].startswith("fastssl: config error: method.backend=triton runs the Triton kernels, which "
                                           "need a CUDA device (this run is on cpu)"), err
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter: the same run trains
    assert train.main(_argv(tmp_path, "method.backend=triton")) == 0
