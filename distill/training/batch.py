"""Samples at the student's input: images resized (long side = resolution) and padded to a square,
clicks moved between image and network pixels, teacher logits put on the student's output grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from distill.data.datasets import Sample
from distill.data.prompts import Click
from distill.teachers.ground_truth import ORACLE_LOGIT
from search_spaces.modules.head import NEGATIVE, PADDING, POSITIVE
from search_spaces.students.segmenter import resize_long_side
from search_spaces.students.student import MASK_STRIDE


@dataclass
class Prepared:
    sample: Sample
    image: torch.Tensor  # (3, R, R) normalised, zero-padded at the bottom and right
    scale: float  # network pixels per image pixel
    hw: tuple[int, int]  # the image's size at the network input, before padding


def prepare(sample: Sample, resolution: int) -> Prepared:
    x = resize_long_side(sample.image, resolution)
    nh, nw = x.shape[-2:]
    scale = resolution / max(sample.image.shape[:2])
    return Prepared(sample, F.pad(x, (0, resolution - nw, 0, resolution - nh))[0], scale, (nh, nw))


def to_network(click: Click, scale: float) -> Click:
    x, y, positive = click
    return (x + 0.5) * scale - 0.5, (y + 0.5) * scale - 0.5, positive


def to_image(click: Click, scale: float, image_hw: tuple[int, int]) -> Click:
    x, y, positive = click
    h, w = image_hw
    return (min(max((x + 0.5) / scale - 0.5, 0.0), w - 1.0), min(max((y + 0.5) / scale - 0.5, 0.0), h - 1.0),
            positive)


def click_tensor(clicks: list[list[Click]], scales: list[float]) -> torch.Tensor:
    """(B, N, 3) rows [x, y, label] in network pixels, padded with label -1 to the longest click list."""
    n = max(len(c) for c in clicks)
    padding = [0.0, 0.0, PADDING]
    rows = [[[*to_network(c, s)[:2], POSITIVE if c[2] else NEGATIVE] for c in cs] + [padding] * (n - len(cs))
            for cs, s in zip(clicks, scales, strict=True)]
    return torch.tensor(rows, dtype=torch.float32)


def on_grid(logits: np.ndarray, prepared: Prepared, grid: int) -> torch.Tensor:
    """Teacher logits (covering the whole image) resized onto the student's (1, grid, grid) output
    cells; the padding is background."""
    nh, nw = prepared.hw
    cells = (max(1, round(nh / MASK_STRIDE)), max(1, round(nw / MASK_STRIDE)))
    resized = F.interpolate(torch.from_numpy(logits)[None, None], size=cells, mode="bilinear", align_corners=False)
    out = torch.full((1, grid, grid), -ORACLE_LOGIT)
    out[0, :cells[0], :cells[1]] = resized[0, 0]
    return out


def network_mask(grid_logits: torch.Tensor, prepared: Prepared) -> np.ndarray:
    """(h, w) boolean mask at the network input size from (grid, grid) logits at the mask stride."""
    nh, nw = prepared.hw
    up = F.interpolate(grid_logits[None, None].float(), scale_factor=float(MASK_STRIDE), mode="bilinear",
                       align_corners=False)
    return (up[0, 0, :nh, :nw] > 0).cpu().numpy()
