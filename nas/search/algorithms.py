"""Search algorithms over one shared constraint and scoring path (`SearchProblem`).

- `evolution`: Once-for-All's evolutionary search on genomes (`search_spaces/genome.py`) — a
  population of feasible architectures; the best quarter are parents; children are mutations and
  crossovers of parents; the latency constraint is enforced by resampling. Whole generations are
  varied, priced and scored as arrays, so a cheap score (an accuracy predictor) and a per-block
  table run thousands of architectures per second. Generation g draws from `default_rng([seed, g])`.
- `nsga2` (multi-objective: score up, latency down) and `tpe` (score up) run Optuna's samplers with
  the latency constraint set on each trial (`Trial.set_constraint`). Trials are asked in batches of `population` and
  told after the batch is scored, so results do not depend on the number of workers.

The study is the record of a search. The Optuna samplers record every evaluated architecture (user
attributes `arch`, `latency_ms`, `feasible`; an infeasible trial is not scored, its score is -inf).
Evolution evaluates far more architectures than a database takes at its speed (SQLite commits cost
milliseconds each), so it records the ones the result needs — the parents (elite) and the Pareto
front — plus its state (generation, elite genomes, counts) at most every `FLUSH_SECONDS`, at the end
and when interrupted. A resumed evolution continues from the last recorded generation exactly as
the uninterrupted run would.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import optuna

from nas.search.arch_params import arch_params, suggest_arch
from nas.search.scoring import LatencyModel, ScorePool
from search_spaces.common.errors import TraceNASError
from search_spaces.space import ArchConfig, GenomeSpace, genome_space

RANDOM_TRIES = 200  # rounds of random samples before constraint-resampling explores around the smallest member
MAX_TRIES = 5000
FLUSH_SECONDS = 5.0  # evolution writes its state to the study at most this often (and at the end)
STATE_ATTR = "evolution_state"


class SearchError(TraceNASError, ValueError):
    """A search that cannot proceed (no feasible architecture found, incompatible resumed study)."""


@dataclass
class Candidate:
    arch: ArchConfig
    latency_ms: float
    score: float  # -inf when infeasible (not scored)
    feasible: bool


@dataclass
class Outcome:
    """What a search of one target found: the recorded candidates (the best and the Pareto front
    are among them) and the (latency, score) of every evaluated feasible architecture, for the plot."""

    candidates: list[Candidate]
    cloud: np.ndarray  # (n, 2): latency_ms, score
    evaluated: int
    feasible: int


@dataclass
class SearchProblem:
    space: str
    latency: LatencyModel
    budget_ms: float
    pool: ScorePool
    study: optuna.Study
    seed: int
    population: int
    # (architectures proposed since the last call, best feasible candidate so far or None)
    on_progress: Callable[[int, Candidate | None], None] = lambda proposed, best: None

    @property
    def genomes(self) -> GenomeSpace:
        return genome_space(self.space)

    def evaluate(self, archs: list[ArchConfig]) -> list[Candidate]:
        """Latency of every arch, score of the feasible ones (one batch, in order)."""
        latencies = [self.latency(a) for a in archs]
        ok = [lat <= self.budget_ms for lat in latencies]
        scored = iter(self.pool.scores([a for a, f in zip(archs, ok, strict=True) if f]))
        return [Candidate(a, lat, next(scored) if f else -math.inf, f)
                for a, lat, f in zip(archs, latencies, ok, strict=True)]

    def recorded(self) -> list[Candidate]:
        """Completed trials of the study, one per architecture."""
        found = {}
        for trial in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            arch = ArchConfig.from_json(trial.user_attrs["arch"])
            found[arch] = Candidate(arch, trial.user_attrs["latency_ms"], trial.values[0],
                                    trial.user_attrs["feasible"])
        return list(found.values())

    def record(self, candidates: list[Candidate], **extra: object) -> None:
        self.study.add_trials([optuna.trial.create_trial(
            params=params, distributions=dists, values=[c.score], user_attrs=_user_attrs(c, **extra))
            for c in candidates for params, dists in [arch_params(c.arch)]])


def _user_attrs(candidate: Candidate, **extra: object) -> dict:
    return {"arch": candidate.arch.to_json(), "latency_ms": candidate.latency_ms,
            "feasible": candidate.feasible, **extra}


def _front(latency: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Indices of the points no other one beats on both score (higher) and latency (lower), fastest first."""
    order = np.lexsort((-score, latency))
    best_before = np.maximum.accumulate(np.concatenate([[-np.inf], score[order][:-1]]))
    return order[score[order] > best_before]


def _best_first(latency: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Indices by higher score, then lower latency (stable)."""
    return np.lexsort((latency, -score))


# ---------------------------------------------------------------- evolution
@dataclass
class _Members:
    """Architectures as arrays: genomes (with their latent genes), canonical keys, latency, score."""

    genomes: np.ndarray
    keys: list[bytes]
    latency: np.ndarray
    score: np.ndarray

    def take(self, index: np.ndarray) -> _Members:
        return _Members(self.genomes[index], [self.keys[i] for i in index], self.latency[index], self.score[index])

    def __add__(self, other: _Members) -> _Members:
        return _Members(np.concatenate([self.genomes, other.genomes]), self.keys + other.keys,
                        np.concatenate([self.latency, other.latency]), np.concatenate([self.score, other.score]))


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

    def run(self, problem: SearchProblem) -> Outcome:
        space, n = problem.genomes, problem.population
        known: dict[bytes, tuple[float, float]] = {}  # key -> latency, score of every evaluated architecture
        recorded: dict[bytes, np.ndarray] = {}  # key -> canonical genome of the architectures in the study
        for c in problem.recorded():
            genome = space.encode(c.arch)
            key = space.keys(genome)[0]
            known[key], recorded[key] = (c.latency_ms, c.score), genome
        state = problem.study.user_attrs.get(STATE_ATTR)
        evaluated = state["evaluated"] if state else len(known)

        def price(genomes: np.ndarray) -> np.ndarray:
            return problem.latency.of_genomes(space, genomes)

        def score(genomes: np.ndarray, latency: np.ndarray) -> _Members:
            nonlocal evaluated
            keys = space.keys(genomes)
            new = {k: i for i, k in enumerate(keys) if k not in known}
            if new:
                rows = np.fromiter(new.values(), dtype=np.int64, count=len(new))
                for k, i, value in zip(new, rows, problem.pool.scores_of_genomes(space, genomes[rows]), strict=True):
                    known[k] = (float(latency[i]), float(value))
                evaluated += len(new)
            return _Members(genomes, keys, latency, np.array([known[k][1] for k in keys]))

        def candidate(members: _Members, i: int) -> Candidate:
            return Candidate(space.decode(members.genomes[i]), float(members.latency[i]), float(members.score[i]),
                             True)

        def flush(generation: int) -> None:
            for members in (elite, front):
                new = [i for i, k in enumerate(members.keys) if k not in recorded]
                problem.record([candidate(members, i) for i in new], recorded_at_generation=generation)
                recorded.update((members.keys[i], members.genomes[i]) for i in new)
            problem.study.set_user_attr(STATE_ATTR, {"generation": generation, "elite": elite.genomes.tolist(),
                                                     "evaluated": evaluated})

        def advance(population: _Members, proposed: int) -> None:
            nonlocal elite, front
            elite = population.take(_best_first(population.latency, population.score)[:self._parents(n)])
            merged = front + population
            front = merged.take(_front(merged.latency, merged.score))
            problem.on_progress(proposed, candidate(elite, 0))

        def members(genomes: np.ndarray) -> _Members:
            keys = space.keys(genomes)
            return _Members(genomes, keys, np.array([known[k][0] for k in keys]), np.array([known[k][1] for k in keys]))

        front = members(np.zeros((0, len(space)), dtype=np.int64))
        if state:
            elite = members(np.asarray(state["elite"], dtype=np.int64))
            front = members(np.array(list(recorded.values()), dtype=np.int64).reshape(-1, len(space)))
            front = front.take(_front(front.latency, front.score))
            done = state["generation"]
        else:
            rng = np.random.default_rng([problem.seed, 0])
            genomes, latency = self._random_members(problem, price, rng)
            advance(score(genomes, latency), len(genomes))
            done = 0
        flushed, last_flush = (done if state else -1), time.monotonic()
        try:
            for generation in range(done + 1, self.generations + 1):
                rng = np.random.default_rng([problem.seed, generation])
                genomes, latency = self._children(problem, elite, price, rng)
                advance(elite + score(genomes, latency), len(genomes))
                done = generation
                if time.monotonic() - last_flush >= FLUSH_SECONDS:
                    flush(done)
                    flushed, last_flush = done, time.monotonic()
        finally:
            if flushed != done:  # the end, or an interruption: keep the last complete generation
                flush(done)
        cloud = np.array(list(known.values())).reshape(-1, 2)
        return Outcome(problem.recorded(), cloud, evaluated, evaluated)

    def _feasible(self, problem: SearchProblem, count: int, propose: Callable[[int], np.ndarray],
                  price: Callable[[np.ndarray], np.ndarray], tries: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Propose until `count` rows are feasible or `tries` rounds pass: genomes, latency, rows still missing."""
        genomes = np.zeros((count, len(problem.genomes)), dtype=np.int64)
        latency = np.zeros(count)
        missing = np.arange(count)
        for _ in range(tries):
            if not missing.size:
                break
            proposal = propose(missing)
            cost = price(proposal)
            ok = cost <= problem.budget_ms
            genomes[missing[ok]], latency[missing[ok]] = proposal[ok], cost[ok]
            missing = missing[~ok]
        return genomes, latency, missing

    def _random_members(self, problem: SearchProblem, price: Callable, rng: np.random.Generator
                        ) -> tuple[np.ndarray, np.ndarray]:
        space = problem.genomes
        genomes, latency, missing = self._feasible(
            problem, problem.population, lambda rows: space.sample(rng, len(rows)), price, RANDOM_TRIES)
        if missing.size:  # a tight budget: explore around the fastest member, which is feasible
            smallest = space.encode(ArchConfig.smallest(problem.space))
            more, more_latency, still = self._feasible(
                problem, missing.size, lambda rows: space.mutate(np.tile(smallest, (len(rows), 1)), rng,
                                                                 self.mutate_prob * 3), price, MAX_TRIES)
            if still.size:
                raise SearchError(f"no architecture within {problem.budget_ms:g} ms found in {MAX_TRIES} tries")
            genomes[missing], latency[missing] = more, more_latency
        return genomes, latency

    def _children(self, problem: SearchProblem, parents: _Members, price: Callable, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Mutations of random parents, then crossovers of two random parents (mutated too), all feasible."""
        space, n_parents = problem.genomes, len(parents.keys)
        count = problem.population - n_parents
        n_mutations = min(count, round(problem.population * self.mutation_ratio))

        def propose(rows: np.ndarray) -> np.ndarray:
            first = parents.genomes[rng.integers(n_parents, size=rows.size)]
            second = parents.genomes[rng.integers(n_parents, size=rows.size)]
            crossed = np.where((rows >= n_mutations)[:, None], space.crossover(first, second, rng), first)
            return space.mutate(crossed, rng, self.mutate_prob)

        genomes, latency, missing = self._feasible(problem, count, propose, price, MAX_TRIES)
        if missing.size:
            raise SearchError(f"no architecture within {problem.budget_ms:g} ms found in {MAX_TRIES} tries")
        return genomes, latency


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

    def run(self, problem: SearchProblem) -> Outcome:
        study = problem.study
        for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(stale.number, state=optuna.trial.TrialState.FAIL)  # asked by a run that was killed
        complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        # a resumed study continues with a fresh, still seed-determined random stream
        study.sampler = self.sampler(problem, problem.seed + complete)
        best = max((c for c in problem.recorded() if c.feasible), key=lambda c: c.score, default=None)
        while complete < self.trials:
            batch = [study.ask() for _ in range(min(problem.population, self.trials - complete))]
            try:
                candidates = problem.evaluate([suggest_arch(t, problem.space) for t in batch])
            except BaseException:  # interrupted (Ctrl-C included): no trial stays RUNNING in the study
                for trial in batch:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise
            for trial, c in zip(batch, candidates, strict=True):
                for name, value in _user_attrs(c).items():
                    trial.set_user_attr(name, value)
                trial.set_constraint("latency_ms_over_budget", c.latency_ms - problem.budget_ms)  # feasible <= 0
                study.tell(trial, [c.score, c.latency_ms][:len(self.directions)])
                if c.feasible and (best is None or c.score > best.score):
                    best = c
            complete += len(batch)
            problem.on_progress(len(batch), best)
        candidates = problem.recorded()
        feasible = [c for c in candidates if c.feasible]
        return Outcome(candidates, np.array([(c.latency_ms, c.score) for c in feasible]).reshape(-1, 2),
                       len(candidates), len(feasible))
