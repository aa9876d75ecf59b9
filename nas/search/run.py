"""Latency-aware architecture search: settings -> (table, constraint, scorer) -> study -> result files.

The public surface is `SearchSettings` and `run_search`; `nas search` is a thin CLI over them.
One run searches one or several targets; each target has its own study in the run's `study.db`
(an Optuna RDB storage: optuna-dashboard opens it, `resume=True` continues it) and its own result
files. Scores do not depend on the target, so several targets share one score cache.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
from tqdm import tqdm

from nas import __version__
from nas.latency.table import LatencyTable, resolve_target
from nas.search.algorithms import Candidate, SearchError, SearchProblem
from nas.search.report import pareto_front, write_target_result
from nas.search.scoring import LatencyModel, ScorePool
from nas.search.settings import CONFIG_FILE, LOG_FILE, STUDY_FILE, SearchSettings
from search_spaces.common.errors import InvalidValueError, OutputError
from search_spaces.common.files import atomic_write, exclusive
from search_spaces.space import ArchConfig


class InfeasibleBudgetError(SearchError):
    """A budget below the fastest member of the space on a target."""


@dataclass
class TargetResult:
    target: str
    budget_ms: float
    best: Candidate
    front: list[Candidate]
    evaluated: int
    feasible: int
    files: dict[str, Path]


def table_error(table: LatencyTable) -> dict:
    """What is known about a table's accuracy (the calibration error of calibrated tables)."""
    calibration = table.calibration or {}
    return {"name": table.name, "provenance": table.provenance, "runtime": table.device.get("runtime"),
            "threads": table.device.get("threads"), "error_mape": calibration.get("loo_mape"),
            "error_kind": "leave-one-out MAPE of the calibration (a fraction)" if "loo_mape" in calibration
            else "not stored in the table (measure it with `nas latency validate`)"}


def check_budgets(settings: SearchSettings) -> list[tuple[str, LatencyTable, LatencyModel, float]]:
    """Resolve every target and reject budgets below the fastest member of the space."""
    resolved = []
    for i, target in enumerate(settings.targets):
        table = resolve_target(target)
        latency = LatencyModel(table, settings.setting())
        lowest = latency(ArchConfig.smallest(settings.space))
        budget = settings.budget(i)
        if budget < lowest:
            raise InfeasibleBudgetError(
                f"budget {budget:g} ms is below the lowest latency achievable on '{target}': {lowest:.3f} ms "
                f"(the fastest member of space '{settings.space}', every choice at its minimum)")
        resolved.append((target, table, latency, budget))
    return resolved


def _storage(url: str) -> optuna.storages.RDBStorage:
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as err:  # SQLAlchemy raises its own types for bad URLs and unreachable servers
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise InvalidValueError(f"storage {url!r} is not a usable Optuna database ({type(err).__name__}: "
                                f"{first[:160]})") from None


def run_search(settings: SearchSettings, out_dir: str | Path, resume: bool = False, progress: bool = True,
               on_best: Callable[[str, Candidate], None] | None = None) -> list[TargetResult]:
    """Search every target of `settings`; write the result files under `out_dir` (see `nas search --help`).

    `on_best(target, candidate)` is called whenever a target's best feasible candidate improves."""
    out = Path(out_dir)
    targets = check_budgets(settings)  # before anything is written
    with exclusive(out):  # one process writes a run folder at a time
        if not resume and (out / CONFIG_FILE).exists():
            raise OutputError(f"{out} already holds a search; pass it to --resume or choose another --out")
        storage = _storage(settings.storage) if settings.storage else None
        pool = ScorePool(settings.scorer, settings.workers, settings.ray_address)
        try:
            out.mkdir(parents=True, exist_ok=True)
            storage = storage or _storage(f"sqlite:///{(out / STUDY_FILE).resolve()}")
            atomic_write(out / CONFIG_FILE, lambda f: f.write(json.dumps({
                "settings": settings.to_dict(), "tool_version": __version__, "optuna_version": optuna.__version__,
                "score": {"name": pool.scorer.name, "kind": pool.scorer.kind, "description": pool.scorer.description},
                "latency_setting": settings.setting().describe()}, indent=1).encode()))
            results = []
            with open(out / LOG_FILE, "a") as log:
                log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {'resume' if resume else 'start'} "
                          f"{json.dumps(settings.to_dict())}\n")
                for target, table, latency, budget in targets:
                    results.append(_search_target(settings, target, table, latency, budget, storage, pool,
                                                  out if len(targets) == 1 else out / Path(target).stem, log,
                                                  progress, on_best or (lambda target, candidate: None)))
        finally:
            pool.close()
    return results


def _search_target(settings: SearchSettings, target: str, table: LatencyTable, latency: LatencyModel,
                   budget: float, storage: optuna.storages.BaseStorage, pool: ScorePool, out: Path,
                   log, progress: bool, on_best: Callable[[str, Candidate], None]) -> TargetResult:
    algorithm = settings.algorithm()
    study = optuna.create_study(storage=storage, study_name=target, directions=list(algorithm.directions),
                                load_if_exists=True)
    if study.user_attrs and (study.user_attrs.get("algo") != settings.algo
                             or study.user_attrs.get("budget_ms") != budget):
        raise SearchError(f"study '{target}' was run with {study.user_attrs}; it cannot be resumed "
                          f"with algo={settings.algo}, budget_ms={budget}")
    for name, value in {"algo": settings.algo, "budget_ms": budget, "space": settings.space,
                        "seed": settings.seed, "score": settings.scorer}.items():
        study.set_user_attr(name, value)
    bar = tqdm(total=algorithm.expected_trials(settings.population), desc=f"search {target} ≤{budget:g} ms",
               unit="arch", disable=not progress, dynamic_ncols=True)
    best: list[Candidate] = []

    def on_progress(proposed: int, candidate: Candidate | None) -> None:
        bar.update(proposed)
        if candidate is not None and (not best or candidate.score > best[0].score):
            best[:] = [candidate]
            bar.set_postfix(best=f"{candidate.score:.2f}", ms=f"{candidate.latency_ms:.2f}")
            log.write(f"{time.strftime('%H:%M:%S')} {target}: new best score {candidate.score:.4f} at "
                      f"{candidate.latency_ms:.3f} ms: {candidate.arch.to_json()}\n")
            log.flush()
            on_best(target, candidate)

    problem = SearchProblem(settings.space, latency, budget, pool, study, settings.seed, settings.population,
                            on_progress)
    try:
        outcome = algorithm.run(problem)
    finally:
        bar.close()
    feasible = [c for c in outcome.candidates if c.feasible]
    if not feasible:
        raise SearchError(f"no feasible architecture was evaluated for '{target}' at {budget:g} ms")
    front = pareto_front(feasible)
    best_candidate = min(feasible, key=lambda c: (-c.score, c.latency_ms))
    scorer = pool.scorer
    summary = {
        "arch": best_candidate.arch.to_dict(), "target": target, "budget_ms": budget,
        "predicted_latency_ms": best_candidate.latency_ms, "score": best_candidate.score,
        "score_kind": scorer.kind, "score_name": scorer.name, "score_description": scorer.description,
        "table": table_error(table), "seed": settings.seed, "algo": settings.algo, "space": settings.space,
        "latency_setting": settings.setting().describe() | {
            "input_hw": list(settings.setting().input_hw(best_candidate.arch)),
            "tap_xy": list(settings.setting().tap_xy(best_candidate.arch))},
        "evaluated": outcome.evaluated,
        "feasible": outcome.feasible, "pareto_size": len(front), "tool_version": __version__,
    }
    fixed = []
    if settings.include_fixed:
        from nas.search.fixed_baselines import evaluate_fixed

        fixed = evaluate_fixed(best_candidate.arch, latency, budget, pool)
        scored = [f for f in fixed if f.score is not None]
        best_fixed = max(scored, key=lambda f: f.score, default=None)
        summary["fixed"] = [f.to_dict() for f in fixed]
        summary["best_fixed"] = None if best_fixed is None else best_fixed.to_dict() | {
            "searched_minus_fixed_score": best_candidate.score - best_fixed.score}
    files = write_target_result(out, summary, outcome.cloud, front, budget, fixed)
    log.write(f"{time.strftime('%H:%M:%S')} {target}: done, {outcome.evaluated} evaluated, best "
              f"{best_candidate.score:.4f} at {best_candidate.latency_ms:.3f} ms\n")
    return TargetResult(target, budget, best_candidate, front, outcome.evaluated, outcome.feasible, files)
