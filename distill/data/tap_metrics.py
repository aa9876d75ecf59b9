"""Single-tap quality measures shared by the supernet scorer and the evaluators."""

from __future__ import annotations

import numpy as np

from search_spaces.common.errors import InvalidValueError


def mask_iou(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """IoU of two boolean masks, leaving out `ignore` pixels (1.0 when both are empty)."""
    if ignore is not None:
        keep = ~ignore
        pred, gt = pred & keep, gt & keep
    union = np.count_nonzero(pred | gt)
    return 1.0 if union == 0 else np.count_nonzero(pred & gt) / union


def instance_taps(mask: np.ndarray, k: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    """`k` taps (x, y) drawn uniformly among the instance's pixels (TraceNet's mIoU-T sampling)."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        raise InvalidValueError("the instance mask is empty: no tap can be placed")
    picks = rng.choice(len(ys), size=k, replace=len(ys) < k)
    return [(float(xs[i]), float(ys[i])) for i in picks]
