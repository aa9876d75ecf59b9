"""End-to-end check of a latency table: predicted vs measured latency of random subnets (a benchmark)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm import tqdm

from nas.latency.predict import predict_latency
from nas.latency.profiling.backends import get_backend
from nas.latency.profiling.profiler import measure, other_cpu
from nas.latency.setting import REFERENCE_SETTING, LatencySetting
from nas.latency.table import LatencyTable
from search_spaces.common.errors import InvalidValueError
from search_spaces.space import DEFAULT_SPACE, ArchConfig
from search_spaces.students.student import TraceNetStudent


def accuracy(predicted: list[float], measured: list[float]) -> dict:
    """within_10pct (fraction of |pred - meas| <= 10% of meas), mape and Spearman rank correlation."""
    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    rel = np.abs(p - m) / m
    rho = float(spearmanr(p, m).statistic) if len(p) > 1 else float("nan")
    return {"within_10pct": float(np.mean(rel <= 0.10)), "mape": float(np.mean(rel)), "spearman": rho}


def repeatability(round_ms: list[list[float]]) -> dict:
    """How far each network's timing passes spread above its fastest: `rounds_within_10pct` (fraction
    whose slowest pass is within 10 % of the fastest) and `max_round_spread`. Where the machine itself
    does not repeat within 10 %, no table can be shown to be within 10 % either."""
    spread = np.array([max(r) / min(r) - 1 for r in round_ms])
    return {"rounds_within_10pct": float(np.mean(spread <= 0.10)), "max_round_spread": float(spread.max())}


def measure_programs(archs: list[ArchConfig], backend: str, threads: int, setting: LatencySetting = REFERENCE_SETTING,
                     rounds: int = 3, progress: bool = True, desc: str = "measure") -> list[list[float]]:
    """Each architecture's one-tap program at `setting` (int8: quantized; fp16: a float16 copy) on the
    backend, timed in `rounds` interleaved passes: the median of each pass, per architecture.

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
    round_ms: list[list[float]] = [[] for _ in archs]
    for _ in tqdm(range(rounds), desc=f"{desc}: time", unit="round", disable=not progress):
        for times, run in zip(round_ms, runs, strict=True):
            times.append(measure(run).median)
    return round_ms


def random_archs(n: int, seed: int, space: str) -> list[ArchConfig]:
    """The `n` random architectures of `space` that validate and measure draw for `seed` (weights seeded too)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    return [ArchConfig.sample(rng, space) for _ in range(n)]


def validate(table: LatencyTable, backend: str, threads: int, n: int, seed: int = 0, space: str | None = None,
             setting: LatencySetting = REFERENCE_SETTING, rounds: int = 3, progress: bool = True) -> dict:
    """Measure `n` random subnets end to end (their traced one-tap program, `measure_programs`) and
    compare with the table; each keeps its fastest pass. The table must price `setting.precision`.
    `other_cpu` says why, when the table was measured on a CPU with other kernel instruction sets."""
    if n < 2:
        raise InvalidValueError(f"--n must be at least 2 to rank architectures, got {n}")
    table.require_precision(setting.precision)
    space = space or table.space or DEFAULT_SPACE
    archs = random_archs(n, seed, space)
    predicted = [predict_latency(arch, table, setting).latency_ms for arch in archs]
    round_ms = measure_programs(archs, backend, threads, setting, rounds, progress, desc=f"validate {table.name}")
    cases = [{"arch": arch.to_dict(), "predicted_ms": p, "round_ms": r, "measured_ms": min(r)}
             for arch, p, r in zip(archs, predicted, round_ms, strict=True)]
    summary = accuracy([c["predicted_ms"] for c in cases], [c["measured_ms"] for c in cases])
    if rounds > 1:
        summary |= repeatability([c["round_ms"] for c in cases])
    return {"target": table.name, "backend": backend, "threads": threads, "precision": setting.precision, "n": n,
            "seed": seed, "space": space, "table_runtime": table.device.get("runtime"),
            "table_threads": table.device.get("threads"), "other_cpu": other_cpu(table.device), **summary,
            "cases": cases}
