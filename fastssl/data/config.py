"""The ``data:`` section of the YAML config: where the images are, how they are decoded and augmented.

Defaults reproduce the BYOL augmentation recipe (Grill et al. 2020, table 6), which is SimCLR's
recipe (Chen et al. 2020, appendix A) with asymmetric per-view blur / solarize probabilities. The
per-view fields are pairs ``(view 1, view 2)``; set both entries equal for SimCLR's symmetric recipe
(SimCLR: blur p=0.5 on both views, no solarize).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from fastssl.config_base import Section
from fastssl.data.folder_checks import class_mismatch, foreign_entry, split_problem
from fastssl.data.sources import DEBIAN_SOURCE, INSTALL_HINT, is_prepared, missing_source_files

# Fashion-MNIST pixel statistics over the 60k training images (grey, so the same for R, G, B).
_FMNIST_MEAN = (0.2860, 0.2860, 0.2860)
_FMNIST_STD = (0.3530, 0.3530, 0.3530)

Pair = tuple[float, float]


def _check_prob(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")


def _check_range(name: str, lo: float, hi: float, *, low_bound: float = 0.0) -> None:
    if not (low_bound < lo <= hi):
        raise ValueError(f"{name} must satisfy {low_bound} < low <= high, got ({lo}, {hi})")


class AugmentConfig(Section):
    """Per-view augmentation of the two-view (SimCLR / BYOL style) training pipeline."""

    crop_scale: Pair = Field((0.08, 1.0), description="Random-resized-crop area fraction range (low, high).")
    crop_ratio: Pair = Field((3 / 4, 4 / 3), description="Random-resized-crop aspect-ratio (w/h) range (low, high).")
    flip_p: float = Field(0.5, description="Probability of a horizontal flip.")
    jitter_p: float = Field(0.8, description="Probability that colour jitter is applied to a view.")
    brightness: float = Field(0.4, description="Brightness factor drawn from [1 - b, 1 + b].")
    contrast: float = Field(0.4, description="Contrast factor drawn from [1 - c, 1 + c].")
    saturation: float = Field(0.2, description="Saturation factor drawn from [1 - s, 1 + s].")
    hue: float = Field(0.1, description="Hue shift drawn from [-h, h], as a fraction of the colour circle (<= 0.5).")
    grayscale_p: float = Field(0.2, description="Probability of converting a view to grey (kept 3-channel).")
    blur_p: Pair = Field((1.0, 0.1), description="Gaussian-blur probability for (view 1, view 2); BYOL: (1.0, 0.1).")
    blur_sigma: Pair = Field((0.1, 2.0), description="Gaussian-blur sigma range in pixels (low, high).")
    blur_kernel_frac: float = Field(
        0.1, description="Blur kernel size as a fraction of image_size (rounded down to an odd size, at least 3)."
    )
    solarize_p: Pair = Field((0.0, 0.2), description="Solarize probability for (view 1, view 2); BYOL: (0.0, 0.2).")
    solarize_threshold: int = Field(128, description="Solarize inverts pixels >= this value (0..255 scale).")

    @model_validator(mode="after")
    def _check(self) -> AugmentConfig:
        _check_range("augment.crop_scale", *self.crop_scale)
        if self.crop_scale[1] > 1.0:
            raise ValueError(f"augment.crop_scale high must be <= 1, got {self.crop_scale[1]}")
        _check_range("augment.crop_ratio", *self.crop_ratio)
        _check_range("augment.blur_sigma", *self.blur_sigma)
        for name in ("flip_p", "jitter_p", "grayscale_p"):
            _check_prob(f"augment.{name}", getattr(self, name))
        for name in ("blur_p", "solarize_p"):
            for view, p in enumerate(getattr(self, name), start=1):
                _check_prob(f"augment.{name} (view {view})", p)
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augment.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"augment.hue must be in [0, 0.5], got {self.hue}")
        if not 0.0 < self.blur_kernel_frac <= 1.0:
            raise ValueError(f"augment.blur_kernel_frac must be in (0, 1], got {self.blur_kernel_frac}")
        if not 0 <= self.solarize_threshold <= 256:
            raise ValueError(f"augment.solarize_threshold must be in [0, 256], got {self.solarize_threshold}")
        return self


class DataConfig(Section):
    """The image-folder data set and its decoding / batching knobs."""

    root: Path = Field(
        Path("data/fashion-mnist"),
        description="Image-folder data set with train/ and test/ sub-folders, each <class>/*.png|jpg.",
    )
    dataset: Literal["fashion-mnist", "folder"] = Field(
        "fashion-mnist",
        description="fashion-mnist: root is written from the Debian package's IDX files if missing; folder: root must exist.",
    )
    source: Path = Field(
        DEBIAN_SOURCE, description="Folder with the four Fashion-MNIST IDX .gz files (dataset: fashion-mnist)."
    )
    image_size: int = Field(32, ge=8, le=4096, description="Side of the square images fed to the model, in pixels.")
    mean: tuple[float, float, float] = Field(_FMNIST_MEAN, description="Per-channel mean (0..1 scale) for normalisation.")
    std: tuple[float, float, float] = Field(_FMNIST_STD, description="Per-channel std (0..1 scale) for normalisation.")
    num_threads: int = Field(2, ge=1, le=256, description="DALI CPU worker threads per pipeline.")
    decode: Literal["auto", "cpu", "mixed"] = Field(
        "auto", description="Image decoding: auto = mixed (nvJPEG, GPU) when training on a GPU, cpu otherwise."
    )
    prefetch: int = Field(2, ge=1, le=16, description="DALI prefetch queue depth (batches prepared ahead).")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="Two-view training augmentation.")
    synthetic: bool = Field(
        False,
        description="Random batches made on the training device (every crop the method declares, at its size), seeded: "
        "measures the trainer without the data pipeline and runs where DALI is absent. No labels: needs eval.enabled=false.",
    )
    synthetic_images: int = Field(
        1_281_167, ge=1, description="Images per epoch the synthetic source stands for (default: ImageNet-1k's train split)."
    )

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) <= 0:
            raise ValueError(f"std must be positive, got {v}")
        return v

    @model_validator(mode="after")
    def _check_root(self) -> DataConfig:
        # Only cheap existence checks here; the file scan (and its bad-file report) happens in the loaders.
        if self.synthetic:  # no files are read: root, dataset and source do not matter
            return self
        if self.dataset == "folder":
            root = self.root
            if not root.is_dir():
                raise ValueError(f"data.root {root} does not exist or is not a folder (dataset: folder)")
            if not any(root.iterdir()):
                raise ValueError(f"data.root {root} is empty (dataset: folder needs train/ and test/ sub-folders)")
            for split in ("train", "test"):
                if not (root / split).is_dir():
                    raise ValueError(f"data.root {root} has no {split}/ sub-folder (dataset: folder)")
            for split in ("train", "test"):
                problem = split_problem(root / split)
                if problem:
                    raise ValueError(f"data.root: {problem} (dataset: folder)")
            mismatch = class_mismatch(root)  # different class sets would shift every label
            if mismatch:
                raise ValueError(f"data.root: {mismatch}")
        elif not is_prepared(self.root):
            foreign = foreign_entry(self.root)
            if foreign is not None:
                raise ValueError(
                    f"data.root {self.root} is not a fastssl Fashion-MNIST folder (it holds {foreign}); "
                    "use data.dataset=folder to train on it as it is, or another data.root"
                )
            # Fail at config time, not after the model is built, when the source cannot be found.
            missing = missing_source_files(self.source)
            if missing:
                raise ValueError(
                    f"data.root {self.root} is not prepared and the Fashion-MNIST source files are missing "
                    f"({', '.join(str(m) for m in missing)}): {INSTALL_HINT}"
                )
        return self

