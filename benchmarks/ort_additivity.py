"""Do ONNX Runtime's units add up to the program? (issue B: why per-unit ORT tables over-predict)

For N random `tracenet_mbv3` subnets at the reference setting this times, on ONNX Runtime:
- `program`: the traced one-tap program end to end (fastest of two passes);
- `units`: every traced unit alone at its exact cropped shape, summed (a table without bucketing);
- `pieces`: the program's own ONNX graph cut into `--pieces` subgraphs of consecutive nodes
  (`onnx.utils.Extractor`), each timed alone on the program's real intermediate values, summed:
  what pricing bigger blocks (a whole inverted residual) instead of units would give.
With `--no-layout-transforms` every session stops at ORT's extended optimisations, leaving out the
blocked NCHWc layout x86 builds convert convs to: additivity without it, and what it costs.

usage: python benchmarks/ort_additivity.py [--threads 2] [--n 8] [--seed 3] [--pieces 9]
           [--no-layout-transforms] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from functools import partial

import numpy as np
import onnx
import torch
from onnx.utils import Extractor
from tqdm import tqdm

from nas.latency.predict import setting_op_keys
from nas.latency.profiling.backends import OnnxRuntimeBackend, export_onnx, onnx_feeds
from nas.latency.profiling.profiler import measure, measure_unit
from nas.latency.setting import REFERENCE_SETTING
from search_spaces.space import DEFAULT_SPACE, ArchConfig
from search_spaces.students.student import TraceNetStudent


def piece_io(graph: onnx.GraphProto, pieces: int) -> list[tuple[list[str], list[str]]]:
    """(inputs, outputs) of `pieces` runs of consecutive nodes: each run's inputs are every value
    still needed that an earlier run (or the graph input) produced."""
    constants = {i.name for i in graph.initializer}
    produced_at = {out: i for i, node in enumerate(graph.node) for out in node.output}
    last_use = {name: i for i, node in enumerate(graph.node) for name in node.input if name and name not in constants}
    bounds = np.linspace(0, len(graph.node), pieces + 1).round().astype(int)
    io, inputs = [], [i.name for i in graph.input if i.name not in constants]
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        live = [name for name, used in last_use.items() if used >= end and produced_at.get(name, -1) < end]
        outputs = [name for name in live if produced_at.get(name, -1) >= start] if end < len(graph.node) \
            else [o.name for o in graph.output]
        io.append((inputs, outputs))
        inputs = live
    return io


def time_pieces(runtime: OnnxRuntimeBackend, model_bytes: bytes, feeds: dict[str, np.ndarray], pieces: int) -> float:
    model = onnx.shape_inference.infer_shapes(onnx.load_from_string(model_bytes))
    every_value = onnx.ModelProto()
    every_value.CopyFrom(model)
    names = [out for node in model.graph.node for out in node.output if out]
    del every_value.graph.output[:]
    every_value.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    values = dict(zip(names, runtime.session(every_value.SerializeToString()).run(None, feeds), strict=True)) | feeds
    extractor, total = Extractor(model), 0.0
    for inputs, outputs in piece_io(model.graph, pieces):
        piece = extractor.extract_model(inputs, outputs)
        session = runtime.session(piece.SerializeToString())
        feed = {i.name: values[i.name] for i in session.get_inputs()}
        total += measure(partial(session.run, None, feed)).median
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--pieces", type=int, default=9, help="subgraphs per program (0: skip)")
    parser.add_argument("--no-layout-transforms", action="store_true")
    parser.add_argument("--json", help="also write every case here")
    args = parser.parse_args()

    runtime = OnnxRuntimeBackend(args.threads, layout_transforms=not args.no_layout_transforms)
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    unit_ms: dict[str, float] = {}
    cases = []
    for _ in tqdm(range(args.n), desc="subnets", unit="arch"):
        arch = ArchConfig.sample(rng, DEFAULT_SPACE)
        keys = setting_op_keys(arch, REFERENCE_SETTING)
        for key in keys:
            if str(key) not in unit_ms:
                unit_ms[str(key)] = measure_unit(runtime, key).mean
        program = REFERENCE_SETTING.program(TraceNetStudent(arch))
        inputs = program.example_inputs()
        model_bytes = export_onnx(program, inputs)
        session = runtime.session(model_bytes)
        feeds = onnx_feeds(session, inputs)
        case = {"arch": arch.to_dict(), "units": sum(unit_ms[str(k)] for k in keys),
                "program": min(measure(partial(session.run, None, feeds)).median for _ in range(2))}
        if args.pieces:
            case["pieces"] = time_pieces(runtime, model_bytes, feeds, args.pieces)
        cases.append(case)

    layout = "without layout transforms" if args.no_layout_transforms else "all optimisations"
    print(f"ONNX Runtime {runtime.runtime_version}, {args.threads} threads, {layout}, n={args.n}, seed={args.seed}")
    program = np.array([c["program"] for c in cases])
    print(f"  program: mean {program.mean():.2f} ms")
    for column in ("units", "pieces")[: 2 if args.pieces else 1]:
        ratio = np.array([c[column] for c in cases]) / program
        print(f"  {column} / program: mean {ratio.mean():.3f}, range {ratio.min():.3f}-{ratio.max():.3f}, "
              f"coefficient of variation {ratio.std() / ratio.mean():.1%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(cases, f, indent=1)


if __name__ == "__main__":
    main()
