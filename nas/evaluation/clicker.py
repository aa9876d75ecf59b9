"""RITM's click simulator and IoU, rule for rule, so NoC figures compare with published ones.

Follows `isegm/inference/clicker.py` and `isegm/inference/utils.py` of RITM (Sofiiuk et al.):
- errors are false negatives (object, not predicted) and false positives (predicted, not object),
  both outside the ignored pixels; each is measured by its Euclidean distance to the nearest pixel
  outside it, the image border counting as outside (RITM pads by one pixel before
  `cv2.distanceTransform`), in float32;
- a pixel already clicked is never clicked again (RITM multiplies both distance maps by a
  not-clicked map);
- the click is positive only when the false-negative region is strictly deeper: an equal-depth tie
  gives a negative click; it goes to the first deepest pixel in raster order. With no error left
  both maps are zero, so the click is negative at (0, 0), as in RITM;
- a pixel is foreground when `sigmoid(logit) > 0.49`, computed in float32;
- IoU leaves the ignored pixels out and is NaN when the object and the prediction are both empty
  there (RITM divides 0 by 0).

The training-time click sampler (`distill.data.prompts`) keeps its own, documented choices; nothing
here is shared with it.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from distill.data.prompts import Click

PROBABILITY_THRESHOLD = 0.49


def foreground(logits: np.ndarray) -> np.ndarray:
    """(H, W) bool: RITM's `sigmoid(logits) > 0.49` in float32."""
    probs = torch.sigmoid(torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))).numpy()
    return probs > np.float32(PROBABILITY_THRESHOLD)


def ritm_iou(gt: np.ndarray, pred: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """IoU over the pixels that are not ignored; NaN when their union is empty."""
    valid = ~ignore if ignore is not None else np.ones(gt.shape, bool)
    union = np.count_nonzero((pred | gt) & valid)
    return float("nan") if union == 0 else np.count_nonzero(pred & gt & valid) / union


def _depth(region: np.ndarray) -> np.ndarray:
    return distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1].astype(np.float32)


class RitmClicker:
    """The clicks RITM's evaluation places on one object, given each prediction in turn."""

    def __init__(self, gt: np.ndarray, ignore: np.ndarray | None = None):
        self.gt = gt.astype(bool)
        self.valid = ~ignore if ignore is not None else np.ones(self.gt.shape, bool)
        self.not_clicked = np.ones(self.gt.shape, bool)
        self.clicks: list[Click] = []

    def next_click(self, pred: np.ndarray) -> Click:
        """Place (and remember) the next click against the boolean prediction `pred` (H, W)."""
        fn_depth = _depth(self.gt & ~pred & self.valid) * self.not_clicked
        fp_depth = _depth(~self.gt & pred & self.valid) * self.not_clicked
        positive = bool(fn_depth.max() > fp_depth.max())
        y, x = np.unravel_index(np.argmax(fn_depth if positive else fp_depth), self.gt.shape)
        self.not_clicked[y, x] = False
        click = (float(x), float(y), positive)
        self.clicks.append(click)
        return click
