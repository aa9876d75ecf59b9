"""`Box`: a half-open rectangle on one feature map's own grid (rows y0:y1, columns x0:x1)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Box:
    y0: int
    y1: int
    x0: int
    x1: int

    @classmethod
    def full(cls, h: int, w: int) -> Box:
        return cls(0, h, 0, w)

    @property
    def h(self) -> int:
        return self.y1 - self.y0

    @property
    def w(self) -> int:
        return self.x1 - self.x0

    @property
    def area(self) -> int:
        return max(self.h, 0) * max(self.w, 0)

    def union(self, other: Box | None) -> Box:
        if other is None:
            return self
        return Box(min(self.y0, other.y0), max(self.y1, other.y1), min(self.x0, other.x0), max(self.x1, other.x1))

    def clip(self, h: int, w: int) -> Box:
        return Box(max(self.y0, 0), min(self.y1, h), max(self.x0, 0), min(self.x1, w))

    def relative_to(self, outer: Box) -> tuple[slice, slice]:
        """Slices that cut this box out of a tensor that covers `outer`."""
        if not (outer.y0 <= self.y0 and self.y1 <= outer.y1 and outer.x0 <= self.x0 and self.x1 <= outer.x1):
            raise ValueError(f"{self} is not inside {outer}")
        return (slice(self.y0 - outer.y0, self.y1 - outer.y0), slice(self.x0 - outer.x0, self.x1 - outer.x0))

    def coarsened(self, factor: int) -> Box:
        """The cells of a `factor`-times coarser grid that hold this box (the source of a nearest upsample)."""
        return Box(self.y0 // factor, (self.y1 - 1) // factor + 1, self.x0 // factor, (self.x1 - 1) // factor + 1)

    def scaled(self, stride: int) -> Box:
        """The pixels (at `stride` pixels per cell) that this box of cells covers."""
        return Box(self.y0 * stride, self.y1 * stride, self.x0 * stride, self.x1 * stride)

    @classmethod
    def window(cls, center_yx: tuple[int, int], size_hw: tuple[int, int], grid_hw: tuple[int, int]) -> Box:
        """A `size_hw` box around a cell, shifted (not shrunk) to stay inside the grid where it fits."""
        (cy, cx), (sh, sw), (gh, gw) = center_yx, size_hw, grid_hw
        sh, sw = min(sh, gh), min(sw, gw)
        y0 = min(max(cy - sh // 2, 0), gh - sh)
        x0 = min(max(cx - sw // 2, 0), gw - sw)
        return cls(y0, y0 + sh, x0, x0 + sw)
