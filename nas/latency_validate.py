"""End-to-end check of a latency table: predicted vs measured latency of random subnets (a benchmark)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm import tqdm

from nas.backends import get_backend
from nas.latency_predict import predict_latency
from nas.latency_setting import REFERENCE_SETTING, LatencySetting
from nas.latency_table import LatencyTable
from nas.profiler import measure
from search_spaces.arch_config import ArchConfig
from search_spaces.space import DEFAULT_SPACE
from search_spaces.student import TraceNetStudent


def accuracy(predicted: list[float], measured: list[float]) -> dict:
    """within_10pct (fraction of |pred - meas| <= 10% of meas), mape and Spearman rank correlation."""
    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    rel = np.abs(p - m) / m
    rho = float(spearmanr(p, m).statistic) if len(p) > 1 else float("nan")
    return {"within_10pct": float(np.mean(rel <= 0.10)), "mape": float(np.mean(rel)), "spearman": rho}


def validate(table: LatencyTable, backend: str, threads: int, n: int, seed: int = 0, space: str | None = None,
             setting: LatencySetting = REFERENCE_SETTING, progress: bool = True) -> dict:
    """Measure `n` random subnets end to end (their traced one-tap program) and compare with the table."""
    if n < 2:
        raise ValueError(f"--n must be at least 2 to rank architectures, got {n}")
    runtime = get_backend(backend, threads)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    space = space or table.space or DEFAULT_SPACE
    cases = []
    for _ in tqdm(range(n), desc=f"validate {table.name}", unit="arch", disable=not progress):
        arch = ArchConfig.sample(rng, space)
        program = setting.program(TraceNetStudent(arch))
        measured = measure(runtime.prepare(program, program.example_inputs())).median
        cases.append({"arch": arch.to_dict(), "predicted_ms": predict_latency(arch, table, setting).latency_ms,
                      "measured_ms": measured})
    summary = accuracy([c["predicted_ms"] for c in cases], [c["measured_ms"] for c in cases])
    return {"target": table.name, "backend": backend, "threads": threads, "n": n, "seed": seed, "space": space,
            "table_runtime": table.device.get("runtime"), "table_threads": table.device.get("threads"),
            **summary, "cases": cases}
