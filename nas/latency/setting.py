"""The reference setting a latency is quoted for: a TraceNet student's cost depends on the image
size, where the tap falls and the output window it computes.

Default: a landscape 4:3 photo resized so its long side is the architecture's resolution (network
input W = resolution, H = 3/4 of it rounded to a multiple of 32), one tap at the image centre, and
the whole output (the `Segmenter` default; `window` prices TraceNet's fixed window instead).
`image_size` fixes the network input size instead (e.g. 1024x768) for every architecture.
`precision` is the numeric format of the program (float32 unless an fp16 or int8 table prices it): a
latency table prices programs of one precision only.
"""

from __future__ import annotations

from dataclasses import dataclass

from search_spaces.common.errors import InvalidValueError
from search_spaces.space import ArchConfig
from search_spaces.students.student import DEFAULT_WINDOW, SIZE_MULTIPLE, TraceNetStudent
from search_spaces.students.traced_tap import TracedTap


def parse_image_size(text: str) -> tuple[int, int]:
    """'1024x768' (width x height, multiples of 32) -> (1024, 768)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InvalidValueError(f"image size {text!r} must look like WIDTHxHEIGHT, e.g. 1024x768") from None
    if w <= 0 or h <= 0 or w % SIZE_MULTIPLE or h % SIZE_MULTIPLE:
        raise InvalidValueError(f"image size {text!r}: width and height must be positive multiples of {SIZE_MULTIPLE}")
    return w, h


PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class LatencySetting:
    image_size: tuple[int, int] | None = None  # network input (width, height); None: from the resolution
    tap: tuple[float, float] = (0.5, 0.5)  # tap position as fractions of (width, height)
    window: float | None = DEFAULT_WINDOW  # output window side / resolution; None: the whole output
    precision: str = "fp32"  # of the program: weights and activations float32, float16, or int8 (W8A8)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InvalidValueError(f"unknown precision {self.precision!r}; choose from {', '.join(PRECISIONS)}")
        if self.window is not None and not 0 < self.window <= 1:
            raise InvalidValueError(f"window must be a fraction of the resolution in (0, 1], got {self.window}")
        if not all(0 <= t <= 1 for t in self.tap):
            raise InvalidValueError(f"tap must be fractions of (width, height) in [0, 1], got {self.tap}")

    def input_hw(self, arch: ArchConfig) -> tuple[int, int]:
        if self.image_size is not None:
            return self.image_size[1], self.image_size[0]
        r = arch.resolution
        return max(SIZE_MULTIPLE, round(0.75 * r / SIZE_MULTIPLE) * SIZE_MULTIPLE), r

    def tap_xy(self, arch: ArchConfig) -> tuple[float, float]:
        h, w = self.input_hw(arch)
        return self.tap[0] * (w - 1), self.tap[1] * (h - 1)

    def window_px(self, arch: ArchConfig) -> int | None:
        return None if self.window is None else max(8, round(self.window * arch.resolution))

    def program(self, model: TraceNetStudent) -> TracedTap:
        """The one-tap program a latency at this setting is quoted for (what validate and bench time)."""
        arch = model.arch
        return TracedTap(model.eval(), self.input_hw(arch), self.tap_xy(arch), self.window_px(arch))

    @property
    def is_reference(self) -> bool:
        """The reference setting at any precision (what an in-context profile's probe is timed at)."""
        return (self.image_size, self.tap, self.window) == (None, (0.5, 0.5), None)

    def describe(self) -> dict:
        return {"image_size": "resolution-wide 4:3" if self.image_size is None else
                f"{self.image_size[0]}x{self.image_size[1]}",
                "tap": list(self.tap), "window": self.window if self.window is not None else "full",
                "precision": self.precision}


REFERENCE_SETTING = LatencySetting()
