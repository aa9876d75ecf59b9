"""What every teacher is (`Teacher`), its one error type and the helpers teachers share."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from distill.data.datasets import Sample
from distill.data.prompts import Click
from search_spaces.common.errors import TraceNASError


class TeacherError(TraceNASError, ValueError):
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


def at_size(logits: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Teacher logits (covering the whole image at the teacher's resolution) resized to (h, w)."""
    if tuple(logits.shape) == tuple(hw):
        return logits
    low = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))[None, None]
    return F.interpolate(low, size=tuple(hw), mode="bilinear", align_corners=False)[0, 0].numpy()
