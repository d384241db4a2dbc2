"""fastssl: kernel-accelerated self-supervised visual pre-training.

The Triton kernels live in the top-level ``kernels/`` folder but install as ``fastssl.kernels``:
a PyPI package called ``kernels`` exists, and a top-level import of that name could pick it up.

torch is deliberately left unpinned here: ``scripts/setup.sh`` writes a constraints file that pins
the torch already present (CUDA machines) or the CPU wheel (CPU machines), so that no dependency
can drag in a different torch with several GB of CUDA libraries.
"""
from setuptools import find_packages, setup

packages = find_packages(include=["fastssl", "fastssl.*"]) + ["fastssl.kernels"]

setup(
    name="fastssl",
    version="0.1.0",
    description="Kernel-accelerated self-supervised visual pre-training (SimCLR, DCL, MoCo, BYOL, MAE, CAN, DAC, ...)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir={"fastssl.kernels": "kernels"},
    install_requires=[
        "torch>=2.4",
        "triton>=3.0",
        "timm>=1.0",
        "deepspeed>=0.16",
        "nvidia-dali-cuda130>=1.50",
        "xformers>=0.0.30",
        "pydantic>=2.0",
        "pyyaml>=6.0",
        "tensorboard>=2.15",
        "tqdm>=4.66",
        "numpy",
        "pillow",
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-benchmark>=4", "pytest-timeout", "pytest-xdist>=3"],
    },
    entry_points={"console_scripts": ["fastssl-train=fastssl.train:main"]},
)
