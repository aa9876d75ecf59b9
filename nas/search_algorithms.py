"""Search algorithms over one shared constraint and scoring path (`SearchProblem.evaluate`).

- `evolution`: Once-for-All's evolutionary search — a population of feasible architectures; the best
  quarter are parents; children are mutations and crossovers of parents; the latency constraint is
  enforced by resampling. Generation g draws from `default_rng([seed, g])`, so a run is a pure
  function of its seed and a resumed run replays the finished generations from the stored trials.
- `nsga2` (multi-objective: score up, latency down) and `tpe` (score up) run Optuna's samplers with
  the latency constraint set on each trial (`Trial.set_constraint`). Trials are asked in batches of `population` and
  told after the batch is scored, so results do not depend on the number of workers.

Every evaluated architecture is an Optuna trial in the run's RDB storage (user attributes `arch`,
`latency_ms`, `feasible`), whatever the algorithm: the study is the single record of a search.
An infeasible trial proposed by a sampler is not scored; its score is recorded as -inf.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import optuna

from nas.arch_params import arch_params, suggest_arch
from nas.evaluation import LatencyModel, ScorePool
from search_spaces.arch_config import ArchConfig

RANDOM_TRIES = 200  # random samples before constraint-resampling falls back to mutating the smallest member
MAX_TRIES = 5000


class SearchError(ValueError):
    """A search that cannot proceed (no feasible architecture found, incompatible resumed study)."""


@dataclass
class Candidate:
    arch: ArchConfig
    latency_ms: float
    score: float  # -inf when infeasible (not scored)
    feasible: bool


@dataclass
class SearchProblem:
    space: str
    latency: LatencyModel
    budget_ms: float
    pool: ScorePool
    study: optuna.Study
    seed: int
    population: int
    on_scored: Callable[[Candidate], None] = lambda candidate: None

    def feasible(self, arch: ArchConfig) -> bool:
        return self.latency(arch) <= self.budget_ms

    def evaluate(self, archs: list[ArchConfig]) -> list[Candidate]:
        """Latency of every arch, score of the feasible ones (one batch, in order)."""
        latencies = [self.latency(a) for a in archs]
        ok = [lat <= self.budget_ms for lat in latencies]
        scored = iter(self.pool.scores([a for a, f in zip(archs, ok, strict=True) if f]))
        return [Candidate(a, lat, next(scored) if f else -math.inf, f)
                for a, lat, f in zip(archs, latencies, ok, strict=True)]

    def recorded(self) -> dict[ArchConfig, Candidate]:
        """Completed trials of the study, by architecture (used to resume without re-scoring)."""
        found = {}
        for trial in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            arch = ArchConfig.from_json(trial.user_attrs["arch"])
            found[arch] = Candidate(arch, trial.user_attrs["latency_ms"], trial.values[0],
                                    trial.user_attrs["feasible"])
        return found


def _user_attrs(candidate: Candidate, **extra: object) -> dict:
    return {"arch": candidate.arch.to_json(), "latency_ms": candidate.latency_ms,
            "feasible": candidate.feasible, **extra}


def _rank(candidates: list[Candidate]) -> list[Candidate]:
    """Best first: higher score, then lower latency."""
    return sorted(candidates, key=lambda c: (-c.score, c.latency_ms))


# ---------------------------------------------------------------- evolution
class Evolution:
    directions = ("maximize",)

    def __init__(self, generations: int, parent_ratio: float = 0.25, mutation_ratio: float = 0.5,
                 mutate_prob: float = 0.1):
        self.generations, self.parent_ratio = generations, parent_ratio
        self.mutation_ratio, self.mutate_prob = mutation_ratio, mutate_prob

    def expected_trials(self, population: int) -> int:
        return population + self.generations * (population - self._parents(population))

    def _parents(self, population: int) -> int:
        return max(2, round(population * self.parent_ratio))

    def run(self, problem: SearchProblem) -> None:
        done = problem.recorded()
        for candidate in done.values():
            problem.latency.remember(candidate.arch, candidate.latency_ms)
            problem.pool.remember(candidate.arch, candidate.score)
        smallest = ArchConfig.smallest(problem.space)

        def resample(propose: Callable[[], ArchConfig]) -> ArchConfig:
            for _ in range(MAX_TRIES):
                arch = propose()
                if problem.feasible(arch):
                    return arch
            raise SearchError(f"no architecture within {problem.budget_ms:g} ms found in {MAX_TRIES} tries")

        def random_member(rng: np.random.Generator) -> ArchConfig:
            for _ in range(RANDOM_TRIES):
                arch = ArchConfig.sample(rng, problem.space)
                if problem.feasible(arch):
                    return arch
            # a tight budget: explore around the fastest member, which is feasible
            return resample(lambda: smallest.mutate(rng, self.mutate_prob * 3))

        def evaluate(archs: list[ArchConfig], generation: int) -> list[Candidate]:
            candidates = problem.evaluate(archs)
            for c in candidates:
                if c.arch not in done:
                    done[c.arch] = c
                    params, dists = arch_params(c.arch)
                    problem.study.add_trial(optuna.trial.create_trial(
                        params=params, distributions=dists, values=[c.score],
                        user_attrs=_user_attrs(c, generation=generation)))
                    problem.on_scored(c)
            return candidates

        n = problem.population
        rng = np.random.default_rng([problem.seed, 0])
        population = evaluate([random_member(rng) for _ in range(n)], 0)
        for generation in range(1, self.generations + 1):
            rng = np.random.default_rng([problem.seed, generation])
            parents = _rank(population)[:self._parents(n)]
            population = parents + evaluate(self._children(parents, n, rng, resample), generation)

    def _children(self, parents: list[Candidate], population: int, rng: np.random.Generator,
                  resample: Callable[[Callable[[], ArchConfig]], ArchConfig]) -> list[ArchConfig]:
        """Mutations of random parents, then crossovers of two random parents (mutated too), all feasible."""

        def pick() -> ArchConfig:
            return parents[int(rng.integers(len(parents)))].arch

        n_mutations = round(population * self.mutation_ratio)
        children = [resample(lambda: pick().mutate(rng, self.mutate_prob)) for _ in range(n_mutations)]
        children += [resample(lambda: pick().crossover(pick(), rng).mutate(rng, self.mutate_prob))
                     for _ in range(population - len(parents) - n_mutations)]
        return children


# ---------------------------------------------------------------- Optuna samplers
class OptunaSearch:
    def __init__(self, sampler: str, trials: int):
        self.sampler_name, self.trials = sampler, trials
        self.directions = ("maximize", "minimize") if sampler == "nsga2" else ("maximize",)

    def expected_trials(self, population: int) -> int:
        return self.trials

    def sampler(self, problem: SearchProblem, seed: int) -> optuna.samplers.BaseSampler:
        if self.sampler_name == "nsga2":
            return optuna.samplers.NSGAIISampler(population_size=problem.population, seed=seed)
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=problem.population)

    def run(self, problem: SearchProblem) -> None:
        study = problem.study
        complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        # a resumed study continues with a fresh, still seed-determined random stream
        study.sampler = self.sampler(problem, problem.seed + complete)
        while complete < self.trials:
            batch = [study.ask() for _ in range(min(problem.population, self.trials - complete))]
            candidates = problem.evaluate([suggest_arch(t, problem.space) for t in batch])
            for trial, c in zip(batch, candidates, strict=True):
                for name, value in _user_attrs(c).items():
                    trial.set_user_attr(name, value)
                trial.set_constraint("latency_ms_over_budget", c.latency_ms - problem.budget_ms)  # feasible <= 0
                study.tell(trial, [c.score, c.latency_ms][:len(self.directions)])
                problem.on_scored(c)
            complete += len(batch)
