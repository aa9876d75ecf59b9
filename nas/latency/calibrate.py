"""Calibrate base tables to a device from a handful of end-to-end measurements (few-shot adaptation).

Every candidate model is linear in per-unit quantities, so whichever is chosen is again a lookup
table (one value per op key):

- `flops`, `flops+offset`: FLOPs alone, the baselines every device model must beat;
- `global`: overhead + scale x base-table latency;
- `per-class`: one scale per op class (conv_1x1, conv_dw_k3, conv_dw_k5, se, ...), each with a prior that shrinks it
  toward the global scale fitted on the same points: op classes are strongly collinear across
  architectures, and a class the measurements cannot tell apart keeps the global scale instead of
  drifting to zero;
- `+arch`: either of those plus architecture features (`nas.latency.features`: FLOPs, depthwise
  FLOPs, memory traffic, unit count), shrunk toward zero, for what the base table misses on this
  device;
- `transfer` (`+arch`) with several base tables (other measured devices, runtimes or thread counts):
  a non-negative mix of their latencies, shrunk toward their average. This is HELP's idea, that a
  device is best described through its relation to devices already measured, fitted as a few
  coefficients instead of a meta-learned network;
- the same families `@` each further base table alone.

All are non-negative least squares. Leave-one-out error over the device's own points (MAPE; every
prior refitted in every fold) chooses the model and its prior weight. The baselines' leave-one-out
errors are kept next to it. Classes the
measurements never exercise (e.g. the tap head when calibrating on classification networks) take
their base's global scale.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy.optimize import nnls

from nas.latency.features import ARCH_FEATURES, network_features, unit_features
from nas.latency.op_keys import OpKey, OpKeyError
from nas.latency.op_kinds import OP_KINDS
from nas.latency.predict import setting_op_keys
from nas.latency.setting import REFERENCE_SETTING, LatencySetting
from nas.latency.table import Entry, LatencyTable
from nas.latency.validate import accuracy
from search_spaces.common.errors import TraceNASError
from search_spaces.common.files import atomic_write, read_text
from search_spaces.space import ArchConfig

PRIOR_WEIGHTS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
ANCHOR_WEIGHT = 1e-4  # the global scale's weak prior toward 1, which only matters when points are few
BASELINES = ("flops", "flops+offset")
FAMILIES = ("global", "per-class", "global+arch", "per-class+arch")
TRANSFER = ("transfer", "transfer+arch")
MODELS = BASELINES + FAMILIES + TRANSFER


class CalibrationError(TraceNASError, ValueError):
    """Unusable measurements (too few, malformed CSV, non-positive latencies)."""


def op_class(key: OpKey) -> str:
    """Coarse op class whose latency ratio between two devices is assumed constant (its kind's calibration
    class; a kind TraceNAS does not build, such as an imported table's block, is its own class)."""
    kind = OP_KINDS.get(key.kind)
    return kind.calibration_class_of(key) if kind else key.kind


class _Column(NamedTuple):
    """One per-unit quantity a model weighs: a base table's latency of one op class (`cls`, or all
    classes when None), or an architecture feature (`base` None)."""

    base: int | None
    cls: str | None
    feature: str | None = None

    def name(self, bases: Sequence[LatencyTable]) -> str:
        if self.base is None:
            return str(self.feature)
        return f"{bases[self.base].name}:{self.cls or 'all'}"


@dataclass(frozen=True)
class Calibration:
    model: str
    coefficients: dict[str, float]  # column name -> weight
    overhead_ms: float
    loo: dict  # within_10pct, mape, spearman (and n) of the chosen model's leave-one-out predictions
    prior_weight: float
    default_scales: dict[str, float]  # base name -> scale of the op classes the fit did not see
    baselines: dict[str, dict]  # leave-one-out error of FLOPs alone and FLOPs + offset
    bases: tuple[str, ...]  # the base tables it reads, the first one primary

    @property
    def scales(self) -> dict[str, float]:
        """Per-class scales of the primary base table."""
        prefix = f"{self.bases[0]}:"
        return {name[len(prefix):]: w for name, w in self.coefficients.items() if name.startswith(prefix)}

    def unit_ms(self, key: OpKey, bases: Sequence[LatencyTable], stat: str = "mean") -> float:
        """The model's latency of one unit (its share of a network's prediction)."""
        total = 0.0
        for base in bases:
            if f"{base.name}:all" in self.coefficients:
                scale = self.coefficients[f"{base.name}:all"]
            elif base.name in self.default_scales:  # per class; a class the fit never saw keeps the global scale
                scale = self.coefficients.get(f"{base.name}:{op_class(key)}", self.default_scales[base.name])
            else:
                continue
            entry = base.entries.get(str(key))
            total += scale * (getattr(entry, stat) if entry else base.latency(key)[0])
        features = [self.coefficients.get(f, 0.0) for f in ARCH_FEATURES]
        if any(features):
            total += float(np.dot(features, unit_features(key)))
        return total

    def predict_ms(self, keys: Sequence[OpKey], bases: Sequence[LatencyTable]) -> float:
        """The model's latency of a network (what the calibrated table predicts for it)."""
        return self.overhead_ms + sum(self.unit_ms(key, bases) for key in keys)

    def apply(self, bases: LatencyTable | Sequence[LatencyTable], device: dict) -> LatencyTable:
        """The calibrated table: every unit of the primary base that all the model's bases price."""
        bases = [bases] if isinstance(bases, LatencyTable) else list(bases)
        if tuple(b.name for b in bases) != self.bases:
            raise CalibrationError(f"this calibration reads the tables {list(self.bases)}, "
                                   f"not {[b.name for b in bases]}")
        primary = bases[0]
        used = [b for b in bases if b.name in self.default_scales]
        notes = (f"calibrated from {self.loo['n']} end-to-end measurements: {self.model} on "
                 f"{', '.join(b.name for b in used) or 'FLOPs'}, leave-one-out MAPE {self.loo['mape']:.1%}")
        if "flops+offset" in self.baselines:
            notes += f" (FLOPs + offset: {self.baselines['flops+offset']['mape']:.1%})"
        table = LatencyTable(device=device, provenance="calibrated", space=primary.space,
                             overhead_ms=self.overhead_ms,  # fitted on unit sums: it holds the bases' own
                             calibration={"base": primary.name, "base_provenance": primary.provenance,
                                          "bases": list(self.bases), "model": self.model,
                                          "method": _METHODS[self.model.split(" @")[0]],
                                          "coefficients": self.coefficients, "overhead_ms": self.overhead_ms,
                                          "default_scales": self.default_scales,
                                          "loo_mape": self.loo["mape"], "loo_within_10pct": self.loo["within_10pct"],
                                          "loo_spearman": self.loo["spearman"], "n": self.loo["n"],
                                          "prior_weight": self.prior_weight, "baselines": self.baselines},
                             notes=notes)
        for name, entry in primary.entries.items():
            key = OpKey.parse(name)
            if any(b.missing([key]) for b in used):
                continue
            mean = self.unit_ms(key, bases)
            table.add(name, Entry(count=entry.count, mean=mean, median=self.unit_ms(key, bases, "median"),
                                  p90=self.unit_ms(key, bases, "p90"),
                                  std=entry.std * mean / entry.mean if entry.mean > 0 else 0.0))
        return table

_METHODS = {"flops": "FLOPs x scale (NNLS)", "flops+offset": "FLOPs x scale + overhead (NNLS)",
            "global": "global NNLS scale + overhead",
            "per-class": "per-class NNLS scales + overhead (shrunk toward the global scale)",
            "global+arch": "global NNLS scale + architecture features + overhead",
            "per-class+arch": "per-class NNLS scales (shrunk toward the global scale) + architecture features "
                              "+ overhead",
            "transfer": "non-negative mix of several devices' tables + overhead (shrunk toward their average)",
            "transfer+arch": "non-negative mix of several devices' tables + architecture features + overhead"}


def _fit(design: np.ndarray, measured: np.ndarray, toward: np.ndarray, weight: float,
         offset: bool) -> tuple[np.ndarray, float]:
    """NNLS weights (k,) and overhead; a column with a finite `toward` is pulled to it with strength
    `weight` (relative to the column's mean, so the prior is unit-free)."""
    n, k = design.shape
    prior_rows = [j for j in range(k) if np.isfinite(toward[j])]
    strength = np.sqrt(weight * n) * np.mean(design, axis=0).clip(min=1e-12)
    rows = [np.hstack([design, np.ones((n, 1))]) if offset else design]
    target = [measured]
    for j in prior_rows:
        row = np.zeros(k + offset)
        row[j] = strength[j]
        rows.append(row[None])
        target.append([strength[j] * toward[j]])
    solution, _ = nnls(np.vstack(rows), np.concatenate(target))
    return solution[:k], float(solution[k]) if offset else 0.0


class _Data(NamedTuple):
    """Per-network column values: each base's latency per op class, and the architecture features."""

    classes: list[list[str]]  # per base
    per_class: list[np.ndarray]  # per base: (n, len(classes))
    arch: np.ndarray | None  # (n, len(ARCH_FEATURES)); None where a unit has no builder


@dataclass(frozen=True)
class _Spec:
    family: str
    bases: tuple[int, ...]

    def columns(self, data: _Data) -> list[_Column]:
        cols = []
        if self.family in BASELINES:
            return [_Column(None, None, "mflops")]
        for b in self.bases:
            cols += [_Column(b, c) for c in data.classes[b]] if "per-class" in self.family else [_Column(b, None)]
        if self.family.endswith("+arch"):
            cols += [_Column(None, None, f) for f in ARCH_FEATURES]
        return cols


def _values(data: _Data, column: _Column) -> np.ndarray:
    if column.base is None:
        return data.arch[:, ARCH_FEATURES.index(column.feature)]
    per_class = data.per_class[column.base]
    return per_class.sum(axis=1) if column.cls is None else per_class[:, data.classes[column.base].index(column.cls)]


def _fit_spec(spec: _Spec, data: _Data, rows: np.ndarray, measured: np.ndarray,
              weight: float) -> tuple[np.ndarray, float, dict[int, float]]:
    """(column weights, overhead, global scale per base) of one model on the points `rows`."""
    columns = spec.columns(data)
    design = np.stack([_values(data, c)[rows] for c in columns], axis=1)
    if spec.family in BASELINES:
        return (*_fit(design, measured, np.array([np.nan]), 0.0, spec.family == "flops+offset"), {})
    anchors = {}
    for b in spec.bases:  # each base's global scale, with a weak prior of 1
        total = data.per_class[b][rows].sum(axis=1, keepdims=True)
        anchors[b] = float(_fit(total, measured, np.ones(1), ANCHOR_WEIGHT, True)[0][0])
    toward = np.array([0.0 if c.base is None else anchors[c.base] / len(spec.bases) for c in columns])
    if spec.family == "global":
        toward[:] = 1.0
    return (*_fit(design, measured, toward, weight, True), anchors)


def _features(bases: Sequence[LatencyTable], key_lists: Sequence[Sequence[OpKey]]) -> _Data:
    classes, per_class = [], []
    for base in bases:
        names = sorted({op_class(k) for keys in key_lists for k in keys})
        values = np.zeros((len(key_lists), len(names)))
        for i, keys in enumerate(key_lists):
            for key in keys:
                values[i, names.index(op_class(key))] += base.latency(key)[0]
        classes.append(names)
        per_class.append(values)
    try:
        arch = np.stack([network_features(keys) for keys in key_lists])
    except OpKeyError:  # units of a kind no builder knows (an imported table's blocks): no features
        arch = None
    return _Data(classes, per_class, arch)


def _specs(n_bases: int, models: Sequence[str], with_arch: bool) -> list[_Spec]:
    specs = [_Spec(f, ()) for f in BASELINES if f in models and with_arch]
    for b in range(n_bases):
        specs += [_Spec(f, (b,)) for f in FAMILIES if f in models and (with_arch or "+arch" not in f)]
    if n_bases > 1:
        specs += [_Spec(f, tuple(range(n_bases))) for f in TRANSFER if f in models and (with_arch or "+arch" not in f)]
    return specs


def _loo(spec: _Spec, data: _Data, measured: np.ndarray, weight: float) -> dict:
    columns = spec.columns(data)
    values = np.stack([_values(data, c) for c in columns], axis=1)
    predicted = []
    for i in range(len(measured)):
        keep = np.arange(len(measured)) != i
        weights, overhead, _ = _fit_spec(spec, data, keep, measured[keep], weight)
        predicted.append(float(values[i] @ weights + overhead))
    return accuracy(predicted, list(measured))


def calibrate(bases: LatencyTable | Sequence[LatencyTable], key_lists: Sequence[Sequence[OpKey]],
              measured_ms: Sequence[float], models: Sequence[str] = MODELS) -> Calibration:
    """Fit every candidate of `models` on the base tables (the first one primary) to end-to-end
    latencies of networks given by their op keys, and keep the one with the lowest leave-one-out MAPE."""
    bases = [bases] if isinstance(bases, LatencyTable) else list(bases)
    measured = np.asarray(measured_ms, dtype=float)
    if len(measured) < 3:
        raise CalibrationError(f"need at least 3 end-to-end measurements, got {len(measured)}")
    if np.any(measured <= 0) or not np.all(np.isfinite(measured)):
        raise CalibrationError("measured latencies must be positive numbers")
    for base in bases:
        base_missing = sorted({m for keys in key_lists for m in base.missing(keys)})
        if base_missing:
            raise CalibrationError(f"the base table '{base.name}' lacks {len(base_missing)} op configuration(s), "
                                   f"e.g. {base_missing[0]}")
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise CalibrationError(f"unknown calibration model(s) {unknown}; known: {', '.join(MODELS)}")
    data = _features(bases, key_lists)
    baselines, candidates = {}, []
    for spec in _specs(len(bases), models, data.arch is not None):
        for weight in [0.0] if spec.family in BASELINES else PRIOR_WEIGHTS:
            score = _loo(spec, data, measured, weight)
            if spec.family in BASELINES:
                baselines[spec.family] = score
            candidates.append((spec, weight, score))
    if data.arch is not None and set(BASELINES) - baselines.keys():  # always evaluated, even when not candidates
        for family in set(BASELINES) - baselines.keys():
            baselines[family] = _loo(_Spec(family, ()), data, measured, 0.0)
    # the lowest leave-one-out MAPE (the one-standard-error rule toward simpler models was tried and
    # ranked the validation devices of benchmarks/few_shot_devices.py worse)
    spec, weight, score = min(candidates, key=lambda c: c[2]["mape"])
    weights, overhead, anchors = _fit_spec(spec, data, np.arange(len(measured)), measured, weight)
    coefficients = {c.name(bases): float(w) for c, w in zip(spec.columns(data), weights, strict=True)}
    model = spec.family + (f" @{bases[spec.bases[0]].name}" if len(spec.bases) == 1 and spec.bases != (0,) else "")
    return Calibration(model, coefficients, overhead, score | {"n": len(measured)}, weight,
                       {bases[b].name: s for b, s in anchors.items()}, baselines, tuple(b.name for b in bases))


def read_measurements(path: str | Path, setting: LatencySetting = REFERENCE_SETTING
                      ) -> tuple[list[list[OpKey]], list[float]]:
    """The op keys and end-to-end latency of every network in a CSV with a `latency_ms` column and either
    `arch` (an ArchConfig JSON, or a path to one, traced at `setting`) or `keys` (the network's op keys,
    separated by spaces: any network, e.g. another search space's, whose units the base table prices)."""
    path = Path(path)
    rows = list(csv.DictReader(read_text(path, "measurements file").splitlines()))
    columns = set(rows[0]) if rows else set()
    if "latency_ms" not in columns or not columns & {"arch", "keys"}:
        raise CalibrationError(f"{path}: needs a header with columns 'arch' (or 'keys') and 'latency_ms'")
    key_lists, latencies = [], []
    for line, row in enumerate(rows, start=2):
        try:
            if row.get("keys"):
                key_lists.append([OpKey.parse(k) for k in row["keys"].split()])
            else:
                text = row["arch"].strip()
                arch_json = text if text.startswith("{") else read_text(path.parent / text, "architecture file")
                key_lists.append(setting_op_keys(ArchConfig.from_json(arch_json), setting))
            latencies.append(float(row["latency_ms"]))
        except (OSError, ValueError, AttributeError) as err:
            raise CalibrationError(f"{path}:{line}: {str(err).splitlines()[0]}") from None
    return key_lists, latencies


class PublishedLatency(NamedTuple):
    timm_name: str
    resolution: int
    latency_ms: float
    device: str
    runtime: str
    source: str


def read_published(path: str | Path, match: str) -> list[PublishedLatency]:
    """Rows of a published-latency CSV whose device contains `match` (case-insensitive) and that name
    a timm model."""
    path = Path(path)
    rows = list(csv.DictReader(read_text(path, "published-latency file").splitlines()))
    needed = {"timm_name", "input_resolution", "latency_ms", "device"}
    if not rows or not needed <= set(rows[0]):
        raise CalibrationError(f"{path}: needs columns {sorted(needed)}")
    picked = []
    for line, row in enumerate(rows, start=2):
        if match.lower() in row["device"].lower() and row["timm_name"].strip():
            try:
                picked.append(PublishedLatency(row["timm_name"].strip(), int(row["input_resolution"]),
                                               float(row["latency_ms"]), row["device"].strip(),
                                               (row.get("runtime") or "").strip(), row.get("source", "")))
            except ValueError as err:
                raise CalibrationError(f"{path}:{line}: {err}") from None
    if not picked:
        raise CalibrationError(f"{path}: no row with a timm model on a device matching {match!r}")
    return picked


def write_measurements(path: str | Path, networks: Sequence[ArchConfig | Sequence[OpKey]],
                       latencies: Sequence[float]) -> None:
    """The CSV `read_measurements` reads: one row per network, an ArchConfig or its op keys (written whole
    or not at all)."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["arch", "keys", "latency_ms"])
    for net, ms in zip(networks, latencies, strict=True):
        arch = json.dumps(net.to_dict()) if isinstance(net, ArchConfig) else ""
        keys = "" if isinstance(net, ArchConfig) else " ".join(map(str, net))
        writer.writerow([arch, keys, f"{ms:.6f}"])
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def calibrate_archs(bases: LatencyTable | Sequence[LatencyTable], archs: Sequence[ArchConfig],
                    measured_ms: Sequence[float], setting: LatencySetting = REFERENCE_SETTING,
                    models: Sequence[str] = MODELS) -> Calibration:
    return calibrate(bases, [setting_op_keys(a, setting) for a in archs], measured_ms, models)
