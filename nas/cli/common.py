"""Argument helpers shared by the `nas` subcommands."""

from __future__ import annotations

import argparse

from search_spaces.common.files import read_text
from search_spaces.space import DEFAULT_SPACE, ArchConfig, ArchConfigError, list_spaces


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is 1..65535, got {value}")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


def add_space_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--space", default=DEFAULT_SPACE,
                        help=f"search space name (default {DEFAULT_SPACE}; choices: {', '.join(list_spaces())})")


def read_arch(path: str) -> ArchConfig:
    """An architecture from a JSON file: a bare ArchConfig or any result file with an 'arch' field."""
    try:
        return ArchConfig.from_json(read_text(path, "architecture file"))
    except ArchConfigError as err:
        raise ArchConfigError(f"{path}: {err}") from None


def window_fraction(text: str) -> float | None:
    """An output window as a fraction of the resolution, or 'full' (None)."""
    if text == "full":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction of the resolution or 'full', got {text!r}") from None


def fraction_pair(text: str) -> tuple[float, float]:
    """'X,Y' fractions of the image (e.g. a tap position)."""
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y fractions of the image, got {text!r}") from None
    return x, y
