"""A timm ResNet with access to every stage's output (``StageTaps``), and the small-image stem.

    enc = ResNetTaps.from_timm("resnet18", small_stem=True)   # 28–32 px data
    h = enc.stem(x)                    # [B, 64, 28, 28]   (standard stem: [B, 64, H/4, W/4])
    for stage in enc.stages:           # layer1 … layer4
        h = stage(h)                   # [B, C_i, H_i, W_i]
    z = enc.pool(h)                    # [B, num_features]; enc(x) does all of it

The children keep timm's names (``conv1``, ``bn1``, ``act1``, ``maxpool``, ``layer1`` … ``layer4``,
``global_pool``), so ``state_dict()`` *is* timm's: with the standard stem it loads into
``timm.create_model(arch, num_classes=0)`` with ``strict=True``.

Small stem: timm's ResNets have no option for a CIFAR-style stem, so it is a surgery on the timm
model, ``small_stem_(model)``: the 7×7 stride-2 conv becomes a 3×3 stride-1 conv (a deep 3-conv stem
keeps its convs and loses its stride), and the max-pool goes. On 28 px images the standard stem
would leave a 7×7 map for ``layer1`` and 1×1 for ``layer4``. The exported checkpoint therefore
differs from a stock timm model in ``conv1``'s shape; ``export_spec()`` records ``small_stem`` and
``fastssl.eval.export.load_timm_encoder`` re-applies the same surgery to
``timm.create_model(arch, num_classes=0)`` before ``load_state_dict(strict=True)``.
"""
from __future__ import annotations

import torch
from torch import nn

_STEM = ("conv1", "bn1", "act1", "maxpool")
_STAGES = ("layer1", "layer2", "layer3", "layer4")


def small_stem_(model: nn.Module) -> nn.Module:
    """In place: the stem of a timm ``ResNet`` keeps the input resolution (3×3 stride-1 conv, no max-pool).

    A plain stem's ``conv1`` (7×7, stride 2) is replaced by a freshly initialised 3×3 stride-1 conv
    with the same channels (SimCLR's CIFAR ResNet); a deep stem (``conv1`` a Sequential of 3×3
    convs, e.g. ``resnet50d``) keeps its weights and its first conv's stride becomes 1."""
    conv = model.conv1
    if isinstance(conv, nn.Conv2d):
        model.conv1 = nn.Conv2d(conv.in_channels, conv.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # timm's ResNet init
    elif isinstance(conv, nn.Sequential) and isinstance(conv[0], nn.Conv2d):
        conv[0].stride = (1, 1)
    else:
        raise ValueError(f"small_stem: unsupported stem {type(conv).__name__}")
    model.maxpool = nn.Identity()
    return model


class ResNetTaps(nn.Module):
    """``[B, 3, H, W] → [B, num_features]`` with the stem, each stage and the pooling callable apart.

    ``stage_channels[i]``: channels of stage ``i``'s output; ``num_features`` = the last one.
    """

    def __init__(self, model: nn.Module, *, arch: str, small_stem: bool):
        super().__init__()
        for name in (*_STEM, *_STAGES, "global_pool"):
            setattr(self, name, getattr(model, name))
        self.arch, self.small_stem = arch, small_stem
        self.num_features = int(model.num_features)
        self.stage_channels = tuple(int(_out_channels(s)) for s in self.stages)

    @classmethod
    def from_timm(cls, arch: str, *, small_stem: bool = False, drop_path_rate: float = 0.0) -> "ResNetTaps":
        import fastssl  # noqa: F401  (torchvision shim before timm)
        import timm

        model = timm.create_model(arch, num_classes=0, drop_path_rate=drop_path_rate)
        if not all(hasattr(model, n) for n in (*_STEM, *_STAGES, "global_pool")):
            raise ValueError(f"model.arch: {arch!r} is not a timm ResNet (conv1 … layer4)")
        if small_stem:
            small_stem_(model)
        return cls(model, arch=arch, small_stem=small_stem)

    @property
    def stages(self) -> tuple[nn.Module, ...]:
        # A property, not a ModuleList: a second registration would duplicate every key in state_dict.
        return tuple(getattr(self, n) for n in _STAGES)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        # The input takes the first convolution's layout (``fastssl.engine.layout``: channels-last weights
        # want NHWC activations; a copy here, once per forward, instead of transposes around every conv).
        if self._first_conv.weight.is_contiguous(memory_format=torch.channels_last) and x.dim() == 4 \
                and not x.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        return self.maxpool(self.act1(self.bn1(self.conv1(x))))

    @property
    def _first_conv(self) -> nn.Conv2d:
        return self.conv1 if isinstance(self.conv1, nn.Conv2d) else self.conv1[0]  # a deep stem's first conv

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] → [B, C]`` global average pooling (timm's ``global_pool``)."""
        return self.global_pool(h)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every stage's output map, ``[B, C_i, H_i, W_i]`` for i = 1 … 4."""
        return (self.__dict__.get("_stages_region") or run_stages)(self, x)

    def compile_stages(self, **compile_kwargs) -> None:
        """Compile the stem and the four stages as *one* region (``engine.compile``): Inductor fuses each
        BatchNorm with its ReLU and residual add, the memory-bound passes of an eager ResNet step, for
        one guard check per encoder call (the ViT's block stack is one region for the same reason).
        Callers of ``stem`` / ``stages`` one by one (Accel's partial back-prop) stay eager."""
        self.__dict__["_stages_region"] = torch.compile(run_stages, **compile_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_stages(x)[-1])

    def export_spec(self) -> dict:
        """What ``load_timm_encoder`` needs to rebuild this network in timm (written beside encoder.pt)."""
        return {"arch": self.arch, "family": "resnet", "small_stem": self.small_stem}


def run_stages(enc: ResNetTaps, x: torch.Tensor) -> list[torch.Tensor]:
    """The stem, then every stage's output map. A module-level function taking the encoder, so a compiled
    copy (``compile_stages``) stays right for deep copies of the encoder (an EMA target)."""
    h, out = enc.stem(x), []
    for stage in enc.stages:
        h = stage(h)
        out.append(h)
    return out


def _out_channels(stage: nn.Module) -> int:
    convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d)]
    last_block = list(stage.children())[-1]
    bns = [m for m in last_block.modules() if isinstance(m, nn.BatchNorm2d)]
    return bns[-1].num_features if bns else convs[-1].out_channels
