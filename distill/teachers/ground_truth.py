"""The oracle teacher: the labelled mask itself, as confident logits (clicks do not change it)."""

from __future__ import annotations

import numpy as np

from distill.data.datasets import Sample
from distill.data.prompts import Click
from search_spaces.common.errors import InvalidValueError

ORACLE_LOGIT = 8.0  # sigmoid(8) = 0.9997: confident without saturating a temperature-scaled loss


class GroundTruthTeacher:
    id = "gt"

    def encode(self, sample: Sample) -> np.ndarray:
        if sample.mask is None:
            raise InvalidValueError(f"the ground-truth teacher needs labelled data; {sample.name} has no mask")
        return sample.mask

    def predict(self, encoded: np.ndarray, clicks: list[Click]) -> np.ndarray:
        return np.where(encoded, ORACLE_LOGIT, -ORACLE_LOGIT).astype(np.float32)
