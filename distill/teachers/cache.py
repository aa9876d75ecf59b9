"""On-disk cache of teacher outputs, so later epochs do not rerun the teacher.

Layout: `ROOT/<teacher id digest>/<2-hex shard>/<key>.npy` for mask logits (float16), keyed by the
image's content hash and the click set, and `.../<image hash>.embedding.pt` for teachers whose
image encoding is worth keeping (SAM's ViT features). Files are written atomically.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.data.datasets import Sample
from distill.data.prompts import Click
from distill.teachers.base import Teacher
from search_spaces.common.errors import InvalidValueError
from search_spaces.common.files import atomic_write


def image_digest(image: np.ndarray) -> str:
    return hashlib.sha1(str(image.shape).encode() + np.ascontiguousarray(image).tobytes()).hexdigest()


class TeacherCache:
    def __init__(self, root: str | Path, teacher: Teacher):
        self.teacher = teacher
        self.root = Path(root) / hashlib.sha1(teacher.id.encode()).hexdigest()[:16]
        self.hits = self.misses = 0
        self._last: tuple[str, Any] | None = None  # the current image's encoding

    def _path(self, digest: str, name: str) -> Path:
        return self.root / digest[:2] / name

    def logits(self, sample: Sample, clicks: list[Click]) -> np.ndarray:
        """The teacher's logits for `clicks` on `sample`, from disk when this click set was seen."""
        digest = image_digest(sample.image)
        click_text = ";".join(f"{x:.1f},{y:.1f},{int(p)}" for x, y, p in clicks)
        key = hashlib.sha1(f"{digest}|{click_text}".encode()).hexdigest()
        path = self._path(key, f"{key}.npy")
        if path.is_file():
            self.hits += 1
            return np.load(path).astype(np.float32)
        self.misses += 1
        logits = self.teacher.predict(self._encoded(sample, digest), clicks).astype(np.float16)
        atomic_write(path, lambda f: np.save(f, logits))
        return logits.astype(np.float32)  # the value a later hit reads, so runs do not depend on the cache

    def embedding(self, sample: Sample) -> torch.Tensor:
        """The teacher's image embedding (C, h, w) over the image, for feature distillation."""
        embed = getattr(self.teacher, "embedding", None)
        if embed is None:
            raise InvalidValueError(f"teacher {self.teacher.id} has no image embedding to distil features from")
        return embed(self._encoded(sample, image_digest(sample.image)))

    def _encoded(self, sample: Sample, digest: str) -> Any:
        if self._last is not None and self._last[0] == digest:
            return self._last[1]
        save, load = getattr(self.teacher, "save_encoded", None), getattr(self.teacher, "load_encoded", None)
        path = self._path(digest, f"{digest}.embedding.pt")
        if load is not None and path.is_file():
            encoded = load(torch.load(path, map_location="cpu", weights_only=True))
        else:
            encoded = self.teacher.encode(sample)
            if save is not None:
                buffer = io.BytesIO()
                torch.save(save(encoded), buffer)
                atomic_write(path, lambda f: f.write(buffer.getvalue()))
        self._last = (digest, encoded)
        return encoded
