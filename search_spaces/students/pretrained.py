"""Pretrained starts (`student.pretrained` in experiment configs, `--pretrained` on the CLI).

- `fixed:NAME` students: timm's ImageNet weights for NAME, `timm` (through timm's hub) or a local
  file, with the input conv widened to the click channels (`TimmBackbone.load_pretrained`);
- the elastic `tracenet_mbv3` space: a Once-for-All MobileNetV3 supernet, a checkpoint file or an
  OFA model-zoo name (`ofa_weights`); a single student is extracted from the imported supernet.

The FPN, mask branch and tap head have no ImageNet counterpart and keep their initialisation.
"""

from __future__ import annotations

from search_spaces.modules.timm_backbone import PretrainedError
from search_spaces.space import ArchConfig, SpaceSpec, get_space
from search_spaces.students.ofa_weights import import_ofa, read_ofa_state
from search_spaces.students.student import TraceNetStudent
from search_spaces.students.supernet import TraceNetSupernet


def pretrained_supernet(space: str | SpaceSpec, source: str) -> TraceNetSupernet:
    """A supernet of `space` whose backbone starts from the OFA supernet `source`."""
    if get_space(space).backbone is not None:
        raise PretrainedError(f"space {get_space(space).name!r} has a fixed backbone and no supernet")
    return import_ofa(TraceNetSupernet(space), read_ofa_state(source), source)


def pretrained_student(arch: ArchConfig, source: str) -> TraceNetStudent:
    """The student `arch` with its backbone's weights from `source` (module docstring)."""
    if arch.spec.backbone is None:
        return pretrained_supernet(arch.space, source).extract(arch)
    student = TraceNetStudent(arch)
    student.trunk.backbone.load_pretrained(source)
    return student
