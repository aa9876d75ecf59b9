"""What a search is asked to do: targets and budgets, the space, the algorithm, the scorer and the
latency setting (`SearchSettings`), as stored in a run's `search_config.json`."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from nas.latency.setting import REFERENCE_SETTING, LatencySetting
from nas.search.algorithms import Evolution, OptunaSearch
from search_spaces.common.errors import InputFileError, InvalidValueError
from search_spaces.common.files import read_text
from search_spaces.common.limits import parse_json
from search_spaces.space import DEFAULT_SPACE, get_space

ALGORITHMS = ("evolution", "nsga2", "tpe")
CONFIG_FILE, LOG_FILE, STUDY_FILE = "search_config.json", "search.log", "study.db"
_BUDGET_RE = re.compile(r"^\s*(?P<value>[0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(?P<unit>ms|s)?\s*$", re.IGNORECASE)


def parse_budget(text: str) -> float:
    """'5ms', '5' (milliseconds) or '0.005s' -> 5.0 (milliseconds)."""
    match = _BUDGET_RE.match(str(text))
    if not match:
        raise InvalidValueError(f"budget {text!r} must be a latency like 5ms, 5 (ms) or 0.005s")
    value = float(match["value"]) * (1000.0 if (match["unit"] or "ms").lower() == "s" else 1.0)
    if not value > 0 or not math.isfinite(value):
        raise InvalidValueError(f"budget {text!r} must be positive")
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
    window: float | None = REFERENCE_SETTING.window
    precision: str = REFERENCE_SETTING.precision
    workers: int = 1
    ray_address: str | None = None
    storage: str | None = None  # Optuna RDB URL; None: sqlite study.db in the run directory
    include_fixed: bool = False  # also price and score the hand-designed backbones (nas/search/fixed_baselines.py)

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "budgets_ms", tuple(float(b) for b in self.budgets_ms))
        object.__setattr__(self, "tap", tuple(self.tap))
        if self.image_size is not None:
            object.__setattr__(self, "image_size", tuple(self.image_size))
        if not self.targets:
            raise InvalidValueError("at least one target is required")
        if len(self.budgets_ms) not in (1, len(self.targets)):
            raise InvalidValueError(f"give one budget, or one per target ({len(self.targets)} targets, "
                             f"{len(self.budgets_ms)} budgets)")
        if self.algo not in ALGORITHMS:
            raise InvalidValueError(f"unknown algorithm {self.algo!r}; choose from {', '.join(ALGORITHMS)}")
        get_space(self.space)
        if self.population < 4:
            raise InvalidValueError(f"population must be at least 4, got {self.population}")
        self.setting()  # validates tap and window

    def budget(self, index: int) -> float:
        return self.budgets_ms[index if len(self.budgets_ms) > 1 else 0]

    def setting(self) -> LatencySetting:
        return LatencySetting(image_size=self.image_size, tap=self.tap, window=self.window, precision=self.precision)

    def algorithm(self) -> Evolution | OptunaSearch:
        return Evolution(self.generations) if self.algo == "evolution" else OptunaSearch(self.algo, self.trials)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SearchSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidValueError(f"unknown search setting(s) {unknown}")
        return cls(**data)


def load_settings(run_dir: Path) -> SearchSettings:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise InputFileError(f"{run_dir}: not a search run directory (no {CONFIG_FILE})")
    try:
        return SearchSettings.from_dict(parse_json(read_text(path, "search settings file"), str(path))["settings"])
    except (KeyError, TypeError) as err:
        raise InvalidValueError(f"{path}: malformed search settings ({err})") from None
