"""Re-time the `sub` and `cat` entries of a measured table, on a machine that may have drifted since.

Until the profiler timed every elementwise `fn` as itself, `sub` and `cat` units were timed as a
multiply of two `c`-channel maps. Re-timing only those entries today would mix two machine states in
one table (this VM ran 1.5-3x slower per unit on 2026-12-01 than when its tables were profiled), so
each unit is timed next to its reference, the `add` unit of the same channels and shape, and stored
as the table's own `add` latency x (today's unit / today's add). Where the table has no `add` of those
channels, the median of the other units' drift factors is used. Before/after values are printed.

usage: python benchmarks/retime_eltwise.py --table latency_tables/x86-2core-ort-1t.json --backend onnxruntime
           --threads 1 [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics

from tqdm import tqdm

from nas.latency.op_keys import OpKey
from nas.latency.profiling.backends import get_backend
from nas.latency.profiling.profiler import measure_unit
from nas.latency.table import Entry, LatencyTable

STATS = ("mean", "median", "p90", "std")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", required=True)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--fns", default="sub,cat")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    table = LatencyTable.load(args.table)
    if (table.device.get("runtime"), table.device.get("threads")) != (args.backend, args.threads):
        parser.error(f"{args.table} was measured with {table.device.get('runtime')} at "
                     f"{table.device.get('threads')} threads")
    runtime = get_backend(args.backend, args.threads)
    keys = [OpKey.parse(k) for k in table.entries
            if k.startswith("eltwise[") and OpKey.parse(k).attr("fn") in args.fns.split(",")]
    if not keys:
        print(f"{args.table}: no eltwise {args.fns} entries")
        return
    timed = []
    for key in tqdm(keys, desc=f"retime {table.name}", unit="op"):
        reference = OpKey.make("eltwise", key.out_hw, c=key.attr("c"), fn="add")
        unit, today_ref = measure_unit(runtime, key), measure_unit(runtime, reference)
        drift = table.latency(reference)[0] / today_ref.median if not table.missing([reference]) else None
        timed.append((key, unit, drift))
    usual_drift = statistics.median(d for _, _, d in timed if d is not None)
    report = []
    for key, unit, drift in timed:
        factor = drift if drift is not None else usual_drift
        before = table.entries[str(key)].median
        table.add(str(key), Entry(count=unit.count, **{s: getattr(unit, s) * factor for s in STATS}))
        report.append({"key": str(key), "before_ms": before, "after_ms": unit.median * factor,
                       "reference": "add" if drift is not None else "median drift"})
    table.notes = (table.notes + " " if table.notes else "") + (
        f"{len(keys)} eltwise {args.fns} entries re-timed against same-shape add units "
        "(benchmarks/retime_eltwise.py).")
    table.save(args.table)
    ratio = statistics.median(r["after_ms"] / r["before_ms"] for r in report)
    summary = {"table": table.name, "entries": len(report), "median_after_over_before": ratio,
               "median_drift_factor": usual_drift}
    if args.json:
        print(json.dumps(summary | {"entries_detail": report}))
        return
    for fn in args.fns.split(","):
        rows = [r for r in report if f"fn={fn}" in r["key"]]
        if rows:
            print(f"{fn}: {len(rows)} entries, after / before median "
                  f"{statistics.median(r['after_ms'] / r['before_ms'] for r in rows):.2f}")
    print(f"{table.name}: machine drift factor (table add / today's add) median {usual_drift:.2f}")


if __name__ == "__main__":
    main()
