"""Pluggable architecture scores. Every scorer is named in the search output, with its kind:

- `proxy` (default): a published training-free proxy on real photos (`naswot`), no weights needed;
- `supernet`: mIoU-T of the subnet under trained shared weights on validation data (`--supernet`);
- `predictor`: a regression model fitted on (arch encoding, supernet score) pairs (`--predictor`).

A scorer is rebuilt from its `recipe()` (a plain dict) wherever it runs, e.g. in a Ray worker.
"""

from __future__ import annotations

from typing import Protocol

from nas.search.scores.naswot import NaswotScorer
from nas.search.scores.predictor import PredictorScorer
from nas.search.scores.supernet import SupernetScorer
from search_spaces.common.errors import InvalidValueError
from search_spaces.space import ArchConfig


class Scorer(Protocol):
    name: str
    kind: str  # proxy | supernet | predictor
    description: str

    def scores(self, archs: list[ArchConfig]) -> list[float]: ...

    def recipe(self) -> dict: ...


def build_scorer(recipe: dict) -> Scorer:
    """The scorer a recipe describes: {"name": ..., **its arguments}."""
    scorers: dict[str, type] = {s.name: s for s in (NaswotScorer, SupernetScorer, PredictorScorer)}
    args = dict(recipe)
    name = args.pop("name", None)
    if name not in scorers:
        raise InvalidValueError(f"unknown scorer {name!r}; available: {', '.join(sorted(scorers))}")
    return scorers[name](**args)
