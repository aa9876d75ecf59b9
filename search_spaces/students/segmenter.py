"""`Segmenter`: tap-to-mask inference on numpy images, the thin facade over a student.

Resize policy: the image is resized (bilinear, antialiased) so that its long side equals the
architecture's `resolution`, normalised with ImageNet statistics, and zero-padded at the bottom and
right to multiples of 32. The mask logits (stride 8) are upsampled back to the original size.
By default the whole object is computed (`window=None`); `window=0.5` computes only a square of half
the network resolution around the tap (receptive-field tracing), and the mask is empty outside it.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from search_spaces.common.errors import InvalidValueError
from search_spaces.modules.head import NEGATIVE, POSITIVE, TapOutput
from search_spaces.students.checkpoint import load_student
from search_spaces.students.fusion import optimise_for_inference
from search_spaces.students.student import (
    DEFAULT_WINDOW,
    MASK_STRIDE,
    SIZE_MULTIPLE,
    TraceNetStudent,
    tap_window,
)
from search_spaces.tracing.box import Box

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Click = tuple[float, float, bool]


def normalise(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in 0..1 -> ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def resize_long_side(image: np.ndarray, resolution: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """(1, 3, nh, nw) normalised tensor of an HxWx3 uint8 image resized (bilinear, antialiased) so that
    its long side is `resolution` (the resize policy)."""
    h, w = image.shape[:2]
    scale = resolution / max(h, w)
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None]
    if x.device.type != "cpu":  # torch's fast uint8 antialiased resize is CPU-only
        x = x.float()
    x = F.interpolate(x, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="bilinear",
                      antialias=True, align_corners=False)
    return normalise(x.float() / 255)


class Segmenter:
    def __init__(self, model: TraceNetStudent, window: float | None = DEFAULT_WINDOW,
                 device: str | torch.device = "cpu"):
        """`window`: side of the computed output square as a fraction of the network resolution."""
        if window is not None and not 0 < window <= 1:
            raise InvalidValueError(f"window must be in (0, 1] (a fraction of the resolution) or None, got {window}")
        self.model = model.to(device).eval()
        self.window = window
        self.device = torch.device(device)

    @functools.cached_property
    def inference_model(self) -> TraceNetStudent:
        """What predicts: a copy of `model` with BatchNorm folded into the convs and channels-last weights
        (fusion.py), made at the first prediction (so set the weights, e.g. recalibrate BN, before it)."""
        return optimise_for_inference(copy.deepcopy(self.model))

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: object) -> Segmenter:
        return cls(load_student(path), **kwargs)

    def prepare(self, image: np.ndarray, clicks: Sequence[Click]) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Network inputs for `image` and `clicks` under the resize policy: the normalised, padded image
        (1, 3, H, W), the click rows (1, N, 3) in network pixels (tap first) and the resized (h, w)."""
        h, w = _check_image(image)
        ordered = _check_clicks(clicks, h, w)
        x = resize_long_side(image, self.model.arch.resolution, self.device)
        nh, nw = x.shape[-2:]
        ph, pw = -(-nh // SIZE_MULTIPLE) * SIZE_MULTIPLE, -(-nw // SIZE_MULTIPLE) * SIZE_MULTIPLE
        x = F.pad(x, (0, pw - nw, 0, ph - nh))
        sy, sx = nh / h, nw / w  # pixel centres map as (x + 0.5) * s - 0.5
        click_rows = [[(cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5, POSITIVE if pos else NEGATIVE]
                      for cx, cy, pos in ordered]
        return x, torch.tensor([click_rows], dtype=torch.float32, device=self.device), (nh, nw)

    def predict(self, image: np.ndarray, clicks: Sequence[Click]) -> tuple[np.ndarray, float]:
        """Mask (H, W) bool and predicted IoU for `clicks` [(x, y, positive)]; the first positive is the tap."""
        logits, iou = self.predict_logits(image, clicks)
        return logits > 0, iou

    @torch.inference_mode()
    def predict_logits(self, image: np.ndarray, clicks: Sequence[Click]) -> tuple[np.ndarray, float]:
        """Mask logits (H, W) float32 (very negative outside the computed window) and predicted IoU."""
        x, click_tensor, (nh, nw) = self.prepare(image, clicks)  # validates image and clicks
        h, w = image.shape[:2]
        ph, pw = x.shape[-2:]
        resolution = self.model.arch.resolution
        tap = tuple(click_tensor[0, 0, :2].tolist())
        window = None if self.window is None else tap_window(
            (ph, pw), tap, max(MASK_STRIDE, round(self.window * resolution)))
        # A window whose receptive field is the whole image is computed full-frame and cut: the same
        # values without the cropped interpreter's overhead (and exact where squeeze-excitation pools).
        model = self.inference_model
        cropped = window is not None and model.plan((ph, pw), tap, window).input_box != Box.full(ph, pw)
        out = model(x.contiguous(memory_format=torch.channels_last), click_tensor, window=window if cropped else None)
        if window is not None and not cropped:
            out = TapOutput(out.logits[..., window.y0:window.y1, window.x0:window.x1], out.iou, window)
        cells = out.box
        logits = torch.full((1, 1, ph, pw), -1e4, device=self.device)
        window_logits = F.interpolate(out.logits, scale_factor=float(MASK_STRIDE), mode="bilinear",
                                      align_corners=False)
        px = cells.scaled(MASK_STRIDE)
        logits[..., px.y0:px.y1, px.x0:px.x1] = window_logits
        logits = F.interpolate(logits[..., :nh, :nw], size=(h, w), mode="bilinear", align_corners=False)
        return logits[0, 0].cpu().numpy(), float(torch.sigmoid(out.iou[0]))


def _check_image(image: object) -> tuple[int, int]:
    if not isinstance(image, np.ndarray):
        raise InvalidValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InvalidValueError(f"image must be uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidValueError(f"image must be HxWx3, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidValueError(f"image is empty (shape {image.shape})")
    return image.shape[0], image.shape[1]


def _check_clicks(clicks: object, h: int, w: int) -> list[Click]:
    """Validate clicks and put the tap (first positive click) first, keeping the others' order."""
    if not isinstance(clicks, Sequence) or isinstance(clicks, str) or len(clicks) == 0:
        raise InvalidValueError("clicks must be a non-empty list of (x, y, positive)")
    parsed = []
    for i, click in enumerate(clicks):
        if not isinstance(click, Sequence) or len(click) != 3:
            raise InvalidValueError(f"click {i} must be (x, y, positive), got {click!r}")
        x, y, positive = click
        if not all(isinstance(v, (int, float, np.integer, np.floating)) and np.isfinite(v) for v in (x, y)):
            raise InvalidValueError(f"click {i} has non-numeric coordinates {click!r}")
        if not 0 <= x < w or not 0 <= y < h:
            raise InvalidValueError(f"click {i} at (x={x}, y={y}) is off the {w}x{h} image")
        parsed.append((float(x), float(y), bool(positive)))
    first = next((i for i, c in enumerate(parsed) if c[2]), None)
    if first is None:
        raise InvalidValueError("at least one positive click (the tap) is required")
    return [parsed[first]] + parsed[:first] + parsed[first + 1:]
