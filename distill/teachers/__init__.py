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

from typing import Any, Protocol

import numpy as np
import torch

from distill.datasets import Sample
from distill.prompts import Click


class TeacherError(ValueError):
    """A teacher spec, checkpoint or input that cannot be used."""


class Teacher(Protocol):
    id: str

    def encode(self, sample: Sample) -> Any: ...

    def predict(self, encoded: Any, clicks: list[Click]) -> np.ndarray: ...


def load_weights(model: torch.nn.Module, checkpoint: str, what: str, key: str | None = None) -> None:
    """Load a teacher checkpoint (`weights_only=True`; the state dict, or its `key` entry) strictly into
    `model`; a missing, unreadable or mismatching file is a one-line TeacherError."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TeacherError(f"{checkpoint}: no such {what} checkpoint") from None
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise TeacherError(f"{checkpoint}: not a readable checkpoint ({type(err).__name__})") from None
    if key is not None and isinstance(state, dict) and key in state:
        state = state[key]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as err:
        raise TeacherError(f"{checkpoint} does not match {what} ({str(err).splitlines()[0]}); is it another "
                           "model?") from None


def build_teacher(spec: str) -> Teacher:
    kind, _, rest = spec.partition(":")
    if kind == "gt" and not rest:
        from distill.teachers.ground_truth import GroundTruthTeacher

        return GroundTruthTeacher()
    if kind == "sam":
        from distill.teachers.sam import SamTeacher

        model_type, _, checkpoint = rest.partition(":")
        return SamTeacher.build(model_type, checkpoint or None)
    if kind == "sam2":
        from distill.teachers.sam2 import Sam2Teacher

        size, _, checkpoint = rest.partition(":")
        return Sam2Teacher.build(size, checkpoint or None)
    if kind == "tracenas" and rest:
        from distill.teachers.student import StudentTeacher

        return StudentTeacher(rest)
    raise TeacherError(f"unknown teacher {spec!r}; use gt, sam:vit_b|vit_l|vit_h:CHECKPOINT, sam:tiny, "
                       "sam2:tiny|small|base_plus|large:CHECKPOINT or tracenas:CHECKPOINT")
