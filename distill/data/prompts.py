"""Hard-click prompt sampling on boolean masks (H, W); every click is (x, y) in pixels.

First tap (the configurable `TapMix`):
- `uniform`: uniform over the instance's pixels (TraceNet's mIoU-T sampling);
- `interior`: probability proportional to the distance from the instance boundary, so central
  taps dominate (RITM's first click is the single deepest point);
- `boundary`: uniform within `band` px of the boundary, inside the instance: the deliberately
  low-quality taps of TraceNet's robustness setting.

Follow-up clicks come from the error between a prediction and the target (EdgeSAM's
prompt-in-the-loop): positive in false negatives, negative in false positives, placed at the
error region's deepest interior point (the RITM rule: the larger of the two regions by that depth,
the image border counting as boundary) or uniformly inside it. `draw_rounds` draws how many
rounds a step runs (TinySAM's hard prompt sampling) and `hard_mask_weights` up-weights the masks
the student gets most wrong (TinySAM's hard mask weighting).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import distance_transform_edt

from search_spaces.common.errors import InvalidValueError

Click = tuple[float, float, bool]


def boundary_distance(region: np.ndarray) -> np.ndarray:
    """Euclidean distance of every region pixel to the nearest pixel outside it; the image border
    counts as outside (RITM pads the mask before its distance transform)."""
    return distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]


def _pixels(region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.nonzero(region)
    if len(ys) == 0:
        raise InvalidValueError("the mask is empty: no click can be placed in it")
    return ys, xs


def tap_uniform(mask: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    ys, xs = _pixels(mask)
    i = rng.integers(len(ys))
    return float(xs[i]), float(ys[i])


def tap_interior(mask: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    ys, xs = _pixels(mask)
    depth = boundary_distance(mask)[ys, xs]
    i = rng.choice(len(ys), p=depth / depth.sum())
    return float(xs[i]), float(ys[i])


def tap_boundary(mask: np.ndarray, rng: np.random.Generator, band: float = 4.0) -> tuple[float, float]:
    depth = boundary_distance(mask)
    near = mask & (depth <= band)
    return tap_uniform(near if near.any() else mask, rng)


@dataclass(frozen=True)
class TapMix:
    """Shares of the first-tap rules (normalised) and the boundary band in pixels."""

    uniform: float = 0.5
    interior: float = 0.3
    boundary: float = 0.2
    band: float = 4.0

    def __post_init__(self) -> None:
        shares = (self.uniform, self.interior, self.boundary)
        if min(shares) < 0 or sum(shares) <= 0:
            raise InvalidValueError(f"tap mix shares must be >= 0 and not all 0, got {shares}")
        if self.band <= 0:
            raise InvalidValueError(f"boundary band must be positive, got {self.band}")

    def draw(self, mask: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
        shares = np.array([self.uniform, self.interior, self.boundary], dtype=float)
        rule = rng.choice(3, p=shares / shares.sum())
        if rule == 0:
            return tap_uniform(mask, rng)
        if rule == 1:
            return tap_interior(mask, rng)
        return tap_boundary(mask, rng, self.band)


def error_click(pred: np.ndarray, target: np.ndarray, rng: np.random.Generator | None = None,
                rule: str = "center", ignore: np.ndarray | None = None) -> Click | None:
    """Next corrective click, or None when the prediction has no error.

    `center` (RITM's placement): depth of each error region by `boundary_distance`; the click goes to
    the deepest point of the deeper region, positive when that is a false negative (a tie too). This is
    the training sampler's rule; evaluation uses RITM's own clicker (`nas.evaluation.clicker`), which
    breaks ties negative and never clicks a pixel twice. `uniform` (EdgeSAM): the
    region is drawn with probability proportional to its area, the point uniformly inside it."""
    valid = ~ignore if ignore is not None else np.ones_like(target, dtype=bool)
    false_neg, false_pos = target & ~pred & valid, pred & ~target & valid
    if not false_neg.any() and not false_pos.any():
        return None
    if rule == "center":
        depth_fn, depth_fp = boundary_distance(false_neg), boundary_distance(false_pos)
        positive = depth_fn.max() >= depth_fp.max()
        depth = depth_fn if positive else depth_fp
        y, x = np.unravel_index(np.argmax(depth), depth.shape)
        return float(x), float(y), bool(positive)
    if rule == "uniform":
        if rng is None:
            raise InvalidValueError("the uniform rule needs a random generator")
        n_fn, n_fp = np.count_nonzero(false_neg), np.count_nonzero(false_pos)
        positive = rng.random() < n_fn / (n_fn + n_fp)
        x, y = tap_uniform(false_neg if positive else false_pos, rng)
        return x, y, bool(positive)
    raise InvalidValueError(f"unknown click rule {rule!r}; choose 'center' or 'uniform'")


def draw_rounds(rng: np.random.Generator, max_rounds: int) -> int:
    """Number of corrective rounds this step: uniform in 0..max_rounds (TinySAM draws it per step)."""
    return int(rng.integers(max_rounds + 1))


def hard_mask_weights(ious: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Per-mask loss weights 1 + strength * (1 - IoU), normalised to mean 1: the student's worst
    masks count most (TinySAM's hard mask weighting); strength 0 gives equal weights."""
    weights = 1.0 + strength * (1.0 - np.asarray(ious, dtype=float))
    return weights / weights.mean()
