"""Post-training int8 quantization (W8A8) of a student's one-tap program for `nas export`: the
quantizers are the runtimes' own (`nas/latency/profiling/quantized.py`), calibrated here on real images.

Calibration data: the bundled photos by default, or a dataset spec (`grabcut:PATH`, `folder:PATH`,
...). Each is resized as `Segmenter` resizes (long side = the resolution, zero-padded) to the
program's input, cropped to its traced region, and gets one tap: RITM's first click on its mask
where the data are labelled (the evaluation's first click), else the setting's tap. The same inputs check
a float16 export. `precision_parity` compares an int8 or float16 program with the float one on the
same images and taps: the IoU of their masks and the largest logit differences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from nas.evaluation.clicker import RitmClicker
from search_spaces.common.errors import TraceNASError
from search_spaces.students.segmenter import resize_long_side
from search_spaces.students.traced_tap import TracedTap

CALIBRATION_IMAGES = 16


class CalibrationDataError(TraceNASError, ValueError):
    """Calibration data for quantization that cannot be read or hold no image."""


@dataclass(frozen=True)
class CalibrationItem:
    image_crop: torch.Tensor  # (1, 3, h, w): the program's input region, normalised
    clicks: torch.Tensor  # (1, N, 3): the tap first, unused rows labelled -1


def calibration_items(program: TracedTap, image_hw: tuple[int, int], setting_tap: tuple[float, float],
                      n_clicks: int, data: str | None = None, limit: int = CALIBRATION_IMAGES) -> list[CalibrationItem]:
    """Program inputs from real images (module docstring); `data` None: the bundled photos."""
    images, masks = _images(data, limit)
    resolution = program.model.arch.resolution
    box = program.input_box
    items = []
    for image, mask in zip(images, masks, strict=True):
        x = resize_long_side(image, resolution)
        nh, nw = x.shape[-2:]
        x = F.pad(x, (0, max(0, image_hw[1] - nw), 0, max(0, image_hw[0] - nh)))[..., :image_hw[0], :image_hw[1]]
        if mask is None:
            tap = setting_tap
        else:
            cx, cy, _ = RitmClicker(mask).next_click(np.zeros(mask.shape, bool))
            tap = (min((cx + 0.5) * nw / image.shape[1] - 0.5, image_hw[1] - 1),
                   min((cy + 0.5) * nh / image.shape[0] - 0.5, image_hw[0] - 1))
        rows = [[tap[0], tap[1], 1.0]] + [[0.0, 0.0, -1.0]] * (n_clicks - 1)
        items.append(CalibrationItem(x[..., box.y0:box.y1, box.x0:box.x1].contiguous(), torch.tensor([rows])))
    return items


def _images(data: str | None, limit: int) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    if data is None:
        from distill.data.photos import sample_photos

        photos = sample_photos()
        return photos, [None] * len(photos)
    from distill.data.datasets import load_dataset

    try:
        dataset = load_dataset(data, limit)
        samples = [dataset[i] for i in range(len(dataset))]
    except TraceNASError as err:
        raise CalibrationDataError(f"calibration data {data!r}: {err}") from None
    if not samples:
        raise CalibrationDataError(f"calibration data {data!r} holds no image")
    return [s.image for s in samples], [s.mask if s.mask is not None and s.mask.any() else None for s in samples]


def precision_parity(float_outputs: list[tuple[torch.Tensor, torch.Tensor]],
                     reduced_outputs: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """Float32 vs int8 or float16 on the same inputs: mask IoU (logits > 0), max logit and IoU-logit
    differences."""
    ious, logit_diff, iou_diff = [], 0.0, 0.0
    for (f_logits, f_iou), (q_logits, q_iou) in zip(float_outputs, reduced_outputs, strict=True):
        q_logits = torch.as_tensor(q_logits).reshape(f_logits.shape)
        a, b = f_logits > 0, q_logits > 0
        union = (a | b).sum().item()
        ious.append(1.0 if union == 0 else (a & b).sum().item() / union)
        logit_diff = max(logit_diff, float((f_logits - q_logits).abs().max()))
        iou_diff = max(iou_diff, float((f_iou - torch.as_tensor(q_iou).reshape(f_iou.shape)).abs().max()))
    return {"images": len(ious), "mask_iou_mean": float(np.mean(ious)), "mask_iou_min": float(np.min(ious)),
            "max_abs_logit_diff": logit_diff, "max_abs_iou_logit_diff": iou_diff}
