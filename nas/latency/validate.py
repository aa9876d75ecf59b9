"""End-to-end check of a latency table: predicted vs measured latency of random subnets (a benchmark)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm import tqdm

from nas.latency.predict import predict_latency
from nas.latency.profiling.backends import get_backend
from nas.latency.profiling.profiler import measure
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


def validate(table: LatencyTable, backend: str, threads: int, n: int, seed: int = 0, space: str | None = None,
             setting: LatencySetting = REFERENCE_SETTING, rounds: int = 3, progress: bool = True) -> dict:
    """Measure `n` random subnets end to end (their traced one-tap program) and compare with the table.

    The programs are timed in `rounds` interleaved passes and each keeps its fastest pass's median:
    on a shared VM a slow phase lasts seconds to minutes and would otherwise double the latency of
    whichever network it hit (seen on this 2-core VM at 2 threads), not of one pass of each. All `n`
    programs stay loaded until the last pass."""
    if n < 2:
        raise InvalidValueError(f"--n must be at least 2 to rank architectures, got {n}")
    if rounds < 1:
        raise InvalidValueError(f"--rounds must be at least 1, got {rounds}")
    runtime = get_backend(backend, threads)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    space = space or table.space or DEFAULT_SPACE
    cases, runs = [], []
    for _ in tqdm(range(n), desc=f"validate {table.name}: export", unit="arch", disable=not progress):
        arch = ArchConfig.sample(rng, space)
        program = setting.program(TraceNetStudent(arch))
        runs.append(runtime.prepare(program, program.example_inputs()))
        cases.append({"arch": arch.to_dict(), "predicted_ms": predict_latency(arch, table, setting).latency_ms,
                      "round_ms": []})
    for _ in tqdm(range(rounds), desc=f"validate {table.name}: time", unit="round", disable=not progress):
        for case, run in zip(cases, runs, strict=True):
            case["round_ms"].append(measure(run).median)
    for case in cases:
        case["measured_ms"] = min(case["round_ms"])
    summary = accuracy([c["predicted_ms"] for c in cases], [c["measured_ms"] for c in cases])
    if rounds > 1:
        summary |= repeatability([c["round_ms"] for c in cases])
    return {"target": table.name, "backend": backend, "threads": threads, "n": n, "seed": seed, "space": space,
            "table_runtime": table.device.get("runtime"), "table_threads": table.device.get("threads"),
            **summary, "cases": cases}
