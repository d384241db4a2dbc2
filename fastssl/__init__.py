"""fastssl: kernel-accelerated self-supervised visual pre-training."""
from pathlib import Path as _Path

from fastssl._compat import install_torchvision_shim

install_torchvision_shim()

# The Triton kernels live in the top-level ``kernels/`` folder and install as ``fastssl.kernels``
# (setup.py's package_dir). Run from a source tree (PYTHONPATH=<repo>, the bare GPU machine, a
# git worktree), no install maps that name: adding the repo root to this package's search path
# makes ``fastssl.kernels`` resolve to ``<repo>/kernels``. In an installed copy the folder sits
# beside ``fastssl/`` in site-packages already, and the check below leaves the path alone.
_root = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).resolve().parent / "kernels").is_dir() and (_root / "kernels" / "__init__.py").is_file():
    __path__.append(str(_root))  # noqa: F821 - the package's own __path__

__version__ = "0.1.0"
