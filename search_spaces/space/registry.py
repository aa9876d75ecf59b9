"""The registry of search spaces: built-in ones, your own (`register_space`, the timm way), and
`fixed:TIMM_MODEL` spaces made on demand. Every tool (sampling, supernet, tracing, CLI) takes a
space by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

from search_spaces.space.fixed import FIXED_PREFIX, fixed_space
from search_spaces.space.spec import SpaceSpec, SpaceSpecError, StageSpec, UnknownSpaceError

_SPACES: dict[str, SpaceSpec] = {}
DEFAULT_SPACE = "tracenet_mbv3"


def register_space(spec: SpaceSpec) -> SpaceSpec:
    """Add a space to the registry (re-registering the same name replaces it)."""
    if spec.name.startswith(FIXED_PREFIX):
        raise SpaceSpecError(f"space names starting with {FIXED_PREFIX!r} are reserved for timm backbones")
    _SPACES[spec.name] = spec
    return spec


@contextmanager
def registered_space(spec: SpaceSpec) -> Iterator[SpaceSpec]:
    """`register_space` for the length of a block (tests, experiments); the registry is restored after."""
    previous = _SPACES.get(spec.name)
    register_space(spec)
    try:
        yield spec
    finally:
        if previous is None:
            del _SPACES[spec.name]
        else:
            _SPACES[spec.name] = previous


@cache
def _fixed(name: str) -> SpaceSpec:
    return fixed_space(name)


def get_space(space: str | SpaceSpec) -> SpaceSpec:
    if isinstance(space, SpaceSpec):
        return space
    if space.startswith(FIXED_PREFIX):  # made on demand, not registered: the registry stays as declared
        return _fixed(space[len(FIXED_PREFIX):])
    try:
        return _SPACES[space]
    except KeyError:
        raise UnknownSpaceError(
            f"unknown space {space!r}; available: {', '.join(sorted(_SPACES))} or fixed:TIMM_MODEL "
            "(nas space show --fixed)") from None


def list_spaces() -> list[str]:
    return sorted(_SPACES)


# Once-for-All's MobileNetV3 space (stage widths, strides and activations of MobileNetV3-Large).
register_space(SpaceSpec(
    name="tracenet_mbv3",
    description="Once-for-All MobileNetV3 backbone + FPN (P3-P5) + CondInst-style tap-conditioned head",
    stages=(StageSpec(24, 2, "relu"), StageSpec(40, 2, "relu"), StageSpec(80, 2, "hswish"),
            StageSpec(112, 1, "hswish"), StageSpec(160, 2, "hswish")),
    resolutions=(512, 640, 768, 896, 1024),
    width_mults=(0.75, 1.0, 1.25),
    depths=(2, 3, 4),
    kernels=(3, 5, 7),
    expands=(3, 4, 6),
    fpn_channels=(32, 48, 64, 96),
    mask_channels=(8, 16, 32),
    dyn_layers=(1, 2, 3),
))

# A miniature of the same space for tests, smoke runs and examples: seconds on a CPU.
register_space(SpaceSpec(
    name="tracenet_tiny",
    description="Miniature of tracenet_mbv3 for tests and smoke runs",
    stages=(StageSpec(8, 2, "relu"), StageSpec(16, 2, "relu"), StageSpec(16, 2, "hswish"),
            StageSpec(24, 1, "hswish"), StageSpec(32, 2, "hswish")),
    resolutions=(64, 96, 128),
    width_mults=(0.5, 1.0),
    depths=(1, 2),
    kernels=(3, 5, 7),
    expands=(2, 3),
    fpn_channels=(8, 16),
    mask_channels=(4, 8),
    dyn_layers=(1, 2, 3),
    stem_channels=8,
))
