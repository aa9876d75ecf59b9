"""Per-device latency lookup tables: a versioned JSON file of op key -> latency statistics (ms).

Shape bucketing: a table measures each op configuration (`OpKey.config`) at a ladder of output
shapes (`shape_ladder`). A key whose shape is in the table is read directly; any other shape of a
configuration the table has is priced by linear interpolation in output area between the two
nearest measured shapes (proportional scaling beyond the ends). Latency of a fused conv, SE or
eltwise unit grows close to linearly with its output area, which is what makes this accurate;
`nas latency validate` measures how accurate. A configuration the table lacks is a missing key.
"""

from __future__ import annotations

import bisect
import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nas.latency.op_keys import OpKey, OpKeyError
from search_spaces.common.errors import TraceNASError
from search_spaces.common.files import atomic_write, read_text
from search_spaces.common.limits import parse_json

SCHEMA = "tracenas-latency-table"
VERSION = 1
PROVENANCES = ("measured", "imported", "calibrated")
DEVICE_FIELDS = ("name", "hardware", "os", "runtime", "runtime_version", "threads", "dtype", "date", "tool_version")
STAT_FIELDS = ("count", "mean", "median", "p90", "std")
# device metadata's dtype -> the setting's precision
DTYPE_PRECISION = {"float32": "fp32", "float16": "fp16", "int8": "int8"}
PRECISION_DTYPE = {precision: dtype for dtype, precision in DTYPE_PRECISION.items()}


class LatencyTableError(TraceNASError, ValueError):
    """A latency table file that is missing, corrupt, of another schema or version, or inconsistent."""


class PrecisionMismatchError(LatencyTableError):
    """A table asked to price programs of another precision than it was measured at."""


class MissingKeysError(LatencyTableError):
    """Op configurations an architecture needs and the table does not have."""

    def __init__(self, table: str, missing: list[str]):
        self.missing = missing
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        super().__init__(f"table '{table}' has no entry for {len(missing)} op configuration(s): {shown}")


def shape_ladder(max_side: int) -> list[int]:
    """Square sides a profiler measures: powers of two and their sqrt(2) midpoints, up to `max_side`."""
    sides = {1}
    for exp in range(0, 2 * math.ceil(math.log2(max(max_side, 1))) + 1):
        side = round(2 ** (exp / 2))
        if side <= max_side:
            sides.add(side)
    sides.add(max_side)
    return sorted(sides)


@dataclass(frozen=True)
class Entry:
    count: int
    mean: float
    median: float
    p90: float
    std: float


@dataclass(frozen=True)
class Prediction:
    total_ms: float
    per_key: dict[str, float]
    interpolated: int  # keys priced from neighbouring shapes of the same configuration
    extrapolated: int  # keys outside the measured shape range of their configuration


@dataclass
class LatencyTable:
    device: dict
    provenance: str
    entries: dict[str, Entry] = field(default_factory=dict)
    calibration: dict | None = None
    space: str | None = None  # the search space it was profiled for, if any
    overhead_ms: float = 0.0  # fixed cost per inference, added once to every prediction
    notes: str = ""
    # int8 tables: op configuration -> the ops its quantizer left float inside the unit (e.g. a hardswish)
    float_units: dict[str, list[str]] = field(default_factory=dict)
    # in-context tables: the median time of the profile's probe program (`probe_program`) at the reference
    # setting, the machine speed the units are priced at; `validate` times the probe to compare speeds
    probe_ms: float | None = None

    def __post_init__(self) -> None:
        self._index: dict[str, list[tuple[int, str]]] | None = None

    @property
    def name(self) -> str:
        return str(self.device.get("name", "?"))

    @property
    def precision(self) -> str:
        """The precision of the programs it prices ('fp32' or 'int8'), from the device's dtype."""
        return DTYPE_PRECISION.get(str(self.device.get("dtype") or "float32"), str(self.device.get("dtype")))

    def require_precision(self, precision: str) -> None:
        """A table prices programs of its own precision only."""
        if self.precision != precision:
            raise PrecisionMismatchError(f"table '{self.name}' prices {self.precision} programs, not {precision}; "
                                         f"use a {precision} table (or --precision {self.precision})")

    # ---------------------------------------------------------------- file format
    def to_json(self) -> dict:
        return {"schema": SCHEMA, "version": VERSION, "device": self.device, "provenance": self.provenance,
                "calibration": self.calibration, "space": self.space, "overhead_ms": self.overhead_ms,
                "notes": self.notes, **({"float_units": dict(sorted(self.float_units.items()))}
                                        if self.float_units else {}),
                **({"probe_ms": self.probe_ms} if self.probe_ms else {}),
                "entries": {k: asdict(v) for k, v in sorted(self.entries.items())}}

    def save(self, path: str | Path) -> Path:
        """Atomic write: readers never see a half-written table."""
        return atomic_write(path, lambda f: f.write(json.dumps(self.to_json(), indent=1).encode()))

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        path = Path(path)
        if not path.is_file():
            raise LatencyTableError(f"{path}: no such latency table")
        return cls.from_json(parse_json(read_text(path, "latency table"), str(path), LatencyTableError),
                             source=str(path))

    @classmethod
    def from_json(cls, data: object, source: str = "<table>") -> LatencyTable:
        def fail(reason: str) -> LatencyTableError:
            return LatencyTableError(f"{source}: {reason}")

        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise fail(f"not a latency table (schema must be '{SCHEMA}')")
        if data.get("version") != VERSION:
            raise fail(f"table version {data.get('version')!r} is not supported (expected {VERSION})")
        device, provenance = data.get("device"), data.get("provenance")
        if not isinstance(device, dict) or not device.get("name"):
            raise fail("device metadata with at least a 'name' is required")
        if provenance not in PROVENANCES:
            raise fail(f"provenance {provenance!r} must be one of {list(PROVENANCES)}")
        calibration = data.get("calibration")
        if provenance == "calibrated" and not (isinstance(calibration, dict) and "loo_mape" in calibration):
            raise fail("a calibrated table must carry its calibration error (calibration.loo_mape)")
        raw = data.get("entries")
        if not isinstance(raw, dict):
            raise fail("'entries' must be an object of op key -> statistics")
        entries = {}
        for key, stats in raw.items():
            try:
                OpKey.parse(key)
            except OpKeyError as err:
                raise fail(str(err)) from None
            if not isinstance(stats, dict) or set(stats) != set(STAT_FIELDS):
                raise fail(f"entry {key!r} must have exactly the fields {list(STAT_FIELDS)}")
            if not all(isinstance(stats[f], (int, float)) and math.isfinite(stats[f]) and stats[f] >= 0
                       for f in STAT_FIELDS):
                raise fail(f"entry {key!r} has a negative or non-numeric statistic")
            entries[key] = Entry(**stats)
        overhead = data.get("overhead_ms", 0.0)
        if not isinstance(overhead, (int, float)) or not math.isfinite(overhead) or overhead < 0:
            raise fail(f"overhead_ms must be a non-negative number, got {overhead!r}")
        float_units = data.get("float_units", {})
        if not (isinstance(float_units, dict) and all(isinstance(ops, list) and all(isinstance(o, str) for o in ops)
                                                      for ops in float_units.values())):
            raise fail("float_units must be an object of op configuration -> list of op names")
        probe_ms = data.get("probe_ms")
        if probe_ms is not None and not (isinstance(probe_ms, (int, float)) and math.isfinite(probe_ms)
                                         and probe_ms > 0):
            raise fail(f"probe_ms must be a positive number, got {probe_ms!r}")
        return cls(device=device, provenance=provenance, entries=entries, calibration=calibration,
                   space=data.get("space"), overhead_ms=float(overhead), notes=str(data.get("notes", "")),
                   float_units=float_units, probe_ms=probe_ms)

    # ---------------------------------------------------------------- prediction
    def add(self, key: str, entry: Entry) -> None:
        self.entries[key] = entry
        self._index = None

    def _by_config(self) -> dict[str, list[tuple[int, str]]]:
        if self._index is None:
            index: dict[str, list[tuple[int, str]]] = {}
            for key in self.entries:
                parsed = OpKey.parse(key)
                index.setdefault(parsed.config, []).append((parsed.out_hw[0] * parsed.out_hw[1], key))
            self._index = {c: sorted(v) for c, v in index.items()}
        return self._index

    def missing(self, keys: Iterable[OpKey]) -> list[str]:
        """Keys whose configuration the table does not have at any shape."""
        index = self._by_config()
        return sorted({str(k) for k in keys if str(k) not in self.entries and k.config not in index})

    def sources(self, key: OpKey) -> list[str]:
        """The entries `latency` reads for `key`: the key itself, or the two measured shapes of its
        configuration around its output area, or the nearest end of them."""
        return [name for _, name in self._points(key)]

    def _points(self, key: OpKey) -> list[tuple[int, str]]:
        area, name = key.out_hw[0] * key.out_hw[1], str(key)
        if name in self.entries:
            return [(area, name)]
        points = self._by_config().get(key.config)
        if not points:
            raise MissingKeysError(self.name, [name])
        i = bisect.bisect_left([a for a, _ in points], area)
        return points[i - 1: i + 1] if 0 < i < len(points) else [points[0] if i == 0 else points[-1]]

    def latency(self, key: OpKey) -> tuple[float, str]:
        """Mean latency (ms) of one key and how it was obtained: exact | interpolated | extrapolated."""
        area = key.out_hw[0] * key.out_hw[1]
        points = self._points(key)
        if len(points) == 2:
            (a0, k0), (a1, k1) = points
            m0, m1 = self.entries[k0].mean, self.entries[k1].mean
            return m0 + (m1 - m0) * (area - a0) / (a1 - a0), "interpolated"
        (a, name), = points
        ms = self.entries[name].mean
        return (ms, "exact") if name == str(key) else (ms * area / a, "extrapolated")

    def predict(self, keys: Iterable[OpKey]) -> Prediction:
        """Overhead + sum of the latencies of `keys` (with multiplicity); MissingKeysError names every gap."""
        keys = list(keys)
        missing = self.missing(keys)
        if missing:
            raise MissingKeysError(self.name, missing)
        per_key: dict[str, float] = {}
        kinds: Counter = Counter()
        total = self.overhead_ms
        for key in keys:
            ms, how = self.latency(key)
            per_key[str(key)] = per_key.get(str(key), 0.0) + ms
            kinds[how] += 1
            total += ms
        return Prediction(total, per_key, kinds["interpolated"], kinds["extrapolated"])

    def summary(self) -> dict:
        baseline = (self.calibration or {}).get("baselines", {}).get("flops+offset", {})
        return {"name": self.name, "provenance": self.provenance, "entries": len(self.entries),
                "runtime": self.device.get("runtime"), "threads": self.device.get("threads"),
                "precision": self.precision, "calibration_error": (self.calibration or {}).get("loo_mape"),
                "flops_baseline_error": baseline.get("mape"), "float_units": len(self.float_units),
                "notes": self.notes}


class UnknownTargetError(LatencyTableError):
    """A target that is neither a shipped table name nor a table file."""


def available_targets() -> dict[str, Path]:
    from latency_tables import shipped_tables

    return shipped_tables()


def resolve_target(target: str) -> LatencyTable:
    """A shipped table by name (see `nas latency tables`) or any table file by path."""
    path = Path(target)
    if path.suffix == ".json" or path.exists():
        return LatencyTable.load(path)
    shipped = available_targets()
    if target not in shipped:
        names = ", ".join(sorted(shipped)) or "none shipped yet"
        raise UnknownTargetError(f"unknown target '{target}'; available: {names} (or pass a table .json path)")
    return LatencyTable.load(shipped[target])
