"""End-to-end check of a latency table: predicted vs measured latency of random subnets (a benchmark)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm import tqdm

from nas.latency.op_keys import OpKey
from nas.latency.predict import predict_latency
from nas.latency.profiling.backends import get_backend
from nas.latency.profiling.profiler import measure, other_cpu, probe_program
from nas.latency.setting import REFERENCE_SETTING, LatencySetting
from nas.latency.table import LatencyTable
from search_spaces.common.errors import InvalidValueError
from search_spaces.space import DEFAULT_SPACE, ArchConfig
from search_spaces.students.student import TraceNetStudent


def accuracy(predicted: list[float], measured: list[float]) -> dict:
    """within_10pct (fraction of |pred - meas| <= 10% of meas), mape, Spearman rank correlation and
    median_ratio (the median of pred / meas: a bias shared by all networks, e.g. a table of a faster CPU)."""
    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    rel = np.abs(p - m) / m
    rho = float(spearmanr(p, m).statistic) if len(p) > 1 else float("nan")
    return {"within_10pct": float(np.mean(rel <= 0.10)), "mape": float(np.mean(rel)), "spearman": rho,
            "median_ratio": float(np.median(p / m))}


def repeatability(round_ms: list[list[float]]) -> dict:
    """How far each network's timing passes spread above its fastest: `rounds_within_10pct` (fraction
    whose slowest pass is within 10 % of the fastest) and `max_round_spread`. Where the machine itself
    does not repeat within 10 %, no table can be shown to be within 10 % either."""
    spread = np.array([max(r) / min(r) - 1 for r in round_ms])
    return {"rounds_within_10pct": float(np.mean(spread <= 0.10)), "max_round_spread": float(spread.max())}


@dataclass(frozen=True)
class ProgramTimings:
    round_ms: list[list[float]]  # per program, the median of each timing pass
    probe_ms: list[list[float]] | None = None  # per program, the probe program's median just before each pass


def measure_programs(archs: list[ArchConfig], backend: str, threads: int, setting: LatencySetting = REFERENCE_SETTING,
                     rounds: int = 3, progress: bool = True, desc: str = "measure",
                     probe_space: str | None = None) -> ProgramTimings:
    """Each architecture's one-tap program at `setting` (int8: quantized; fp16: a float16 copy) on the
    backend, timed in `rounds` interleaved passes: the median of each pass, per architecture. With
    `probe_space`, that space's `probe_program` is timed before each program of each pass too.

    Interleaving: on a shared VM a slow phase lasts seconds to minutes and would otherwise double the
    latency of whichever network it hit (seen on this 2-core VM at 2 threads), not of one pass of
    each. All programs stay loaded until the last pass."""
    if rounds < 1:
        raise InvalidValueError(f"--rounds must be at least 1, got {rounds}")
    runtime = get_backend(backend, threads, setting.precision)
    runs = []
    for arch in tqdm(archs, desc=f"{desc}: export", unit="arch", disable=not progress):
        program = setting.program(TraceNetStudent(arch))
        runs.append(runtime.prepare(program, program.example_inputs()))
    probe = probe_program(probe_space, setting, runtime) if probe_space else None
    round_ms: list[list[float]] = [[] for _ in archs]
    probe_ms: list[list[float]] = [[] for _ in archs]
    for _ in tqdm(range(rounds), desc=f"{desc}: time", unit="round", disable=not progress):
        for times, probe_times, run in zip(round_ms, probe_ms, runs, strict=True):
            if probe:
                probe_times.append(measure(probe, max_seconds=0.5).median)
            times.append(measure(run).median)
    return ProgramTimings(round_ms, probe_ms if probe else None)


def random_archs(n: int, seed: int, space: str) -> list[ArchConfig]:
    """The `n` random architectures of `space` that validate and measure draw for `seed` (weights seeded too)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    return [ArchConfig.sample(rng, space) for _ in range(n)]


def validate(table: LatencyTable, backend: str, threads: int, n: int, seed: int = 0, space: str | None = None,
             setting: LatencySetting = REFERENCE_SETTING, rounds: int = 3, progress: bool = True) -> dict:
    """Measure `n` random subnets end to end (their traced one-tap program, `measure_programs`) and
    compare with the table; each keeps its fastest pass. The table must price `setting.precision`.
    `other_cpu` says why, when the table was measured on a CPU with other kernel instruction sets.

    A table that records its profile's probe time (`probe_ms`, in-context tables of this runtime and
    threads) has the probe timed before each program of each pass: `probe_ratio` is the machine's speed
    now against the profile's, and `at_profile_speed` scores each pass scaled to the profile's speed (a
    diagnostic: the raw figures above stay the measurement)."""
    if n < 2:
        raise InvalidValueError(f"--n must be at least 2 to rank architectures, got {n}")
    table.require_precision(setting.precision)
    space = space or table.space or DEFAULT_SPACE
    archs = random_archs(n, seed, space)
    predicted = [predict_latency(arch, table, setting).latency_ms for arch in archs]
    probed = (table.probe_ms and table.space and setting.is_reference
              and (table.device.get("runtime"), table.device.get("threads")) == (backend, threads))
    timings = measure_programs(archs, backend, threads, setting, rounds, progress, desc=f"validate {table.name}",
                               probe_space=table.space if probed else None)
    cases = [{"arch": arch.to_dict(), "predicted_ms": p, "round_ms": r, "measured_ms": min(r)}
             for arch, p, r in zip(archs, predicted, timings.round_ms, strict=True)]
    summary = accuracy([c["predicted_ms"] for c in cases], [c["measured_ms"] for c in cases])
    if rounds > 1:
        summary |= repeatability([c["round_ms"] for c in cases])
    if timings.probe_ms:  # each pass at the machine speed the table's units are priced at, as the profile priced them
        for case, probe_ms in zip(cases, timings.probe_ms, strict=True):
            case["probe_ms"] = probe_ms
            case["at_profile_speed_ms"] = min(ms * table.probe_ms / probe for ms, probe in
                                              zip(case["round_ms"], probe_ms, strict=True))
        summary["probe_ratio"] = float(np.median(timings.probe_ms)) / table.probe_ms
        summary["at_profile_speed"] = accuracy(predicted, [c["at_profile_speed_ms"] for c in cases])
    return {"target": table.name, "backend": backend, "threads": threads, "precision": setting.precision, "n": n,
            "seed": seed, "space": space, "table_runtime": table.device.get("runtime"),
            "table_threads": table.device.get("threads"), "other_cpu": other_cpu(table.device), **summary,
            "cases": cases}


def validate_measured(table: LatencyTable, key_lists: list[list[OpKey]], measured_ms: list[float],
                      precision: str = "fp32") -> dict:
    """`validate`'s summary for networks measured before (`nas latency validate --measurements-out`, `nas
    latency measure`), priced by their op keys without timing anything: how two tables, e.g. a profile and
    its re-profile, compare on one set of measurements. The file does not say which CPU it was measured
    on, so there is no `other_cpu`."""
    if len(measured_ms) < 2:
        raise InvalidValueError(f"need at least 2 measured networks to rank them, got {len(measured_ms)}")
    table.require_precision(precision)
    predicted = [table.predict(keys).total_ms for keys in key_lists]
    return {"target": table.name, "precision": precision, "n": len(measured_ms), **accuracy(predicted, measured_ms),
            "cases": [{"predicted_ms": p, "measured_ms": m} for p, m in zip(predicted, measured_ms, strict=True)]}
