"""Search spaces of TraceNet-style students, in the order the data flows:

- `space/`: what a student can be, without torch (`SpaceSpec`, the registry, `ArchConfig`, `GenomeSpace`);
- `tracing/`: receptive-field tracing of any dense module (`ReceptiveFieldTracer`, `TracingRules`, `Box`);
- `modules/`: the nn building blocks (backbones, FPN, tap head);
- `students/`: `TraceNetSupernet` (shared weights, `extract`) -> `TraceNetStudent` (a plain module) ->
  `Segmenter` (the numpy facade), with checkpoints, FLOPs and the tracing check;
- `common/`: the `TraceNASError` base, atomic writes and write locks, input limits, borrowed process resources.

The names below are imported on first use, so `import search_spaces.space` stays torch-free.
"""

from importlib import import_module

_EXPORTS = {
    "search_spaces.common.errors": ("TraceNASError",),
    "search_spaces.space": ("DEFAULT_SPACE", "ArchConfig", "ArchConfigError", "SpaceSpec", "StageSpec",
                            "UnknownSpaceError", "get_space", "list_spaces", "register_space", "registered_space"),
    "search_spaces.students.checkpoint": ("CheckpointError", "load_student", "save_student"),
    "search_spaces.students.segmenter": ("Segmenter",),
    "search_spaces.students.student": ("TraceNetStudent", "tap_window"),
    "search_spaces.students.supernet": ("TraceNetSupernet",),
    "search_spaces.tracing.box": ("Box",),
    "search_spaces.tracing.rules": ("DEFAULT_RULES", "TracingRules"),
    "search_spaces.tracing.tracer": ("ReceptiveFieldTracer", "TracePlan", "TracingError"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> object:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'search_spaces' has no attribute {name!r}")
    return getattr(import_module(_MODULE_OF[name]), name)


def __dir__() -> list[str]:
    return __all__
