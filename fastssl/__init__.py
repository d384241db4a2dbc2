"""fastssl: kernel-accelerated self-supervised visual pre-training."""
from fastssl._compat import install_torchvision_shim

install_torchvision_shim()

__version__ = "0.1.0"
