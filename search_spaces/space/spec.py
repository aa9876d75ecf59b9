"""Search-space definitions: the choices a TraceNet-style student can take (`SpaceSpec`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from search_spaces.common.errors import TraceNASError

ACTIVATIONS = ("relu", "hswish")
IN_CHANNELS = 5  # a student's input: RGB + positive and negative click maps


class SpaceSpecError(TraceNASError, ValueError):
    """A space definition whose choices are inconsistent."""


class UnknownSpaceError(TraceNASError, ValueError):
    """A space name that is not registered, or a timm model that cannot be a fixed backbone."""


@dataclass(frozen=True)
class StageSpec:
    """One searchable backbone stage: base output channels, stride of its first block, activation."""

    channels: int
    stride: int
    act: str

    def __post_init__(self) -> None:
        if self.act not in ACTIVATIONS:
            raise SpaceSpecError(f"stage act={self.act!r} is not allowed; choose from {ACTIVATIONS}")
        if self.stride not in (1, 2):
            raise SpaceSpecError(f"stage stride={self.stride} is not allowed; choose from (1, 2)")


@dataclass(frozen=True)
class SpaceSpec:
    """Choices of one search space. Every tuple lists the allowed values, smallest first."""

    name: str
    stages: tuple[StageSpec, ...]
    resolutions: tuple[int, ...]
    width_mults: tuple[float, ...]
    depths: tuple[int, ...]
    kernels: tuple[int, ...]
    expands: tuple[int, ...]
    fpn_channels: tuple[int, ...]
    mask_channels: tuple[int, ...]
    dyn_layers: tuple[int, ...]
    se: tuple[bool, ...] = (False, True)
    stem_channels: int = 16
    stem_act: str = "hswish"
    dyn_hidden: int = 8
    backbone: str | None = None  # a timm model name: a fixed, hand-designed backbone (no searchable stages)
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for name in ("resolutions", "width_mults", "depths", "kernels", "expands", "fpn_channels",
                     "mask_channels", "dyn_layers", "se"):
            values = getattr(self, name)
            if not values or tuple(sorted(values)) != tuple(values) or len(set(values)) != len(values):
                raise SpaceSpecError(f"space {self.name!r}: {name} must be non-empty, sorted and unique")
        if any(r % 32 for r in self.resolutions):
            raise SpaceSpecError(f"space {self.name!r}: resolutions must be multiples of 32 (total stride)")
        if any(k % 2 == 0 for k in self.kernels):
            raise SpaceSpecError(f"space {self.name!r}: kernels must be odd")
        if self.backbone is not None:
            if self.stages:
                raise SpaceSpecError(f"space {self.name!r}: a fixed backbone has no searchable stages")
        elif math.prod(s.stride for s in self.stages) * 2 != 32:
            raise SpaceSpecError(f"space {self.name!r}: stem (stride 2) and stages must reach stride 32")

    @property
    def max_depth(self) -> int:
        return self.depths[-1]

    @property
    def feature_stages(self) -> tuple[int, ...]:
        """Indices of the stages whose outputs feed the FPN: the last stage at strides 8, 16 and 32."""
        stride, last_at = 2, {}
        for i, stage in enumerate(self.stages):
            stride *= stage.stride
            last_at[stride] = i
        missing = [s for s in (8, 16, 32) if s not in last_at]
        if missing:
            raise SpaceSpecError(f"space {self.name!r}: no stage ends at stride(s) {missing}")
        return (last_at[8], last_at[16], last_at[32])

    def size(self) -> int:
        """Number of distinct architectures in the space."""
        per_block = len(self.kernels) * len(self.expands)
        per_stage = len(self.se) * sum(per_block**d for d in self.depths)
        return (len(self.resolutions) * len(self.width_mults) * len(self.fpn_channels)
                * len(self.mask_channels) * len(self.dyn_layers) * per_stage ** len(self.stages))

    def describe(self) -> dict:
        """Plain-dict view of the choices (for `nas space show`)."""
        return {
            "name": self.name,
            "description": self.description,
            "stages": [{"channels": s.channels, "stride": s.stride, "act": s.act} for s in self.stages],
            "stem_channels": self.stem_channels,
            "resolutions": list(self.resolutions),
            "width_mults": list(self.width_mults),
            "depths": list(self.depths),
            "kernels": list(self.kernels),
            "expands": list(self.expands),
            "se": list(self.se),
            "fpn_channels": list(self.fpn_channels),
            "mask_channels": list(self.mask_channels),
            "dyn_layers": list(self.dyn_layers),
            "dyn_hidden": self.dyn_hidden,
            "feature_stages": list(self.feature_stages) if self.backbone is None else [],
            "backbone": self.backbone,
            "size": self.size(),
        }
