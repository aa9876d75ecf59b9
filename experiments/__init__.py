"""Shipped experiment configs (YAML files in this folder, installed as package data)."""

from importlib.resources import files
from pathlib import Path


def shipped_configs() -> dict[str, Path]:
    """Name -> path of every experiment config that ships with the package."""
    return {p.stem: Path(str(p)) for p in files(__name__).iterdir() if p.name.endswith(".yaml")}
