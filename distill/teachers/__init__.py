"""Teachers: encode an image once, then give mask logits for any click set.

Every teacher has an `id` (it keys the on-disk cache) and two calls:
`encode(sample) -> Encoded` and `predict(encoded, clicks) -> logits`, where `logits` is a float32
(h, w) array covering the whole image at the teacher's own resolution (consumers resize it).
`build_teacher(spec)` makes one from a spec string:

- `gt`: the ground-truth mask as an oracle (labelled data only);
- `sam:vit_b|vit_l|vit_h:CHECKPOINT` (segment-anything); `sam:tiny` is a random miniature for tests;
- `sam2:tiny|small|base_plus|large:CHECKPOINT` (the optional `sam2` package); `sam2:test` is random;
- `tracenas:CHECKPOINT`: a TraceNAS student (self-distillation, e.g. an extracted supernet subnet).
"""

from __future__ import annotations

import torch

from distill.teachers.base import Teacher, TeacherError, at_size, load_weights
from distill.teachers.ground_truth import GroundTruthTeacher
from distill.teachers.sam import SamTeacher
from distill.teachers.sam2 import Sam2Teacher
from distill.teachers.student import StudentTeacher

__all__ = ["Teacher", "TeacherError", "at_size", "build_teacher", "load_weights"]


def build_teacher(spec: str, device: str | torch.device = "cpu") -> Teacher:
    """The teacher `spec` names, its network on `device`."""
    kind, _, rest = spec.partition(":")
    if kind == "gt" and not rest:
        return GroundTruthTeacher()
    if kind == "sam":
        model_type, _, checkpoint = rest.partition(":")
        return SamTeacher.build(model_type, checkpoint or None).to(device)
    if kind == "sam2":
        size, _, checkpoint = rest.partition(":")
        return Sam2Teacher.build(size, checkpoint or None).to(device)
    if kind == "tracenas" and rest:
        return StudentTeacher(rest)
    raise TeacherError(f"unknown teacher {spec!r}; use gt, sam:vit_b|vit_l|vit_h:CHECKPOINT, sam:tiny, "
                       "sam2:tiny|small|base_plus|large:CHECKPOINT or tracenas:CHECKPOINT")
