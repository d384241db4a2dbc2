"""What a method asks the data pipeline for: named groups of augmented crops of each image.

A method returns a tuple of ``CropSpec`` from ``crops()``; the one DALI pipeline builds every
copy of every crop from the same decoded image, and the batch carries them by name as
``[count, B, 3, size, size]`` tensors (``fastssl.data.batch.Batch``).

Examples (image size S from ``data.image_size``):

    CropSpec("views", count=2)                                   # SimCLR / BYOL / MoCo v3 / SimSiam
    CropSpec("global", count=2, scale=(0.14, 1.0)),
    CropSpec("local", count=6, size=96, scale=(0.05, 0.14))      # SwAV multi-crop
    CropSpec("image", recipe="light", scale=(0.2, 1.0))          # MAE: crop + flip only
    CropSpec("full", ...), CropSpec("small", size=S // 2, crop=False)         # DAC: the whole image, downsampled
    CropSpec("full", ...), CropSpec("small", size=S // 2, resize_of="full")   # the same crop, resized

Per-copy augmentation: copy ``i`` of a "strong" crop uses ``data.augment.blur_p[i % 2]`` and
``solarize_p[i % 2]`` unless the spec sets ``blur_p`` / ``solarize_p`` for all its copies, so a
two-copy crop reproduces the asymmetric BYOL recipe (view 1 always blurred, view 2 solarized
with p = 0.2) and setting both probabilities gives SimCLR's or SwAV's symmetric one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence


@dataclass(frozen=True)
class CropSpec:
    """One named group of crops.

    name        key of the crop in the batch (an identifier)
    count       copies per image (each with its own random crop and augmentation)
    size        output side in pixels; None → ``data.image_size``
    scale       random-resized-crop area range; None → ``data.augment.crop_scale``
    crop        False → no random crop: the whole image resized to ``size`` (DAC's downsampled
                view, dac.txt §4.1 "for downsampled image, we didn't perform cropping"); the
                recipe's colour, blur, solarize and flip still apply
    recipe      "strong": SimCLR/BYOL colour, blur, solarize; "light": crop + flip only (MAE)
    blur_p      blur probability of every copy; None → ``data.augment.blur_p[copy % 2]``
    solarize_p  solarize probability of every copy; None → ``data.augment.solarize_p[copy % 2]``
    resize_of   name of an earlier crop with the same count: this crop is that crop's pixels
                (before normalisation, same flip) resized to ``size`` — DAC's view A
    """

    name: str
    count: int = 1
    size: int | None = None
    scale: tuple[float, float] | None = None
    crop: bool = True
    recipe: Literal["strong", "light"] = "strong"
    blur_p: float | None = None
    solarize_p: float | None = None
    resize_of: str | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"crop name must be an identifier, got {self.name!r}")
        if self.count < 1:
            raise ValueError(f"crop {self.name}: count must be >= 1, got {self.count}")
        if self.size is not None and self.size < 1:
            raise ValueError(f"crop {self.name}: size must be >= 1, got {self.size}")
        if self.scale is not None and not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ValueError(f"crop {self.name}: scale must satisfy 0 < low <= high <= 1, got {self.scale}")
        if not self.crop and (self.scale is not None or self.resize_of is not None):
            raise ValueError(f"crop {self.name}: crop=False resizes the whole image; it takes no scale and no resize_of")
        for p in (self.blur_p, self.solarize_p):
            if p is not None and not 0.0 <= p <= 1.0:
                raise ValueError(f"crop {self.name}: probabilities must lie in [0, 1], got {p}")


TWO_VIEWS: tuple[CropSpec, ...] = (CropSpec("views", count=2),)
"""The default: two strongly augmented full-size views (SimCLR, BYOL, SimSiam, MoCo v3)."""


def check_crops(crops: Sequence[CropSpec]) -> tuple[CropSpec, ...]:
    """Validate a method's crop list as a whole: unique names, ``resize_of`` pointing backwards."""
    crops = tuple(crops)
    if not crops:
        raise ValueError("a method must ask for at least one crop")
    seen: dict[str, CropSpec] = {}
    for c in crops:
        if c.name in seen:
            raise ValueError(f"crop name {c.name!r} is used twice")
        if c.resize_of is not None:
            src = seen.get(c.resize_of)
            if src is None:
                raise ValueError(f"crop {c.name}: resize_of={c.resize_of!r} must name an earlier crop")
            if src.count != c.count or src.resize_of is not None:
                raise ValueError(f"crop {c.name}: resize_of needs a source crop of the same count that is not itself resized")
        seen[c.name] = c
    return crops
