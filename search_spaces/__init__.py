"""Search spaces of TraceNet-style students.

`ArchConfig` (an immutable member of a space) -> `TraceNetSupernet` (shared weights, `extract`) ->
`TraceNetStudent` (a plain module) -> `ReceptiveFieldTracer` (AutoCropping) -> `Segmenter` (facade).
"""

from search_spaces.arch_config import ArchConfig, ArchConfigError
from search_spaces.box import Box
from search_spaces.checkpoint import CheckpointError, load_student, save_student
from search_spaces.segmenter import Segmenter
from search_spaces.space import (
    DEFAULT_SPACE,
    SpaceSpec,
    StageSpec,
    UnknownSpaceError,
    get_space,
    list_spaces,
    register_space,
)
from search_spaces.student import TraceNetStudent, tap_window
from search_spaces.supernet import TraceNetSupernet
from search_spaces.tracing import ReceptiveFieldTracer, TracePlan, TracingError

__all__ = [
    "DEFAULT_SPACE", "ArchConfig", "ArchConfigError", "Box", "CheckpointError", "ReceptiveFieldTracer",
    "Segmenter", "SpaceSpec", "StageSpec", "TraceNetStudent", "TraceNetSupernet", "TracePlan", "TracingError",
    "UnknownSpaceError", "get_space", "list_spaces", "load_student", "register_space", "save_student",
    "tap_window",
]
