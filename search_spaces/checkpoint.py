"""Student checkpoints: the architecture next to its weights, written atomically, read safely."""

from __future__ import annotations

from pathlib import Path

import torch

from search_spaces.arch_config import ArchConfig, ArchConfigError
from search_spaces.files import atomic_write
from search_spaces.student import TraceNetStudent

FORMAT = "tracenas-student"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, of another format or does not match its architecture."""


def save_student(model: TraceNetStudent, path: str | Path, **extra: object) -> Path:
    """Write `{format, version, arch, state_dict, **extra}`; a crash mid-write leaves no partial file."""
    payload = {"format": FORMAT, "version": VERSION, "arch": model.arch.to_dict(),
               "state_dict": model.state_dict(), **extra}
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_student(path: str | Path, map_location: str | torch.device = "cpu") -> TraceNetStudent:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a TraceNAS student checkpoint (format must be '{FORMAT}')")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')} is not supported "
                              f"(expected {VERSION})")
    try:
        model = TraceNetStudent(ArchConfig.from_dict(payload["arch"]))
        model.load_state_dict(payload["state_dict"])
    except (KeyError, ArchConfigError, RuntimeError) as err:
        raise CheckpointError(f"{path}: weights do not match the stored architecture ({err})") from None
    return model.eval()
