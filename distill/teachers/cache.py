"""On-disk cache of teacher outputs, so later epochs do not rerun the teacher.

Layout: `ROOT/<teacher id digest>/<2-hex shard>/<key>.npy` for mask logits (float16), keyed by the
image's content hash and the click set, and `.../<image hash>.embedding.pt` for teachers whose
image encoding is worth keeping (SAM's ViT features). Files are written atomically.
"""

from __future__ import annotations

import contextlib
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
    """`teacher` answers on `device`, in inference mode and, on CUDA, in the training's autocast dtype; each
    image is encoded once per training step (`begin_step`) however many click rounds follow."""

    def __init__(self, root: str | Path, teacher: Teacher, device: str | torch.device = "cpu",
                 amp_dtype: torch.dtype | None = None):
        self.teacher, self.device = teacher, torch.device(device)
        self.amp_dtype = amp_dtype if self.device.type == "cuda" else None
        self.root = Path(root) / hashlib.sha1(teacher.id.encode()).hexdigest()[:16]
        self.hits = self.misses = 0
        self._encoded_now: dict[str, Any] = {}  # this step's images, by content hash

    def begin_step(self) -> None:
        self._encoded_now.clear()

    def _running(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

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
        with torch.inference_mode(), self._running():
            logits = np.asarray(self.teacher.predict(self._encoded(sample, digest), clicks), np.float32)
        logits = logits.astype(np.float16)
        atomic_write(path, lambda f: np.save(f, logits))
        return logits.astype(np.float32)  # the value a later hit reads, so runs do not depend on the cache

    def embedding(self, sample: Sample) -> torch.Tensor:
        """The teacher's image embedding (C, h, w) over the image, for feature distillation."""
        embed = getattr(self.teacher, "embedding", None)
        if embed is None:
            raise InvalidValueError(f"teacher {self.teacher.id} has no image embedding to distil features from")
        # a normal tensor (not an inference one): it is a regression target inside the autograd graph
        return embed(self._encoded(sample, image_digest(sample.image))).clone()

    def _encoded(self, sample: Sample, digest: str) -> Any:
        if digest in self._encoded_now:
            return self._encoded_now[digest]
        save, load = getattr(self.teacher, "save_encoded", None), getattr(self.teacher, "load_encoded", None)
        path = self._path(digest, f"{digest}.embedding.pt")
        if load is not None and path.is_file():
            encoded = load(torch.load(path, map_location=self.device, weights_only=True))
        else:
            with torch.inference_mode(), self._running():
                encoded = self.teacher.encode(sample)
            if save is not None:
                buffer = io.BytesIO()
                torch.save(save(encoded), buffer)
                atomic_write(path, lambda f: f.write(buffer.getvalue()))
        self._encoded_now[digest] = encoded
        return encoded
