"""Student and supernet checkpoints: weights with what builds them, written atomically, read safely."""

from __future__ import annotations

from pathlib import Path

import torch

from search_spaces.common.errors import TraceNASError
from search_spaces.common.files import atomic_write
from search_spaces.space import ArchConfig, ArchConfigError
from search_spaces.students.student import TraceNetStudent
from search_spaces.students.supernet import TraceNetSupernet

FORMAT = "tracenas-student"
VERSION = 1


class CheckpointError(TraceNASError, ValueError):
    """A checkpoint that is missing, corrupt, of another format or does not match its architecture."""


def save_student(model: TraceNetStudent, path: str | Path, **extra: object) -> Path:
    """Write `{format, version, arch, state_dict, **extra}`; a crash mid-write leaves no partial file."""
    payload = {"format": FORMAT, "version": VERSION, "arch": model.arch.to_dict(),
               "state_dict": model.state_dict(), **extra}
    return atomic_write(path, lambda f: torch.save(payload, f))


def read_payload(path: str | Path, fmt: str, what: str, map_location: str | torch.device = "cpu",
                 version: int = VERSION) -> dict:
    """A TraceNAS file's dict, read with weights_only; CheckpointError names the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}; only tensors and plain "
                              "data are read)") from None
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise CheckpointError(f"{path}: not a TraceNAS {what} checkpoint (format must be '{fmt}')")
    if payload.get("version") != version:
        raise CheckpointError(f"{path}: {what} version {payload.get('version')} is not supported "
                              f"(expected {version})")
    return payload


def load_weights(model: torch.nn.Module, state: object, path: str | Path, what: str) -> None:
    """`model.load_state_dict(state)`, or one CheckpointError line that counts what does not match."""
    expected = model.state_dict()
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds no state dict for the {what}")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and getattr(state[k], "shape", None) != expected[k].shape]
    if missing or unexpected or reshaped:
        first = (missing or unexpected or reshaped)[0]
        raise CheckpointError(f"{path}: weights do not match the {what}: {len(missing)} missing, {len(unexpected)} "
                              f"unexpected, {len(reshaped)} of another shape (first: {first})")
    model.load_state_dict(state)


def load_student(path: str | Path, map_location: str | torch.device = "cpu") -> TraceNetStudent:
    payload = read_payload(path, FORMAT, "student", map_location)
    try:
        model = TraceNetStudent(ArchConfig.from_dict(payload["arch"]))
    except (KeyError, ArchConfigError) as err:
        raise CheckpointError(f"{path}: no valid architecture stored ({str(err).splitlines()[0]})") from None
    load_weights(model, payload.get("state_dict"), path, "stored architecture")
    return model.eval()


SUPERNET_FORMAT = "tracenas-supernet"


def save_supernet(supernet: TraceNetSupernet, path: str | Path, **extra: object) -> Path:
    """Write `{format, version, space, state_dict, **extra}` atomically (the space must be registered to load)."""
    payload = {"format": SUPERNET_FORMAT, "version": VERSION, "space": supernet.spec.name,
               "state_dict": supernet.state_dict(), **extra}
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_supernet(path: str | Path, map_location: str | torch.device = "cpu") -> TraceNetSupernet:
    payload = read_payload(path, SUPERNET_FORMAT, "supernet", map_location)
    try:
        supernet = TraceNetSupernet(payload["space"])
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{path}: no usable space stored ({str(err).splitlines()[0]})") from None
    load_weights(supernet, payload.get("state_dict"), path, f"supernet of space {payload['space']!r}")
    return supernet.eval()
