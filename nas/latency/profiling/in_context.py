"""In-context profiling: each unit's time inside whole programs, from ONNX Runtime's node profiler.

On x86, ONNX Runtime runs convs in its blocked NCHWc layout and converts only where a graph leaves
it, and it fuses residual adds into convs. A unit timed alone pays both conversions on every call,
so per-unit sums over-predict programs by 1.1-2.6x, depending on the network and the hour (see
README). Here each unit is priced by what its nodes cost inside a covering program: ONNX Runtime's
per-node profile, with every node attributed to the unit (op key) it came from.

Attribution: the exported graph's nodes follow the traced forward's order, so each unit's anchor
node (its Conv, ReduceMean, Add, Concat, BatchNormalization, Resize, an activation's first node) is
matched to the op keys in order, and a fused activation's nodes (five for a GELU) must follow it;
crop slices belong to the unit that consumes them; everything before the first unit is the click
encoding and everything after the last one the tap head. ONNX Runtime keeps node names through its
rewrites (an NCHWc conv is named after the value it produces), and its layout conversions go to the
unit that needs them: `ReorderOutput` to the next node, `ReorderInput` to the previous one.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import onnx
import torch
from tqdm import tqdm

from nas.latency.op_keys import OpKey
from nas.latency.op_kinds import ContextProfileError, op_kind
from nas.latency.predict import setting_op_keys
from nas.latency.profiling.backends import OnnxRuntimeBackend, onnx_feeds
from nas.latency.profiling.profiler import (
    covering_archs,
    device_metadata,
    measure,
    open_table,
    other_cpu,
    probe_program,
    summarize,
)
from nas.latency.profiling.quantized import qdq_float_graph_nodes
from nas.latency.setting import REFERENCE_SETTING, LatencySetting
from nas.latency.table import LatencyTable, LatencyTableError
from search_spaces.common.files import exclusive
from search_spaces.common.resources import sigterm_as_interrupt
from search_spaces.space import ArchConfig, get_space
from search_spaces.students.student import TraceNetStudent

VIEWS = {"Slice", "Gather", "Squeeze", "Unsqueeze", "Reshape", "Pad"}  # priced with the unit that consumes them
FOLDED = {"Constant", "Identity"}  # ONNX Runtime folds them away: they are no unit's nodes
IN_CONTEXT_NOTE = "in context:"  # how an in-context table's notes begin


QDQ = {"QuantizeLinear", "DequantizeLinear"}  # an int8 program's: priced with the unit they sit in


def node_units(graph: onnx.GraphProto, keys: Sequence[OpKey], precision: str = "fp32") -> list[int]:
    """Index into `keys` (clicks, trunk units..., tap head) of the unit each graph node belongs to, in a
    program of `precision` (int8: a QDQ program, `quantized.quantize_onnx`)."""
    def _unit_nodes(key: OpKey) -> tuple[str, ...]:
        return op_kind(key).onnx_nodes(key, precision)

    folded = FOLDED | QDQ if precision == "int8" else FOLDED
    nodes, last_trunk, head = list(graph.node), len(keys) - 2, len(keys) - 1
    owner: list[int | None] = [None] * len(nodes)
    unit, closer, expected = 0, "", []  # the last unit whose anchor was seen, and the nodes it still owns
    for i, node in enumerate(nodes):
        if closer or expected:
            owner[i] = unit
            if node.op_type in folded:
                continue
            if closer:  # an SE runs up to its gate's Mul (its two convs are not units)
                closer = "" if node.op_type == closer else closer
            elif node.op_type != expected.pop(0):
                raise ContextProfileError(f"{keys[unit]}: expected its activation's nodes "
                                          f"{list(_unit_nodes(keys[unit])[1:])}, found {node.op_type} ({node.name})")
        elif unit < last_trunk and node.op_type == _unit_nodes(keys[unit + 1])[0]:
            unit += 1
            owner[i] = unit
            closer, expected = op_kind(keys[unit]).onnx_closer, list(_unit_nodes(keys[unit])[1:])
        elif unit == 0 or unit == last_trunk:
            owner[i] = 0 if unit == 0 else head
    if unit != last_trunk:
        raise ContextProfileError(f"matched {unit} of {last_trunk} traced units to the exported graph; "
                                  f"no {_unit_nodes(keys[unit + 1])[0]} node for {keys[unit + 1]}")
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
    name = re.sub(r"_token_\d+$", "", profiled_name.removesuffix("_kernel_time"))  # a QLinearConv's fused name
    if name.endswith("_nchwc"):  # an NCHWc rewrite is named after the value it produces
        return by_output.get(name.removesuffix("_nchwc"))
    while name:
        if name in by_name:
            return by_name[name]
        name = name.rpartition("/")[0]  # fused nodes extend their first node's name: /Gather_5/...Fusion
    return None


@dataclasses.dataclass(frozen=True)
class _Attribution:
    """The unit (index into the op keys) of each node of an exported program, and of the nodes ONNX
    Runtime makes of them, found by the names and values it keeps through its rewrites."""
    owner: list[int]
    by_name: dict[str, int]
    by_output: dict[str, int]

    @classmethod
    def of(cls, model: bytes, keys: Sequence[OpKey], precision: str) -> _Attribution:
        graph = onnx.load_from_string(model).graph
        return cls(node_units(graph, keys, precision), {node.name: i for i, node in enumerate(graph.node)},
                   {out: i for i, node in enumerate(graph.node) for out in node.output})

    def unit(self, runtime_name: str) -> int | None:
        """The unit of the node ONNX Runtime names `runtime_name` (None for a node it inserted)."""
        index = _graph_index(runtime_name, self.by_name, self.by_output)
        return None if index is None else self.owner[index]


def unit_times(model: bytes, keys: Sequence[OpKey], profile_path: str, runs: int, precision: str = "fp32"
               ) -> list[float]:
    """Median time (ms) per unit of `keys` over the last `runs` runs recorded in ONNX Runtime's profile."""
    attribution = _Attribution.of(model, keys, precision)
    with open(profile_path) as f:
        events = [e for e in json.load(f) if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_run = len(events) // max(1, sum(e["name"] == events[0]["name"] for e in events))
    order = events[:per_run]
    units: list[int | None] = [attribution.unit(e["name"]) for e in order]
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


def float_unit_ops(model: bytes, keys: Sequence[OpKey]) -> dict[str, list[str]]:
    """Op configuration of `keys` -> the op types ONNX Runtime runs in float inside the QDQ program
    `model` (`quantized.qdq_float_graph_nodes`), for the configurations that have any. A node it
    inserted unnamed (the HardSigmoid and Mul it splits a hardswish into) goes to the unit of the
    nearest node upstream that came from the exported graph; one upstream of every unit, to the clicks."""
    attribution = _Attribution.of(model, keys, "int8")
    optimized, float_nodes = qdq_float_graph_nodes(model)
    producer = {out: node for node in optimized.node for out in node.output}

    def own_unit(node: onnx.NodeProto) -> int | None:
        found = attribution.unit(node.name) if node.name else None
        outputs = [attribution.by_output[out] for out in node.output if out in attribution.by_output]
        return found if found is not None or not outputs else attribution.owner[outputs[0]]

    per_unit: dict[int, list[str]] = defaultdict(list)
    for node in float_nodes:
        unit, frontier, seen = None, [node], set()
        while unit is None and frontier:
            current = frontier.pop(0)
            unit = own_unit(current)
            seen.add(id(current))
            frontier += [producer[name] for name in current.input
                         if name in producer and id(producer[name]) not in seen]
        per_unit[unit or 0].append(node.op_type)
    float_ops: dict[str, list[str]] = {}
    for unit, ops in sorted(per_unit.items()):  # a configuration that recurs runs the same ops each time
        float_ops.setdefault(keys[unit].config, ops)
    return float_ops


@dataclasses.dataclass(frozen=True)
class ProgramProfile:
    """One program profiled in context: each unit's time inside it (ms, per op key, in key order), its
    wall time unprofiled (ms), and for a quantized program the ops left float per op configuration."""
    unit_ms: list[float]
    wall_ms: float
    float_units: dict[str, list[str]]


def profile_in_context(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], keys: Sequence[OpKey],
                       runtime: OnnxRuntimeBackend, runs: int = 20, warmup: int = 5) -> ProgramProfile:
    """The program the runtime runs for `module` (quantized for an int8 runtime), profiled per unit of `keys`."""
    model = runtime.program(module, inputs)
    with tempfile.TemporaryDirectory() as tmp:
        session = runtime.session(model, profile_prefix=os.path.join(tmp, "ort"))
        feeds = onnx_feeds(session, inputs)
        for _ in range(warmup + runs):
            session.run(None, feeds)
        per_unit = unit_times(model, keys, session.end_profiling(), runs, runtime.precision)
    plain = runtime.session(model)
    wall = measure(lambda: plain.run(None, feeds)).median
    return ProgramProfile(per_unit, wall, float_unit_ops(model, keys) if runtime.precision == "int8" else {})


def context_archs(space: str) -> list[ArchConfig]:
    """The covering architectures (every op configuration) at every resolution of the space, so each
    configuration is seen in context over the range of shapes searches ask about. Each architecture's
    resolutions run back to back: a machine that drifts during the profile then shifts every
    resolution alike, instead of pricing the first resolution profiled against the last."""
    return [dataclasses.replace(arch, resolution=r) for arch in covering_archs(space)
            for r in get_space(space).resolutions]


def context_programs(space: str, setting: LatencySetting,
                     priced: set[str]) -> Iterator[tuple[ArchConfig, list[OpKey]]]:
    """The context architectures, with their op keys, that price a unit neither `priced` nor an earlier one
    has: all of them for a new table; for a fixed backbone added to a table that has the searchable space,
    at most one per FPN width and resolution (the tap head's configurations are already priced)."""
    seen = set(priced)
    for arch in context_archs(space):
        keys = setting_op_keys(arch, setting)
        if {str(k) for k in keys} - seen:
            seen.update(str(k) for k in keys)
            yield arch, keys


def _read_log(log: Path, header: dict) -> list[dict]:
    """The header and the programs already profiled into `log` (JSON lines after a header that must match
    `header`), for resuming. A last line cut short by an interruption is dropped."""
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
    for field in ("name", "runtime", "threads", "space", "setting"):
        if records and records[0].get(field) != header[field]:
            raise LatencyTableError(f"{log}: was written for {field}={records[0].get(field)!r}, not "
                                    f"{header[field]!r}; choose another --out")
    if records and (reason := other_cpu(records[0])):
        raise LatencyTableError(f"{log}: was {reason}; choose another --out")
    if any("probe_ms" not in record for record in records[1:]):
        raise LatencyTableError(f"{log}: was written by an older TraceNAS, without probe timings; delete it to "
                                "start over")
    return records


def profile_context(out: str | Path, device: str, threads: int, space: str,
                    setting: LatencySetting = REFERENCE_SETTING, limit: int | None = None,
                    progress: bool = True) -> LatencyTable:
    """An ONNX Runtime table priced in context: every unit's nodes in the covering programs at
    `setting`, each program's units scaled to its unprofiled wall time (the profiler's own per-node
    cost is not the program's). At int8, the ops each configuration keeps float inside the quantized
    programs go to `table.float_units`.

    A shared VM runs 10-20 % slower or faster for minutes at a time, and consecutive programs share a
    width and block choices, so such a phase would price those units alone off. A small fixed program
    (`probe_program`) is timed before each program, and each program's units are scaled by the median
    probe time over the profile divided by its own.

    A table at `out` (in context, same device) takes another space's units it lacks, priced in that
    space's programs, and keeps those it has. Programs go to `out` minus .json plus .SPACE.programs.jsonl
    as they are done, with the units priced before, and a rerun resumes from there; the table is
    written at the end."""
    runtime = OnnxRuntimeBackend(threads, precision=setting.precision)
    out = Path(out)
    with exclusive(out), sigterm_as_interrupt():  # one writer per table; SIGTERM stops like Ctrl-C
        metadata = device_metadata(device, runtime.name, threads, runtime.runtime_version, setting.precision)
        table = open_table(out, metadata, space)
        if table.entries and not table.notes.startswith(IN_CONTEXT_NOTE):
            raise LatencyTableError(f"{out}: holds units timed alone, not in context; choose another --out")
        log = out.with_name(f"{out.stem}.{space.replace(':', '-')}.programs.jsonl")
        header = metadata | {"space": space, "setting": setting.describe()}
        records = _read_log(log, header)
        if not records:
            records = [header | {"priced_before": sorted(table.entries)}]
            log.write_text(json.dumps(records[0]) + "\n")
        priced_before, done = set(records[0]["priced_before"]), records[1:]
        programs = list(itertools.islice(context_programs(space, setting, priced_before), limit))
        probe = probe_program(space, setting, runtime) if len(done) < len(programs) else None
        for arch, keys in tqdm(programs[len(done):], desc=f"profile {device} in context ({threads}t)", unit="program",
                               initial=min(len(done), len(programs)), total=len(programs), disable=not progress):
            program = setting.program(TraceNetStudent(arch))
            probe_ms = measure(probe, max_seconds=0.5).median
            profiled = profile_in_context(program, program.example_inputs(), keys, runtime)
            scale = profiled.wall_ms / sum(profiled.unit_ms)
            record = {"arch": arch.to_dict(), "wall_ms": profiled.wall_ms, "probe_ms": probe_ms, "units": {},
                      **({"float_units": profiled.float_units} if profiled.float_units else {})}
            for key, ms in zip(keys, profiled.unit_ms, strict=True):
                record["units"].setdefault(str(key), []).append(ms * scale)
            with log.open("a") as f:
                f.write(json.dumps(record) + "\n")
            done.append(record)
        observed: dict[str, list[float]] = defaultdict(list)
        used = done[: len(programs)]
        typical_probe_ms = statistics.median(record["probe_ms"] for record in used) if used else 0.0
        for record in used:
            speed = typical_probe_ms / record["probe_ms"]
            for key, times in record["units"].items():
                observed[key] += [ms * speed for ms in times]
            for config, ops in record.get("float_units", {}).items():
                table.float_units.setdefault(config, ops)
        added = [key for key in observed if key not in priced_before]
        count = min(len(done), len(programs))
        if not priced_before:
            table.probe_ms = typical_probe_ms if setting.is_reference and used else None  # validate probes there
            table.notes = (f"{IN_CONTEXT_NOTE} ONNX Runtime node profiles of {count} covering programs at "
                           f"{setting.describe()}, each unit's nodes scaled to its program's wall time and the "
                           "machine's speed by a probe program")
        elif set(added) - set(table.entries):
            table.notes += f"; + {space}: {count} programs priced {len(added)} more units"
        for key in sorted(added):
            table.add(key, summarize(observed[key]))
        table.save(out)
        return table
