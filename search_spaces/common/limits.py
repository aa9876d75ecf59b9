"""Input limits in one place, and the readers that enforce them: images (pixel count, any bit depth),
JSON (nesting, number range) and YAML (no aliases). Each refusal is one `TraceNASError` line, of
the caller's own type where it passes one."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import yaml

from search_spaces.common.errors import InputFileError, InvalidValueError, TraceNASError

MAX_IMAGE_PIXELS = 64 * 2**20  # 67 MP: above a phone's 64 MP photo; a 10000 x 10000 image is refused
MAX_JSON_DEPTH = 64  # tables, results and requests nest a few levels
MAX_JSON_NUMBER_DIGITS = 30  # an integer literal longer than this is no latency, count or size
MAX_BATCH_SIZE = 4096
MAX_CLICKS = 64  # per request: RITM's protocol stops at 20


class InputLimitError(InvalidValueError):
    """An input over one of the limits above (a decompression bomb, a deeply nested JSON, YAML aliases)."""


def _bit_depth_to_uint8(image: object) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a PIL image of any mode, 16-bit and float data scaled to 0..255, not clipped."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        if mode == "F" and values.max(initial=0) <= 1.0:
            top = 1.0
        grey = np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.array(image.convert("RGB"))


def read_image(source: str | Path | bytes, what: str = "image", max_pixels: int = MAX_IMAGE_PIXELS,
               scale_bit_depth: bool = True) -> np.ndarray:
    """An image file or its bytes as (H, W, 3) uint8 RGB. Its size is checked from the header before
    decoding; 16-bit greyscale is scaled to 8 bits (`scale_bit_depth`; masks keep their labels)."""
    from PIL import Image, UnidentifiedImageError

    name = "uploaded image" if isinstance(source, bytes) else str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            pixels = image.width * image.height
            if pixels > max_pixels:
                raise InputLimitError(f"{name}: {image.width}x{image.height} is {pixels / 1e6:.0f} MP; the limit is "
                                      f"{max_pixels / 1e6:.0f} MP")
            image.load()
            return _bit_depth_to_uint8(image) if scale_bit_depth else np.array(image.convert("RGB"))
    except FileNotFoundError:
        raise InputFileError(f"{name}: no such {what}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise InvalidValueError(f"{name}: not a readable {what} ({type(err).__name__})") from None


class _OverLimit(Exception):
    """Raised inside the JSON decoder's hooks; reported as the caller's error type."""


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_NUMBER_DIGITS:
        raise _OverLimit(f"an integer of {len(text)} digits")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _OverLimit(f"the number {text[:20]} is out of range")
    return value


def _refuse_constant(name: str) -> float:
    raise _OverLimit(f"{name} is not a number JSON allows")


def _depth(value: object) -> int:
    depth, level = 0, [value]
    while level:
        depth += 1
        level = [v for x in level if isinstance(x, (dict, list)) for v in (x.values() if isinstance(x, dict) else x)]
    return depth


def parse_json(text: str | bytes, source: str, error: type[TraceNASError] = InvalidValueError) -> object:
    """JSON with bounded nesting and finite numbers; anything else is one `error` line naming `source`."""
    try:
        value = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_refuse_constant)
    except RecursionError:
        raise error(f"{source}: JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except _OverLimit as err:
        raise error(f"{source}: {err}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{source}: not valid JSON ({str(err).splitlines()[0]})") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise error(f"{source}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def parse_yaml(text: str, source: str, error: type[TraceNASError] = InvalidValueError) -> object:
    """Safe YAML without aliases (a few bytes of `&a [*a, *a, ...]` would expand to gigabytes)."""
    try:
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise error(f"{source}: YAML aliases (*name) are not allowed")
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise error(f"{source}: not valid YAML ({str(err).splitlines()[0]})") from None
