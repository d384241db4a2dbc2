"""Data layer: config, Fashion-MNIST preparation, image-folder scan, DALI pipelines and loaders.

Heavy imports (DALI, torch) are deferred to ``fastssl.data.pipeline`` / ``fastssl.data.loader``.
"""
from fastssl.data.config import AugmentConfig, DataConfig

__all__ = ["AugmentConfig", "DataConfig"]
