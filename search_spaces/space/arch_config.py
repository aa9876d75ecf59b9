"""`ArchConfig`: one immutable, validated, JSON-serialisable member of a search space.

Unlike Once-for-All's mutable `set_active_subnet` state, a config is a value that is passed
explicitly to the supernet, the tracer, the latency model and the search.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from search_spaces.common.errors import TraceNASError
from search_spaces.common.limits import parse_json
from search_spaces.space.registry import DEFAULT_SPACE, get_space
from search_spaces.space.spec import SpaceSpec

RngLike = np.random.Generator | int | None


class ArchConfigError(TraceNASError, ValueError):
    """An architecture that is not a member of its space, or malformed architecture JSON."""


def _rng(rng: RngLike) -> np.random.Generator:
    return np.random.default_rng(rng)


def _pick(rng: np.random.Generator, choices: tuple) -> Any:
    return choices[int(rng.integers(len(choices)))]


@dataclass(frozen=True)
class ArchConfig:
    """A TraceNet-style student: backbone stages, FPN width and tap-conditioned head.

    `kernels[s]` and `expands[s]` hold one value per active block of stage `s` (their length is
    `depths[s]`), so two configs are equal exactly when they describe the same network.
    """

    space: str
    resolution: int
    width_mult: float
    depths: tuple[int, ...]
    kernels: tuple[tuple[int, ...], ...]
    expands: tuple[tuple[int, ...], ...]
    se: tuple[bool, ...]
    fpn_channels: int
    mask_channels: int
    dyn_layers: int

    def __post_init__(self) -> None:
        spec = get_space(self.space)
        # Accept lists (from JSON) but store tuples so the value is hashable and immutable.
        object.__setattr__(self, "depths", tuple(self.depths))
        object.__setattr__(self, "se", tuple(self.se))
        object.__setattr__(self, "kernels", tuple(tuple(k) for k in self.kernels))
        object.__setattr__(self, "expands", tuple(tuple(e) for e in self.expands))
        if isinstance(self.width_mult, int) and not isinstance(self.width_mult, bool):
            object.__setattr__(self, "width_mult", float(self.width_mult))
        self._validate(spec)

    # ---------------------------------------------------------------- validation
    def _check(self, name: str, value: Any, allowed: tuple) -> None:
        ok = type(value) is type(allowed[0]) and value in allowed
        if not ok:
            raise ArchConfigError(
                f"{name}={value!r} is not allowed in space '{self.space}'; allowed values: {list(allowed)}")

    def _validate(self, spec: SpaceSpec) -> None:
        self._check("resolution", self.resolution, spec.resolutions)
        self._check("width_mult", self.width_mult, spec.width_mults)
        self._check("fpn_channels", self.fpn_channels, spec.fpn_channels)
        self._check("mask_channels", self.mask_channels, spec.mask_channels)
        self._check("dyn_layers", self.dyn_layers, spec.dyn_layers)
        n = len(spec.stages)
        for name in ("depths", "kernels", "expands", "se"):
            if len(getattr(self, name)) != n:
                raise ArchConfigError(
                    f"{name} must have one entry per stage ({n} stages in space '{self.space}'), "
                    f"got {len(getattr(self, name))}")
        for s in range(n):
            self._check(f"depths[{s}]", self.depths[s], spec.depths)
            self._check(f"se[{s}]", self.se[s], spec.se)
        for s in range(n):
            for name, allowed in (("kernels", spec.kernels), ("expands", spec.expands)):
                per_block = getattr(self, name)[s]
                if len(per_block) != self.depths[s]:
                    raise ArchConfigError(
                        f"{name}[{s}] must list one value per block (depths[{s}]={self.depths[s]}), "
                        f"got {len(per_block)}")
                for b, value in enumerate(per_block):
                    self._check(f"{name}[{s}][{b}]", value, allowed)

    @property
    def spec(self) -> SpaceSpec:
        return get_space(self.space)

    # ---------------------------------------------------------------- serialisation
    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("depths", "se"):
            d[key] = list(d[key])
        for key in ("kernels", "expands"):
            d[key] = [list(v) for v in d[key]]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict) -> ArchConfig:
        if not isinstance(data, dict):
            raise ArchConfigError(f"an architecture must be a JSON object, got {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ArchConfigError(f"unknown architecture field(s) {unknown}; fields are {names}")
        missing = [n for n in names if n not in data]
        if missing:
            raise ArchConfigError(f"architecture is missing field(s) {missing}")
        try:
            return cls(**data)
        except TypeError as err:  # e.g. an int where a list of blocks is expected
            raise ArchConfigError(f"malformed architecture: {err}") from None

    @classmethod
    def from_json(cls, text: str) -> ArchConfig:
        data = parse_json(text, "architecture", ArchConfigError)
        # Accept the bare config or any result file that wraps it under "arch".
        if isinstance(data, dict) and isinstance(data.get("arch"), dict):
            data = data["arch"]
        return cls.from_dict(data)

    # ---------------------------------------------------------------- space members
    @classmethod
    def _extreme(cls, space: str | SpaceSpec, index: int) -> ArchConfig:
        spec = get_space(space)
        n, depth = len(spec.stages), spec.depths[index]
        return cls(space=spec.name, resolution=spec.resolutions[index], width_mult=spec.width_mults[index],
                   depths=(depth,) * n, kernels=((spec.kernels[index],) * depth,) * n,
                   expands=((spec.expands[index],) * depth,) * n, se=(spec.se[index],) * n,
                   fpn_channels=spec.fpn_channels[index], mask_channels=spec.mask_channels[index],
                   dyn_layers=spec.dyn_layers[index])

    @classmethod
    def largest(cls, space: str | SpaceSpec = DEFAULT_SPACE) -> ArchConfig:
        """Every choice at its maximum (the supernet's full network)."""
        return cls._extreme(space, -1)

    @classmethod
    def smallest(cls, space: str | SpaceSpec = DEFAULT_SPACE) -> ArchConfig:
        return cls._extreme(space, 0)

    @staticmethod
    def space_size(space: str | SpaceSpec = DEFAULT_SPACE) -> int:
        return get_space(space).size()

    @classmethod
    def sample(cls, rng: RngLike = None, space: str | SpaceSpec = DEFAULT_SPACE,
               se: bool | None = None) -> ArchConfig:
        """Every choice drawn uniformly (Once-for-All's sampler; depth first, then its blocks).

        `se` forces squeeze-excitation on (True) or off (False) in every stage."""
        spec, rng = get_space(space), _rng(rng)
        depths = tuple(_pick(rng, spec.depths) for _ in spec.stages)
        return cls(space=spec.name, resolution=_pick(rng, spec.resolutions),
                   width_mult=_pick(rng, spec.width_mults), depths=depths,
                   kernels=tuple(tuple(_pick(rng, spec.kernels) for _ in range(d)) for d in depths),
                   expands=tuple(tuple(_pick(rng, spec.expands) for _ in range(d)) for d in depths),
                   se=tuple(_pick(rng, spec.se) if se is None else se for _ in spec.stages),
                   fpn_channels=_pick(rng, spec.fpn_channels), mask_channels=_pick(rng, spec.mask_channels),
                   dyn_layers=_pick(rng, spec.dyn_layers))
