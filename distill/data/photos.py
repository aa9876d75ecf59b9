"""Real photos that ship with scikit-image's wheel: the default images for proxies, demos and smoke runs."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from search_spaces.students.segmenter import normalise

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def sample_photos() -> list[np.ndarray]:
    """The bundled RGB photos (H, W, 3) uint8, in `PHOTOS` order."""
    import skimage.data

    return [getattr(skimage.data, name)() for name in PHOTOS]


def photo_batch(size_hw: tuple[int, int], crops_per_photo: int = 2, seed: int = 0) -> torch.Tensor:
    """Normalised (N, 3, H, W) batch: random crops (half to full frame) of each photo, resized to `size_hw`."""
    rng = np.random.default_rng(seed)
    batch = []
    for photo in sample_photos():
        x = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255
        h, w = photo.shape[:2]
        for _ in range(crops_per_photo):
            frac = rng.uniform(0.5, 1.0)
            ch, cw = int(h * frac), int(w * frac)
            y0, x0 = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
            crop = x[..., y0:y0 + ch, x0:x0 + cw]
            batch.append(F.interpolate(crop, size=size_hw, mode="bilinear", antialias=True, align_corners=False))
    return normalise(torch.cat(batch))
