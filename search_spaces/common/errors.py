"""The one base class of every error a user can cause (a bad name, value, file or request).

The `nas` CLI prints a `TraceNASError` as one line and exits 2; anything else is a bug and keeps its
traceback. Each module raises its own subclass (`ArchConfigError`, `LatencyTableError`, ...); the
generic ones below serve values and files that belong to no single module.
"""

from __future__ import annotations


class TraceNASError(Exception):
    """Base of every error caused by input: catch this to handle all of them."""


class InvalidValueError(TraceNASError, ValueError):
    """A value outside its allowed range or format (a budget, a count, a fraction, a click)."""


class InputFileError(TraceNASError, OSError):
    """A file the user named is missing, unreadable or not text."""


class OutputError(TraceNASError, OSError):
    """An output that cannot be written, or that already holds another run."""
