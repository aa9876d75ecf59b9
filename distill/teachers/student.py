"""Self-distillation: a TraceNAS student checkpoint as the teacher (full frame, no cropping)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from distill.data.datasets import Sample
from distill.data.prompts import Click
from search_spaces.students.segmenter import Segmenter


def file_digest(path: str | Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:12]


class StudentTeacher:
    def __init__(self, checkpoint: str | Path):
        self.segmenter = Segmenter.from_checkpoint(checkpoint, window=None)
        self.id = f"tracenas:{file_digest(checkpoint)}"

    def encode(self, sample: Sample) -> np.ndarray:
        return sample.image  # a ConvNet student has no prompt-free image embedding to reuse

    def predict(self, encoded: np.ndarray, clicks: list[Click]) -> np.ndarray:
        return self.segmenter.predict_logits(encoded, clicks)[0].astype(np.float32)
