"""Latency-aware architecture search: settings -> (table, constraint, scorer) -> study -> result files.

The public surface is `SearchSettings` and `run_search`; `nas search` is a thin CLI over them.
One run searches one or several targets; each target has its own study in the run's `study.db`
(an Optuna RDB storage: optuna-dashboard opens it, `resume=True` continues it) and its own result
files. Scores do not depend on the target, so several targets share one score cache.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import optuna
from tqdm import tqdm

from nas import __version__
from nas.evaluation import LatencyModel, ScorePool
from nas.latency_setting import LatencySetting
from nas.latency_table import LatencyTable, resolve_target
from nas.search_algorithms import Candidate, Evolution, OptunaSearch, SearchError, SearchProblem
from nas.search_report import pareto_front, write_target_result
from search_spaces.arch_config import ArchConfig
from search_spaces.files import atomic_write
from search_spaces.space import DEFAULT_SPACE, get_space

ALGORITHMS = ("evolution", "nsga2", "tpe")
CONFIG_FILE, LOG_FILE, STUDY_FILE = "search_config.json", "search.log", "study.db"
_BUDGET_RE = re.compile(r"^\s*(?P<value>[0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(?P<unit>ms|s)?\s*$", re.IGNORECASE)


class InfeasibleBudgetError(SearchError):
    """A budget below the fastest member of the space on a target."""


def parse_budget(text: str) -> float:
    """'5ms', '5' (milliseconds) or '0.005s' -> 5.0 (milliseconds)."""
    match = _BUDGET_RE.match(str(text))
    if not match:
        raise ValueError(f"budget {text!r} must be a latency like 5ms, 5 (ms) or 0.005s")
    value = float(match["value"]) * (1000.0 if (match["unit"] or "ms").lower() == "s" else 1.0)
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"budget {text!r} must be positive")
    return value


@dataclass(frozen=True)
class SearchSettings:
    targets: tuple[str, ...]
    budgets_ms: tuple[float, ...]
    algo: str = "evolution"
    space: str = DEFAULT_SPACE
    seed: int = 0
    population: int = 16  # evolution's population; the batch size of the Optuna samplers
    generations: int = 10  # evolution
    trials: int = 128  # nsga2 / tpe: architectures evaluated per target
    scorer: dict = field(default_factory=lambda: {"name": "naswot"})
    image_size: tuple[int, int] | None = None
    tap: tuple[float, float] = (0.5, 0.5)
    window: float | None = 0.5
    workers: int = 1
    ray_address: str | None = None
    storage: str | None = None  # Optuna RDB URL; None: sqlite study.db in the run directory
    include_fixed: bool = False  # also price and score the hand-designed backbones (nas/search_fixed.py)

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "budgets_ms", tuple(float(b) for b in self.budgets_ms))
        object.__setattr__(self, "tap", tuple(self.tap))
        if self.image_size is not None:
            object.__setattr__(self, "image_size", tuple(self.image_size))
        if not self.targets:
            raise ValueError("at least one target is required")
        if len(self.budgets_ms) not in (1, len(self.targets)):
            raise ValueError(f"give one budget, or one per target ({len(self.targets)} targets, "
                             f"{len(self.budgets_ms)} budgets)")
        if self.algo not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {self.algo!r}; choose from {', '.join(ALGORITHMS)}")
        get_space(self.space)
        if self.population < 4:
            raise ValueError(f"population must be at least 4, got {self.population}")
        self.setting()  # validates tap and window

    def budget(self, index: int) -> float:
        return self.budgets_ms[index if len(self.budgets_ms) > 1 else 0]

    def setting(self) -> LatencySetting:
        return LatencySetting(image_size=self.image_size, tap=self.tap, window=self.window)

    def algorithm(self) -> Evolution | OptunaSearch:
        return Evolution(self.generations) if self.algo == "evolution" else OptunaSearch(self.algo, self.trials)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SearchSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown search setting(s) {unknown}")
        return cls(**data)


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


def load_settings(run_dir: Path) -> SearchSettings:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a search run directory (no {CONFIG_FILE})")
    try:
        return SearchSettings.from_dict(json.loads(path.read_text())["settings"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: malformed search settings ({err})") from None


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
        raise ValueError(f"storage {url!r}: {type(err).__name__}: {err}") from None


def run_search(settings: SearchSettings, out_dir: str | Path, resume: bool = False, progress: bool = True,
               on_best: Callable[[str, Candidate], None] | None = None) -> list[TargetResult]:
    """Search every target of `settings`; write the result files under `out_dir` (see `nas search --help`).

    `on_best(target, candidate)` is called whenever a target's best feasible candidate improves."""
    out = Path(out_dir)
    if not resume and (out / CONFIG_FILE).exists():
        raise FileExistsError(f"{out} already holds a search; pass it to --resume or choose another --out")
    targets = check_budgets(settings)  # before anything is written
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
                                              out if len(targets) == 1 else out / Path(target).stem, log, progress,
                                              on_best or (lambda target, candidate: None)))
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
        from nas.search_fixed import evaluate_fixed

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
