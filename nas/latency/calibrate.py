"""Calibrate a base table to a device from a handful of end-to-end measurements (HELP-style few-shot
adaptation, with a per-op-class linear model instead of a meta-learned one).

Model: latency(arch) = overhead + sum over op classes c of scale_c * (base-table latency of the
arch's ops in class c), or one global scale for all classes. Fitted by non-negative least squares.
The global scale has a weak prior of 1; each per-class scale has a prior that shrinks it toward the
global scale fitted on the same points, so a class the measurements cannot tell apart from the
others (op classes are strongly collinear across architectures) keeps the global scale instead of
drifting to zero. The model and the prior's weight are chosen by leave-one-out error (the global
scale refitted in every fold). Classes the measurements never exercise (e.g. the tap head when
calibrating on classification networks) take the global scale. The calibrated table is the base
table with every entry multiplied by its class scale, plus the overhead, with provenance
'calibrated' and its leave-one-out error.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy.optimize import nnls

from nas.latency.op_keys import OpKey
from nas.latency.op_kinds import OP_KINDS
from nas.latency.predict import setting_op_keys
from nas.latency.setting import REFERENCE_SETTING, LatencySetting
from nas.latency.table import Entry, LatencyTable
from nas.latency.validate import accuracy
from search_spaces.common.errors import TraceNASError
from search_spaces.common.files import read_text
from search_spaces.space import ArchConfig

PRIOR_WEIGHTS = {"global": (1e-4, 1e-3, 1e-2, 1e-1, 1.0),  # the global scale -> 1 prior
                 "per-class": (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)}  # each class scale -> the global one
MODELS = tuple(PRIOR_WEIGHTS)


class CalibrationError(TraceNASError, ValueError):
    """Unusable measurements (too few, malformed CSV, non-positive latencies)."""


def op_class(key: OpKey) -> str:
    """Coarse op class whose latency ratio between two devices is assumed constant (its kind's calibration
    class; a kind TraceNAS does not build, such as an imported table's block, is its own class)."""
    kind = OP_KINDS.get(key.kind)
    return kind.calibration_class_of(key) if kind else key.kind


@dataclass(frozen=True)
class Calibration:
    scales: dict[str, float]
    overhead_ms: float
    loo: dict  # within_10pct, mape, spearman of leave-one-out predictions
    prior_weight: float
    model: str  # "per-class" or "global"
    default_scale: float  # for op classes the fit did not see

    def apply(self, base: LatencyTable, device: dict) -> LatencyTable:
        table = LatencyTable(device=device, provenance="calibrated", space=base.space,
                             overhead_ms=base.overhead_ms + self.overhead_ms,
                             calibration={"base": base.name, "base_provenance": base.provenance,
                                          "method": f"{self.model} NNLS scales + overhead"
                                          + (" (shrunk toward the global scale)" if self.model == "per-class" else ""),
                                          "default_scale": self.default_scale,
                                          "scales": self.scales, "overhead_ms": self.overhead_ms,
                                          "loo_mape": self.loo["mape"], "loo_within_10pct": self.loo["within_10pct"],
                                          "loo_spearman": self.loo["spearman"], "n": self.loo["n"],
                                          "prior_weight": self.prior_weight},
                             notes=f"calibrated from {self.loo['n']} end-to-end measurements on top of {base.name}")
        for key, entry in base.entries.items():
            s = self.scales.get(op_class(OpKey.parse(key)), self.default_scale)
            table.add(key, Entry(count=entry.count, mean=entry.mean * s, median=entry.median * s,
                                 p90=entry.p90 * s, std=entry.std * s))
        return table


def class_features(base: LatencyTable, key_lists: Sequence[Sequence[OpKey]], classes: list[str]) -> np.ndarray:
    """(n_archs, n_classes) base-table latency per class of each architecture."""
    features = np.zeros((len(key_lists), len(classes)))
    for i, keys in enumerate(key_lists):
        for key in keys:
            features[i, classes.index(op_class(key))] += base.latency(key)[0]
    return features


def _fit(features: np.ndarray, measured: np.ndarray, weight: float, toward: float) -> tuple[np.ndarray, float]:
    """Scales (k,) and overhead by NNLS, each scale pulled toward `toward` with strength `weight`."""
    n, k = features.shape
    prior = np.sqrt(weight * n) * np.mean(features, axis=0).clip(min=1e-9)
    design = np.vstack([np.hstack([features, np.ones((n, 1))]), np.hstack([np.diag(prior), np.zeros((k, 1))])])
    target = np.concatenate([measured, prior * toward])
    solution, _ = nnls(design, target)
    return solution[:k], float(solution[k])


def _fit_model(model: str, features: np.ndarray, measured: np.ndarray,
               weight: float) -> tuple[np.ndarray, float, float]:
    """(scales, overhead, global scale) of `model` on these points."""
    total = features.sum(axis=1, keepdims=True)
    global_scale, overhead = _fit(total, measured, weight if model == "global" else PRIOR_WEIGHTS["global"][0], 1.0)
    if model == "global":
        return np.full(features.shape[1], global_scale[0]), overhead, float(global_scale[0])
    scales, overhead = _fit(features, measured, weight, float(global_scale[0]))
    return scales, overhead, float(global_scale[0])


def calibrate(base: LatencyTable, key_lists: Sequence[Sequence[OpKey]], measured_ms: Sequence[float],
              models: Sequence[str] = MODELS) -> Calibration:
    """Fit class scales and overhead to end-to-end latencies; leave-one-out error over the same points
    chooses among `models` (per-class with shrinkage, global) and their prior weights."""
    measured = np.asarray(measured_ms, dtype=float)
    if len(measured) < 3:
        raise CalibrationError(f"need at least 3 end-to-end measurements, got {len(measured)}")
    if np.any(measured <= 0) or not np.all(np.isfinite(measured)):
        raise CalibrationError("measured latencies must be positive numbers")
    base_missing = sorted({m for keys in key_lists for m in base.missing(keys)})
    if base_missing:
        raise CalibrationError(f"the base table '{base.name}' lacks {len(base_missing)} op configuration(s), "
                               f"e.g. {base_missing[0]}")
    classes = sorted({op_class(k) for keys in key_lists for k in keys})
    features = class_features(base, key_lists, classes)
    best = None
    for model in models:
        for weight in PRIOR_WEIGHTS[model]:
            loo = []
            for i in range(len(measured)):
                keep = np.arange(len(measured)) != i
                scales, overhead, _ = _fit_model(model, features[keep], measured[keep], weight)
                loo.append(float(features[i] @ scales + overhead))
            score = accuracy(loo, list(measured))
            if best is None or score["mape"] < best[2]["mape"]:
                best = (model, weight, score)
    model, weight, score = best
    scales, overhead, global_scale = _fit_model(model, features, measured, weight)
    fitted = dict(zip(classes, map(float, scales), strict=True))
    return Calibration(fitted, overhead, score | {"n": len(measured)}, weight, model, global_scale)


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
    """The CSV `read_measurements` reads: one row per network, an ArchConfig or its op keys."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["arch", "keys", "latency_ms"])
        for net, ms in zip(networks, latencies, strict=True):
            arch = json.dumps(net.to_dict()) if isinstance(net, ArchConfig) else ""
            keys = "" if isinstance(net, ArchConfig) else " ".join(map(str, net))
            writer.writerow([arch, keys, f"{ms:.6f}"])


def calibrate_archs(base: LatencyTable, archs: Sequence[ArchConfig], measured_ms: Sequence[float],
                    setting: LatencySetting = REFERENCE_SETTING, models: Sequence[str] = MODELS) -> Calibration:
    return calibrate(base, [setting_op_keys(a, setting) for a in archs], measured_ms, models)
