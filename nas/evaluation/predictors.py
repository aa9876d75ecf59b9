"""What an evaluation protocol queries: a student checkpoint or a teacher, behind one interface.

`start(sample)` does the per-image work once (a teacher's image encoding); `logits(state, clicks)`
returns mask logits (H, W) at the image's size for clicks `[(x, y, positive), ...]` in image pixels.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from distill.data.datasets import Sample
from distill.data.prompts import Click
from distill.teachers import at_size, build_teacher
from search_spaces.students.segmenter import Segmenter


class Predictor(Protocol):
    name: str

    def start(self, sample: Sample) -> Any: ...

    def logits(self, state: Any, clicks: list[Click]) -> np.ndarray: ...


class StudentPredictor:
    def __init__(self, checkpoint: str, window: float | None = None):
        self.segmenter = Segmenter.from_checkpoint(checkpoint, window=window)
        self.name = f"student:{checkpoint}"

    def start(self, sample: Sample) -> np.ndarray:
        return sample.image

    def logits(self, state: np.ndarray, clicks: list[Click]) -> np.ndarray:
        return self.segmenter.predict_logits(state, clicks)[0]


class TeacherPredictor:
    def __init__(self, spec: str):
        self.teacher = build_teacher(spec)
        self.name = f"teacher:{self.teacher.id}"

    def start(self, sample: Sample) -> tuple[Any, tuple[int, int]]:
        return self.teacher.encode(sample), sample.image.shape[:2]

    def logits(self, state: tuple[Any, tuple[int, int]], clicks: list[Click]) -> np.ndarray:
        encoded, hw = state
        return at_size(self.teacher.predict(encoded, clicks), hw)
