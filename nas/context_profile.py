"""In-context profiling: each unit's time inside whole programs, from ONNX Runtime's node profiler.

On x86, ONNX Runtime runs convs in its blocked NCHWc layout and converts only where a graph leaves
it, and it fuses residual adds into convs. A unit timed alone pays both conversions on every call,
so per-unit sums over-predict programs by 1.1-2.6x, depending on the network and the hour (see
README). Here each unit is priced by what its nodes cost inside a covering program: ONNX Runtime's
per-node profile, with every node attributed to the unit (op key) it came from.

Attribution: the exported graph's nodes follow the traced forward's order, so each unit's anchor
node (its Conv, ReduceMean, Add, Resize) is matched to the op keys in order; crop slices belong to
the unit that consumes them; everything before the first unit is the click encoding and everything
after the last one the tap head. ONNX Runtime keeps node names through its rewrites (an NCHWc conv
is named after the value it produces), and its layout conversions go to the unit that needs them:
`ReorderOutput` to the next node, `ReorderInput` to the previous one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from tqdm import tqdm

from nas.backends import OnnxRuntimeBackend, export_onnx, onnx_feeds
from nas.latency_predict import setting_op_keys
from nas.latency_setting import REFERENCE_SETTING, LatencySetting
from nas.latency_table import LatencyTable, LatencyTableError
from nas.op_keys import OpKey
from nas.profiler import covering_archs, device_metadata, measure, summarize
from search_spaces.arch_config import ArchConfig
from search_spaces.space import get_space
from search_spaces.student import TraceNetStudent

ANCHORS = {"conv": "Conv", "se": "ReduceMean", "upsample": "Resize"}
ELTWISE_ANCHORS = {"add": "Add", "mul": "Mul"}
VIEWS = {"Slice", "Gather", "Squeeze", "Unsqueeze", "Reshape", "Pad"}  # priced with the unit that consumes them


class ContextProfileError(ValueError):
    """A program whose graph cannot be matched to its op keys."""


def _anchor(key: OpKey) -> str:
    """The ONNX op type that starts `key`'s nodes in an exported program."""
    anchor = ELTWISE_ANCHORS.get(str(key.attr("fn"))) if key.kind == "eltwise" else ANCHORS.get(key.kind)
    if anchor is None:
        raise ContextProfileError(f"in-context profiling has no rule for {key.kind!r} units (op key {key})")
    return anchor


def node_units(graph: onnx.GraphProto, keys: Sequence[OpKey]) -> list[int]:
    """Index into `keys` (clicks, trunk units..., tap head) of the unit each graph node belongs to."""
    nodes, last_trunk, head = list(graph.node), len(keys) - 2, len(keys) - 1
    owner: list[int | None] = [None] * len(nodes)
    unit, inside = 0, ""  # unit: the last one whose anchor was seen; inside: the op type that closes it
    for i, node in enumerate(nodes):
        if inside:
            owner[i] = unit
            inside = "" if node.op_type == inside or inside == "act" else inside
        elif unit < last_trunk and node.op_type == _anchor(keys[unit + 1]):
            unit += 1
            owner[i] = unit
            key = keys[unit]
            # an SE runs up to its gate's Mul (its two convs are not units); a conv's activation follows it
            inside = "Mul" if key.kind == "se" else "act" if key.kind == "conv" and key.attr("act") != "none" else ""
        elif unit == 0 or unit == last_trunk:
            owner[i] = 0 if unit == 0 else head
    if unit != last_trunk:
        raise ContextProfileError(f"matched {unit} of {last_trunk} traced units to the exported graph; "
                                  f"no {_anchor(keys[unit + 1])} node for {keys[unit + 1]}")
    # pads and views (crops) belong to the unit that consumes them: a residual's crop is its add's
    consumers = defaultdict(list)
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers[name].append(i)
    for i in reversed(range(len(nodes))):
        if nodes[i].op_type in VIEWS and owner[i] != head:
            users = [j for out in nodes[i].output for j in consumers[out] if owner[j] is not None]
            if users:
                owner[i] = owner[min(users)]
    previous = 0
    for i in range(len(nodes)):
        owner[i] = previous = owner[i] if owner[i] is not None else previous
    return owner


def _graph_index(profiled_name: str, by_name: dict[str, int],
                 by_output: dict[str, int]) -> int | None:
    """The exported graph's node an ONNX Runtime node came from (None for nodes it inserted)."""
    name = profiled_name.removesuffix("_kernel_time")
    if name.endswith("_nchwc"):  # an NCHWc rewrite is named after the value it produces
        return by_output.get(name.removesuffix("_nchwc"))
    while name:
        if name in by_name:
            return by_name[name]
        name = name.rpartition("/")[0]  # fused nodes extend their first node's name: /Gather_5/...Fusion
    return None


def unit_times(model: bytes, keys: Sequence[OpKey], profile_path: str, runs: int) -> list[float]:
    """Median time (ms) per unit of `keys` over the last `runs` runs recorded in ONNX Runtime's profile."""
    graph = onnx.load_from_string(model).graph
    owner = node_units(graph, keys)
    by_name = {node.name: i for i, node in enumerate(graph.node)}
    by_output = {out: i for i, node in enumerate(graph.node) for out in node.output}
    with open(profile_path) as f:
        events = [e for e in json.load(f) if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_run = len(events) // max(1, sum(e["name"] == events[0]["name"] for e in events))
    order = events[:per_run]
    units: list[int | None] = [None if (g := _graph_index(e["name"], by_name, by_output)) is None
                               else owner[g] for e in order]
    for i, event in enumerate(order):  # layout conversions serve the node after (to NCHW) or before
        if units[i] is None and event["args"]["op_name"] == "ReorderOutput":
            units[i] = next((u for u in units[i + 1:] if u is not None), None)
    last = 0
    for i, unit in enumerate(units):
        units[i] = last = unit if unit is not None else last
    totals = [[0.0] * len(keys) for _ in range(len(events) // per_run)]
    for i, event in enumerate(events[: len(totals) * per_run]):
        totals[i // per_run][units[i % per_run]] += event["dur"] / 1e3
    kept = totals[-runs:]
    return [statistics.median(run[u] for run in kept) for u in range(len(keys))]


def profile_in_context(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], keys: Sequence[OpKey],
                       runtime: OnnxRuntimeBackend, runs: int = 20, warmup: int = 5) -> tuple[list[float], float]:
    """(time per unit of `keys` inside the exported program, the program's wall time unprofiled), in ms."""
    model = export_onnx(module, inputs)
    with tempfile.TemporaryDirectory() as tmp:
        session = runtime.session(model, profile_prefix=os.path.join(tmp, "ort"))
        feeds = onnx_feeds(session, inputs)
        for _ in range(warmup + runs):
            session.run(None, feeds)
        per_unit = unit_times(model, keys, session.end_profiling(), runs)
    plain = runtime.session(model)
    wall = measure(lambda: plain.run(None, feeds)).median
    return per_unit, wall


def context_archs(space: str) -> list[ArchConfig]:
    """The covering architectures (every op configuration) at every resolution of the space, so each
    configuration is seen in context over the range of shapes searches ask about. Each architecture's
    resolutions run back to back: a machine that drifts during the profile then shifts every
    resolution alike, instead of pricing the first resolution profiled against the last."""
    return [dataclasses.replace(arch, resolution=r) for arch in covering_archs(space)
            for r in get_space(space).resolutions]


def _read_log(log: Path, header: dict) -> list[dict]:
    """Programs already profiled into `log` (JSON lines after a header that must match `header`), for
    resuming. A last line cut short by an interruption is dropped."""
    if not log.exists():
        return []
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError as err:
            if i + 1 < len(lines) or i == 0:
                raise LatencyTableError(f"{log}:{i + 1}: corrupt resume log ({err}); delete it to start over") from None
            log.write_text("".join(f"{kept}\n" for kept in lines[:i]))
    if not records:
        return []
    for field in ("name", "runtime", "threads", "space", "setting"):
        if records[0].get(field) != header[field]:
            raise LatencyTableError(f"{log}: was written for {field}={records[0].get(field)!r}, not "
                                    f"{header[field]!r}; choose another --out")
    return records[1:]


def profile_context(out: str | Path, device: str, threads: int, space: str,
                    setting: LatencySetting = REFERENCE_SETTING, limit: int | None = None,
                    progress: bool = True) -> LatencyTable:
    """An ONNX Runtime table priced in context: every unit's nodes in the covering programs at
    `setting`, each program's units scaled to its unprofiled wall time (the profiler's own per-node
    cost is not the program's). Programs go to `out` minus .json plus .programs.jsonl as they are
    done, and a rerun resumes from there; the table is written at the end."""
    runtime = OnnxRuntimeBackend(threads)
    out = Path(out)
    metadata = device_metadata(device, runtime.name, threads, runtime.runtime_version)
    log = out.with_suffix(".programs.jsonl")
    header = metadata | {"space": space, "setting": setting.describe()}
    programs = _read_log(log, header)
    if not programs:
        log.write_text(json.dumps(header) + "\n")
    archs = context_archs(space)[:limit]
    for arch in tqdm(archs[len(programs):], desc=f"profile {device} in context ({threads}t)", unit="program",
                     initial=min(len(programs), len(archs)), total=len(archs), disable=not progress):
        keys = setting_op_keys(arch, setting)
        program = setting.program(TraceNetStudent(arch))
        per_unit, wall = profile_in_context(program, program.example_inputs(), keys, runtime)
        scale = wall / sum(per_unit)
        record = {"arch": arch.to_dict(), "wall_ms": wall, "units": {}}
        for key, ms in zip(keys, per_unit, strict=True):
            record["units"].setdefault(str(key), []).append(ms * scale)
        with log.open("a") as f:
            f.write(json.dumps(record) + "\n")
        programs.append(record)
    observed: dict[str, list[float]] = defaultdict(list)
    for record in programs[: len(archs)]:
        for key, times in record["units"].items():
            observed[key] += times
    table = LatencyTable(device=metadata, provenance="measured", space=space,
                         notes=f"in context: ONNX Runtime node profiles of {min(len(programs), len(archs))} "
                               f"covering programs at {setting.describe()}, each unit's nodes scaled to its "
                               f"program's wall time")
    for key, times in sorted(observed.items()):
        table.add(key, summarize(times))
    table.save(out)
    return table
