"""Where does a latency table's end-to-end error come from? (issue B, `nas latency validate`)

For N random `tracenet_mbv3` subnets at the reference setting this measures, on one backend:
- `e2e_a`, `e2e_b`: the traced one-tap program end to end, twice (pass b in reverse order): the
  repeatability of the measurement itself, the ceiling for any table; `e2e` is the faster pass;
- `exact_sum`: every traced unit exported alone at its exact (cropped, non-square) shape and
  measured, summed: what a table without shape bucketing would predict;
- `table`: the table's prediction (shape ladder + interpolation);
- `ladder_now`: the ladder shapes the table interpolates between for these units, profiled now the
  way `nas profile` does and priced the same way: the table as it would be if profiled today;
- `exact_profiled`: the exact shapes profiled the way `nas profile` does (ExecuTorch lowers one
  program with dynamic height and width per configuration; other backends as `exact_sum`).
It prints within_10pct / MAPE / Spearman / mean ratio for each step from the table to the program:
drift (table vs ladder_now), interpolation (ladder_now vs exact_profiled), shared dynamic programs
(exact_profiled vs exact_sum), additivity (exact_sum vs e2e: fusion, call overhead, caches), and
table vs e2e (what `validate` reports).

usage: python benchmarks/latency_error_sources.py --table latency_tables/x86-2core-ort-2t.json \
           --backend onnxruntime --threads 2 [--n 20] [--seed 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nas.latency.op_keys import OpKey
from nas.latency.predict import setting_op_keys
from nas.latency.profiling.backends import get_backend
from nas.latency.profiling.profiler import measure, measure_unit, profile
from nas.latency.setting import REFERENCE_SETTING
from nas.latency.table import LatencyTable
from nas.latency.validate import accuracy
from search_spaces.space import ArchConfig
from search_spaces.students.student import TraceNetStudent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", required=True)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write every case here")
    args = parser.parse_args()

    table = LatencyTable.load(args.table)
    runtime = get_backend(args.backend, args.threads)
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    archs = [ArchConfig.sample(rng, table.space) for _ in range(args.n)]
    programs = []
    for arch in archs:
        program = REFERENCE_SETTING.program(TraceNetStudent(arch))
        programs.append(runtime.prepare(program, program.example_inputs()))

    arch_keys = [setting_op_keys(arch, REFERENCE_SETTING) for arch in archs]
    unit_ms: dict[str, float] = {}  # each distinct exact-shape unit measured once
    cases = []
    for arch, keys in zip(tqdm(archs, desc="units", unit="arch"), arch_keys, strict=True):
        for key in keys:
            if str(key) not in unit_ms:
                unit_ms[str(key)] = measure_unit(runtime, key).mean
        cases.append({"arch": arch.to_dict(), "table": table.predict(keys).total_ms,
                      "exact_sum": table.overhead_ms + sum(unit_ms[str(k)] for k in keys)})
    exact = sorted({k for keys in arch_keys for k in keys}, key=str)
    read_by_table = sorted({OpKey.parse(name) for key in exact for name in table.sources(key)}, key=str)
    with tempfile.TemporaryDirectory() as tmp:  # profiled now, the way `nas profile` does
        now = dict(device=table.name, backend=args.backend, threads=args.threads, space=table.space)
        ladder_now = profile(read_by_table, Path(tmp) / "ladder.json", **now)
        exact_profiled = profile(exact, Path(tmp) / "exact.json", **now)
    for keys, case in zip(arch_keys, cases, strict=True):
        case["ladder_now"] = table.overhead_ms + ladder_now.predict(keys).total_ms
        case["exact_profiled"] = table.overhead_ms + exact_profiled.predict(keys).total_ms
    for case, run in zip(cases, tqdm(programs, desc="e2e a", unit="arch"), strict=True):
        case["e2e_a"] = measure(run).median
    for case, run in zip(reversed(cases), tqdm(programs[::-1], desc="e2e b", unit="arch"), strict=True):
        case["e2e_b"] = measure(run).median
    for case in cases:  # the faster pass, as `validate` keeps (slow phases of a shared VM only add time)
        case["e2e"] = min(case["e2e_a"], case["e2e_b"])

    def column(name: str) -> list[float]:
        return [c[name] for c in cases]

    rows = {"repeatability (e2e_b vs e2e_a)": ("e2e_b", "e2e_a"),
            "drift (table vs ladder_now)": ("table", "ladder_now"),
            "interpolation (ladder_now vs exact_profiled)": ("ladder_now", "exact_profiled"),
            "shared programs (exact_profiled vs exact_sum)": ("exact_profiled", "exact_sum"),
            "additivity (exact_sum vs e2e)": ("exact_sum", "e2e"),
            "validate (table vs e2e)": ("table", "e2e")}
    print(f"{table.name} on {args.backend}, {args.threads} threads, n={args.n}, seed={args.seed}")
    print(f"{'':46} within_10pct   mape  spearman  mean ratio")
    summary = {}
    for label, (pred, meas) in rows.items():
        stats = accuracy(column(pred), column(meas))
        stats["mean_ratio"] = float(np.mean(np.array(column(pred)) / np.array(column(meas))))
        summary[label] = stats
        print(f"{label:46} {stats['within_10pct']:12.2f} {stats['mape']:6.1%} {stats['spearman']:9.3f}"
              f" {stats['mean_ratio']:11.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "cases": cases}, f, indent=1)


if __name__ == "__main__":
    main()
