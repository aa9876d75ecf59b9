"""`nas bench`: measured tap-to-mask latency and peak memory of one student on this machine, next to
the prediction of the latency table for the matching host target.

The timed program is the student's static one-tap program (`TracedTap`) at the reference setting,
exported to the backend (as `nas latency validate` and the profiler do) at the setting's
precision (int8: quantized; fp16: a float16 copy). Peak memory is the
inference working set: how far the process's peak resident set rises above its size once the
program is loaded, while it runs (Linux: the peak is reset through /proc/self/clear_refs first;
elsewhere it is not measured). The weights' size is reported beside it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from nas.latency.predict import predict_latency
from nas.latency.profiling.backends import get_backend
from nas.latency.profiling.profiler import measure, other_cpu
from nas.latency.setting import REFERENCE_SETTING, LatencySetting
from nas.latency.table import LatencyTable, available_targets
from search_spaces.students.student import TraceNetStudent


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_memory_mb(work: Callable[[], object]) -> tuple[object, float | None]:
    """Run `work`; return its result and how far the peak resident set rose above the start (MiB)."""
    if not sys.platform.startswith("linux"):
        return work(), None
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (the peak) to the current RSS
    result = work()
    return result, (_status_kb("VmHWM") - before) / 1024


def host_table(backend: str, threads: int, precision: str = "fp32", space: str | None = None) -> LatencyTable | None:
    """The shipped measured table of this runtime, thread count and precision (and, given, profiled for
    `space`), if there is one: one measured on this host's CPU (its kernel instruction sets) before one
    known to be from another."""
    runtime = {"onnxruntime": "onnxruntime", "executorch-xnnpack": "executorch", "torch": "torch"}[backend]
    tables = [LatencyTable.load(path) for path in available_targets().values()]
    matching = [table for table in tables
                if table.provenance == "measured" and str(table.device.get("runtime", "")).startswith(runtime)
                and table.device.get("threads") == threads and table.precision == precision
                and (space is None or table.space == space)]
    return min(matching, key=lambda table: other_cpu(table.device) is not None, default=None)


def bench(model: TraceNetStudent, backend: str, threads: int, setting: LatencySetting = REFERENCE_SETTING,
          table: LatencyTable | None = None) -> dict:
    arch = model.arch
    runtime = get_backend(backend, threads, setting.precision)
    program = setting.program(model)
    inputs = program.example_inputs()
    run = runtime.prepare(program, inputs)
    entry, peak = peak_memory_mb(lambda: measure(run))
    weights_mb = sum(t.numel() * t.element_size() for t in model.parameters()) / 2**20
    table = table if table is not None else host_table(backend, threads, setting.precision, arch.space)
    report = {"backend": backend, "runtime_version": runtime.runtime_version, "threads": threads,
              "precision": setting.precision,
              "measured_ms": entry.median, "measured_p90_ms": entry.p90, "runs": entry.count,
              "peak_memory_mb": peak, "weights_mb": weights_mb,
              "setting": setting.describe() | {"image_hw": list(setting.input_hw(arch))},
              "arch": arch.to_dict(), "table": None, "predicted_ms": None, "other_cpu": None}
    if table is not None:
        predicted = predict_latency(arch, table, setting).latency_ms
        report |= {"table": table.name, "predicted_ms": predicted,
                   "prediction_error": (predicted - entry.median) / entry.median, "other_cpu": other_cpu(table.device)}
    return report
