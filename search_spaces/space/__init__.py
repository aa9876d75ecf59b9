"""What a student can be, without torch: space definitions and their registry, `ArchConfig` (one
immutable member) and `GenomeSpace` (members as choice-index vectors for vectorised search)."""

from search_spaces.space.arch_config import ArchConfig, ArchConfigError
from search_spaces.space.fixed import FIXED_BACKBONES, FIXED_PREFIX
from search_spaces.space.genome import GenomeSpace, genome_space
from search_spaces.space.registry import DEFAULT_SPACE, get_space, list_spaces, register_space, registered_space
from search_spaces.space.spec import IN_CHANNELS, SpaceSpec, SpaceSpecError, StageSpec, UnknownSpaceError

__all__ = [
    "DEFAULT_SPACE", "FIXED_BACKBONES", "FIXED_PREFIX", "IN_CHANNELS", "ArchConfig", "ArchConfigError", "GenomeSpace",
    "SpaceSpec", "SpaceSpecError", "StageSpec", "UnknownSpaceError", "genome_space", "get_space", "list_spaces",
    "register_space", "registered_space",
]
