"""The kernel tests and kernel benchmarks run on a GPU machine without DeepSpeed, DALI or xformers.

A lent GPU machine has CUDA torch, triton, timm and torchvision but none of the three (DESIGN.md);
``scripts/gpu_session.sh`` runs tests/ops, tests/models and the kernel benchmarks there. Here, in a
fresh interpreter, those packages are made unimportable (a ``None`` entry in ``sys.modules`` makes
``import x`` raise ImportError) and everything on those paths is imported and collected.
"""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCKED = ("deepspeed", "nvidia.dali", "xformers", "xformers.ops")
MODULES = (
    "fastssl.kernels.contrastive", "fastssl.kernels.contrastive_tiles", "fastssl.kernels.tokens",
    "fastssl.kernels.patchify", "fastssl.ops", "fastssl.models", "fastssl.engine.sync_bn",
    "bench.common", "bench.contrastive", "bench.tokens", "bench.attention", "bench.throughput", "bench.train",
    "bench.train_plan", "bench.train_measure", "bench.masked_image",
    "fastssl.data.synthetic",
)

_PROBE = f"""
import sys
for name in {BLOCKED!r}:
    sys.modules[name] = None
import importlib
for name in {BLOCKED!r}:
    try:
        importlib.import_module(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{{name}} was not blocked")
for name in {MODULES!r}:
    importlib.import_module(name)
import pytest
code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "tests/ops", "tests/models", "tests/bench",
                    "tests/data/test_synthetic.py"])
for name in {BLOCKED!r}:
    assert sys.modules.get(name) is None, f"{{name}} got imported"
raise SystemExit(int(code))
"""


def test_kernel_paths_import_without_deepspeed_dali_xformers():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert "tests collected" in done.stdout, done.stdout[-1000:]


_TRAIN_NO_DALI = """
import sys
for name in ("nvidia.dali", "xformers", "xformers.ops"):
    sys.modules[name] = None
from fastssl import train
code = train.main(sys.argv[1:])
for name in ("nvidia.dali", "xformers"):
    assert sys.modules.get(name) is None, name + " got imported"
raise SystemExit(code)
"""


def test_the_trainer_runs_on_synthetic_data_without_dali_xformers(tmp_path):
    """What scripts/gpu_session.sh's train part runs: the CLI on data.synthetic, DeepSpeed carried, no DALI."""
    args = ["--config", str(ROOT / "configs/imagenet/simclr.yaml"), "data.synthetic=true", "eval.enabled=false",
            f"run.output_dir={tmp_path / 'run'}", "engine.progress=false", "optim.batch_size=4", "optim.max_steps=2",
            "data.image_size=16", "model.patch_size=4", "model.arch=test_vit", "method.head.hidden_dim=32", "method.head.out_dim=16"]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    done = subprocess.run([sys.executable, "-c", _TRAIN_NO_DALI, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "encoder.pt").is_file()


def test_real_data_without_dali_is_one_line_before_any_write(tmp_path):
    """The same machine, data.synthetic forgotten: one config-error line naming DALI and the way out
    (exit 2), not a traceback from the pipeline's import; the run directory is not created."""
    from _helpers import bar_image_folder

    data = bar_image_folder(tmp_path / "data")
    args = ["--config", str(ROOT / "configs/fmnist/simclr.yaml"), "data.dataset=folder", f"data.root={data}",
            f"run.output_dir={tmp_path / 'run'}", "engine.progress=false", "optim.batch_size=4", "optim.max_steps=2"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    done = subprocess.run([sys.executable, "-c", _TRAIN_NO_DALI, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    lines = [x for x in done.stderr.splitlines() if x.startswith("fastssl:")]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(lines) == 1 and "config error: data.synthetic=false reads the images through NVIDIA DALI" in lines[0], lines
    assert "data.synthetic=true" in lines[0]
    assert not (tmp_path / "run").exists()
