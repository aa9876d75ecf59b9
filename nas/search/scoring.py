"""Candidate evaluation shared by every search algorithm: latency under a table (the constraint) and
the score, each memoised. Scores run in this process or on Ray actors (`workers > 1`); a batch is
always scored as a whole and returned in order, so results do not depend on the number of workers.
"""

from __future__ import annotations

import os
from contextlib import ExitStack

import numpy as np
import torch

from nas.latency.predict import predict_latency
from nas.latency.setting import LatencySetting
from nas.latency.table import LatencyTable
from nas.search.scores import build_scorer
from search_spaces.common.resources import ray_session
from search_spaces.space import ArchConfig, GenomeSpace


class LatencyModel:
    """Predicted latency (ms) of architectures on one table at one reference setting."""

    def __init__(self, table: LatencyTable, setting: LatencySetting):
        self.table, self.setting = table, setting
        self._cache: dict[ArchConfig, float] = {}
        self._by_key: dict[tuple[str, bytes], float] = {}

    def __call__(self, arch: ArchConfig) -> float:
        if arch not in self._cache:
            self._cache[arch] = predict_latency(arch, self.table, self.setting).latency_ms
        return self._cache[arch]

    def of_genomes(self, space: GenomeSpace, genomes: np.ndarray) -> np.ndarray:
        """Latencies of a batch of genomes (memoised by architecture, decoded only when new)."""
        out = np.empty(len(genomes))
        for i, (key, genome) in enumerate(zip(space.keys(genomes), genomes, strict=True)):
            key = (space.spec.name, key)
            if key not in self._by_key:
                self._by_key[key] = self(space.decode(genome))
            out[i] = self._by_key[key]
        return out


class _ScoreWorker:
    def __init__(self, recipe: dict, threads: int):
        torch.set_num_threads(threads)
        self.scorer = build_scorer(recipe)

    def score(self, arch: ArchConfig) -> float:
        return self.scorer.scores([arch])[0]


class ScorePool:
    """Scores architectures with the scorer `recipe` describes; memoised across targets and batches."""

    def __init__(self, recipe: dict, workers: int = 1, ray_address: str | None = None):
        self.scorer = build_scorer(recipe)
        self.workers = workers
        self._cache: dict[ArchConfig, float] = {}
        self._pool = None
        self._resources = ExitStack()  # the Ray session, if this pool started one
        if workers > 1 or ray_address:
            import ray
            from ray.util import ActorPool

            self._resources.enter_context(ray_session(ray_address, log_to_driver=False, configure_logging=False))
            threads = max(1, (os.cpu_count() or 1) // workers)
            actor = ray.remote(num_cpus=0)(_ScoreWorker)  # CPU threads are set explicitly per worker
            self._pool = ActorPool([actor.remote(recipe, threads) for _ in range(workers)])

    def scores(self, archs: list[ArchConfig]) -> list[float]:
        todo = list(dict.fromkeys(a for a in archs if a not in self._cache))
        if self._pool is None:
            self._cache.update(zip(todo, self.scorer.scores(todo), strict=True))
        else:
            for arch, value in zip(todo, self._pool.map(lambda w, a: w.score.remote(a), todo), strict=True):
                self._cache[arch] = value
        return [self._cache[a] for a in archs]

    def scores_of_genomes(self, space: GenomeSpace, genomes: np.ndarray) -> np.ndarray:
        """Scores of a batch of genomes: in one vectorised call when the scorer takes genomes of this space
        (an accuracy predictor), otherwise architecture by architecture as `scores` does."""
        if getattr(self.scorer, "space", None) == space.spec.name and hasattr(self.scorer, "scores_of_genomes"):
            return self.scorer.scores_of_genomes(genomes)
        return np.asarray(self.scores([space.decode(g) for g in genomes]), dtype=float)

    def close(self) -> None:
        """Release the workers; a Ray session the caller started keeps running."""
        self._pool = None
        self._resources.close()
