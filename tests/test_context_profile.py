import dataclasses
import json
import statistics

import onnx
import pytest

import nas.latency.profiling.profiler as profiler
from nas.cli.main import main
from nas.latency.op_keys import OpKey
from nas.latency.predict import setting_op_keys
from nas.latency.profiling.backends import OnnxRuntimeBackend, export_onnx
from nas.latency.profiling.in_context import (
    ContextProfileError,
    context_archs,
    float_unit_ops,
    node_units,
    profile_in_context,
    unit_times,
)
from nas.latency.profiling.profiler import covering_archs, op_module
from nas.latency.profiling.quantized import qdq_float_graph_nodes
from nas.latency.setting import REFERENCE_SETTING, LatencySetting
from nas.latency.table import LatencyTable
from search_spaces.space import get_space
from search_spaces.students.student import TraceNetStudent

TINY = "tracenet_tiny"


@pytest.fixture(scope="module")
def traced():
    """A tiny covering program with SE blocks and residual crops (a fixed window), its op keys and ONNX graph."""
    arch = next(a for a in reversed(context_archs(TINY)) if a.se[0] and a.kernels[0][0] == 7)
    windowed = LatencySetting(window=0.5)
    keys = setting_op_keys(arch, windowed)
    program = windowed.program(TraceNetStudent(arch))
    model = export_onnx(program, program.example_inputs())
    return arch, keys, program, model


def test_context_archs_cover_every_configuration_at_every_resolution_in_turn():
    archs = context_archs(TINY)
    resolutions = get_space(TINY).resolutions
    assert len(archs) == len(covering_archs(TINY)) * len(resolutions)
    # each architecture's resolutions back to back: drift during a profile is not tied to a resolution
    assert [a.resolution for a in archs[: 2 * len(resolutions)]] == list(resolutions) * 2
    assert archs[0] == dataclasses.replace(covering_archs(TINY)[0], resolution=resolutions[0])


def test_every_graph_node_goes_to_the_unit_it_computes(traced):
    _, keys, _, model = traced
    graph = onnx.load_from_string(model).graph
    owner = node_units(graph, keys)
    assert owner[0] == 0 and owner[-1] == len(keys) - 1 and owner == sorted(owner)  # traced order
    cropped_adds = 0
    for unit, key in enumerate(keys[1:-1], start=1):
        ops = [node.op_type for node, o in zip(graph.node, owner, strict=True) if o == unit]
        if key.kind == "conv":
            assert ops.count("Conv") == 1, (key, ops)
        elif key.kind == "se":  # its reduce, two 1x1 convs and the gate's product, not units of their own
            assert ops.count("ReduceMean") == 1 and ops.count("Conv") == 2 and ops[-1] == "Mul", ops
        elif key.kind == "eltwise":
            assert ops.count("Add") == 1 and set(ops) <= {"Add", "Slice", "Constant"}, ops
            cropped_adds += "Slice" in ops  # a residual's crop is priced with its add
    assert cropped_adds > 0


def test_units_that_do_not_match_the_graph_are_an_error(traced):
    _, keys, _, model = traced
    graph = onnx.load_from_string(model).graph
    extra = OpKey.parse("conv[act=none,cin=8,cout=8,d=1,g=1,k=1,s=1]@4x4")
    with pytest.raises(ContextProfileError, match="matched"):
        node_units(graph, [*keys[:-1], extra, keys[-1]])
    with pytest.raises(ContextProfileError, match="no rule"):
        node_units(graph, [keys[0], OpKey.parse("maxpool2d[act=none,c=8,k=3,s=2]@4x4"), keys[-1]])


def test_profiled_nodes_and_layout_conversions_are_summed_per_unit(traced, tmp_path):
    """A profile in ONNX Runtime's format: every node 1 ms (convs under their NCHWc names), plus a
    conversion out of NCHWc before each SE and one back after it (0.5 ms each)."""
    _, keys, _, model = traced
    graph = onnx.load_from_string(model).graph
    owner = node_units(graph, keys)
    run, expected = [], [0.0] * len(keys)

    def event(name: str, op: str, us: float) -> dict:
        return {"cat": "Node", "name": f"{name}_kernel_time", "dur": us, "args": {"op_name": op}}

    for node, unit in zip(graph.node, owner, strict=True):
        if node.op_type in ("Identity", "Constant"):
            continue  # ONNX Runtime folds these away
        if node.op_type == "ReduceMean":
            run.append(event("ReorderOutput_token_1", "ReorderOutput", 500))
            expected[unit] += 0.5
        run.append(event(f"{node.output[0]}_nchwc" if node.op_type == "Conv" else node.name, node.op_type, 1000))
        expected[unit] += 1.0
        if node.op_type == "Mul" and keys[unit].kind == "se":
            run.append(event("ReorderInput_token_2", "ReorderInput", 500))
            expected[unit] += 0.5
    path = tmp_path / "profile.json"
    path.write_text(json.dumps([{"cat": "Session", "name": "model_run", "dur": 1}] + run * 3))
    assert unit_times(model, keys, str(path), runs=2) == pytest.approx(expected)
    assert sum(expected[1:-1]) > 0 and expected[0] > 0 and expected[-1] > 0


def test_profile_in_context_prices_every_unit(traced):
    _, keys, program, _ = traced
    profiled = profile_in_context(program, program.example_inputs(), keys, OnnxRuntimeBackend(1), runs=3)
    assert len(profiled.unit_ms) == len(keys) and profiled.wall_ms > 0 and profiled.float_units == {}
    assert all(ms > 0 for key, ms in zip(keys, profiled.unit_ms, strict=True) if key.kind in ("conv", "se", "clicks"))


def test_nas_profile_in_context_writes_a_table_and_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "ctx.json"
    argv = ["profile", "--in-context", "--device", "host-ctx", "--backend", "onnxruntime", "--space", TINY,
            "--out", str(out)]
    assert main([*argv, "--limit", "1"]) == 0
    log_path = tmp_path / f"ctx.{TINY}.programs.jsonl"
    with log_path.open("a") as f:
        f.write('{"arch": {"space": ')  # a write cut short by an interruption: dropped on resume
    assert main([*argv, "--limit", "2"]) == 0  # resumes: profiles the second program only
    log = log_path.read_text().splitlines()
    assert len(log) == 3 and json.loads(log[0])["name"] == "host-ctx" and json.loads(log[0])["priced_before"] == []
    table = LatencyTable.load(out)
    assert table.notes.startswith("in context: ONNX Runtime node profiles of 2 covering programs")
    assert table.device["runtime"] == "onnxruntime" and table.space == TINY
    for arch in context_archs(TINY)[:2]:
        assert not table.missing(setting_op_keys(arch, REFERENCE_SETTING))
    capsys.readouterr()
    assert main([*argv, "--threads", "2"]) == 2  # the table is for 1 thread
    assert "threads=1" in capsys.readouterr().err
    assert main(["profile", "--in-context", "--device", "d", "--backend", "executorch-xnnpack",
                 "--out", str(tmp_path / "x.json")]) == 2
    assert "--backend onnxruntime" in capsys.readouterr().err
    isolated = tmp_path / "isolated.json"
    assert main(["profile", "--device", "host-ctx", "--backend", "onnxruntime", "--space", TINY, "--limit", "1",
                 "--out", str(isolated)]) == 0
    capsys.readouterr()
    assert main([*argv[:-1], str(isolated)]) == 2  # in-context units do not join units timed alone
    assert "not in context" in capsys.readouterr().err
    monkeypatch.setattr(profiler, "_cpuinfo", lambda: ["flags\t: avx2 fma"])
    table.device["isa"] = ["avx2", "fma"]  # the table is of this host's CPU, its resume log is not
    table.save(out)
    header = json.loads(log[0]) | {"isa": ["avx2", "fma", "avx512_vnni"]}
    log_path.write_text("\n".join([json.dumps(header), *log[1:]]) + "\n")
    assert main([*argv, "--limit", "3"]) == 2
    assert "programs.jsonl: was measured on another CPU (instruction sets only it has: avx512_vnni" in \
        capsys.readouterr().err


def test_another_space_adds_the_units_the_table_lacks_and_keeps_the_rest(tmp_path):
    """A fixed backbone profiled into a table of the searchable space: its programs price only the units
    the table lacks (the tap head's are shared); the table's own entries stay as they were."""
    out = tmp_path / "ctx.json"
    argv = ["profile", "--in-context", "--device", "host-ctx", "--backend", "onnxruntime", "--out", str(out)]
    assert main([*argv, "--space", TINY, "--limit", "1"]) == 0
    before = LatencyTable.load(out)
    fixed = "fixed:mobilenetv3_small_100"
    assert main([*argv, "--space", fixed, "--limit", "1"]) == 0
    after = LatencyTable.load(out)
    assert {k: after.entries[k] for k in before.entries} == before.entries
    assert not after.missing(setting_op_keys(context_archs(fixed)[0], REFERENCE_SETTING))
    assert len(after.entries) > len(before.entries)
    log = (tmp_path / "ctx.fixed-mobilenetv3_small_100.programs.jsonl").read_text().splitlines()
    assert json.loads(log[0])["priced_before"] == sorted(before.entries) and len(log) == 2
    added = len(after.entries) - len(before.entries)
    assert after.space == TINY and after.notes == f"{before.notes}; + {fixed}: 1 programs priced {added} more units"
    assert main([*argv, "--space", fixed, "--limit", "1"]) == 0  # done: a rerun changes nothing
    assert LatencyTable.load(out).to_json() == after.to_json()


def _graph(*op_types: str) -> onnx.GraphProto:
    """A graph of one-input nodes in this order (node_units reads only their types and wiring)."""
    nodes = [onnx.helper.make_node(op, [f"v{i}"], [f"v{i + 1}"], name=f"n{i}") for i, op in enumerate(op_types)]
    return onnx.helper.make_graph(nodes, "g", [], [])


def test_activations_bns_and_concats_of_fixed_backbones_are_matched_to_their_units():
    clicks, head = OpKey.parse("clicks[c=5]@8x8"), OpKey.parse("tap_head[cm=8,f=32,hidden=16,layers=1]@4x4")
    gelu_conv = OpKey.parse("conv[act=gelu,cin=8,cout=8,d=1,g=1,k=1,s=1]@8x8")
    add, cat = OpKey.parse("eltwise[c=8,fn=add]@8x8"), OpKey.parse("eltwise[c=16,fn=cat]@8x8")
    bn, relu = OpKey.parse("bn[c=16,fn=bn]@8x8"), OpKey.parse("act[c=16,fn=relu]@8x8")
    keys = [clicks, gelu_conv, add, cat, bn, relu, head]
    # a GELU's five nodes (its Add too) are its conv's; Constants inside it do not count
    graph = _graph("Mul", "Conv", "Div", "Constant", "Erf", "Add", "Mul", "Mul", "Add", "Concat",
                   "BatchNormalization", "Relu", "Einsum")
    assert node_units(graph, keys) == [0, 1, 1, 1, 1, 1, 1, 1, 2, 3, 4, 5, 6]
    with pytest.raises(ContextProfileError, match="expected its activation's nodes"):
        node_units(_graph("Conv", "Relu", "Add", "Concat", "BatchNormalization", "Relu"), keys)
    silu = OpKey.parse("conv[act=silu,cin=8,cout=8,d=1,g=1,k=1,s=1]@8x8")
    with pytest.raises(ContextProfileError, match="no rule for the activation 'silu'"):
        node_units(_graph("Conv", "Sigmoid", "Mul"), [clicks, silu, head])


def test_an_int8_program_keeps_the_float_order_and_each_node_goes_to_its_unit(traced):
    _, keys, program, model = traced
    runtime = OnnxRuntimeBackend(1, precision="int8")
    quantized = onnx.load_from_string(runtime.program(program, program.example_inputs())).graph
    owner = node_units(quantized, keys, "int8")
    assert owner == sorted(owner) and owner[-1] == len(keys) - 1
    # the float graph's nodes in the float order, less what quantization folds: shared biases' Identity
    # nodes (now initializers) and the ReLUs whose range the next QuantizeLinear clips
    computing = [n.op_type for n in quantized.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")]
    float_nodes = [n.op_type for n in onnx.load_from_string(model).graph.node if n.op_type not in ("Identity", "Relu")]
    assert computing == float_nodes
    assert "QLinear" not in str(set(computing)) and {"QuantizeLinear", "DequantizeLinear"} <= {
        n.op_type for n in quantized.node}
    for unit, key in enumerate(keys[1:-1], start=1):
        ops = [n.op_type for n, o in zip(quantized.node, owner, strict=True) if o == unit]
        if key.kind == "conv":
            assert ops.count("Conv") == 1 and "Relu" not in ops, (key, ops)
        elif key.kind == "se":
            assert ops.count("ReduceMean") == 1 and ops.count("Conv") == 2, ops


def test_the_ops_a_quantized_program_leaves_float_are_those_its_units_leave_float_alone(traced):
    """Independent answer: each unit quantized on its own (`op_module`), as the isolated int8 table
    records it. ONNX Runtime inserts some of the float nodes unnamed (a hardswish's HardSigmoid and Mul)."""
    _, keys, program, _ = traced
    runtime = OnnxRuntimeBackend(1, precision="int8")
    in_program = float_unit_ops(runtime.program(program, program.example_inputs()), keys)
    one_per_kind = {(key.kind, dict(key.attrs).get("act")): key for key in keys}.values()
    assert {key.kind for key in one_per_kind} >= {"clicks", "conv", "se", "eltwise", "upsample", "tap_head"}
    for key in one_per_kind:
        module, inputs = op_module(key)
        _, alone = qdq_float_graph_nodes(runtime.program(module, inputs))
        assert sorted(in_program.get(key.config, [])) == sorted(node.op_type for node in alone), key
    assert set(in_program) >= {"clicks[c=5]"} and any("hardswish" in c for c in in_program)
    assert not any("act=relu" in config for config in in_program)  # int8 convs fuse their ReLU


def test_nas_profile_in_context_at_int8_prices_a_quantized_program(tmp_path, capsys):
    out = tmp_path / "ctx-int8.json"
    assert main(["profile", "--in-context", "--precision", "int8", "--device", "host-ctx-int8", "--backend",
                 "onnxruntime", "--space", TINY, "--limit", "1", "--out", str(out)]) == 0
    table = LatencyTable.load(out)
    assert table.precision == "int8" and table.notes.startswith("in context:")
    keys = setting_op_keys(context_archs(TINY)[0], LatencySetting(precision="int8"))
    assert not table.missing(keys)
    assert all(table.latency(key)[0] > 0 for key in keys if key.kind in ("conv", "se", "clicks"))
    # the ops left float, per configuration, as in an isolated int8 table; they also reach the resume log
    hardswish_convs = [ops for config, ops in table.float_units.items() if config.startswith("conv[act=hardswish")]
    assert table.float_units["clicks[c=5]"] and hardswish_convs
    assert all(ops == ["HardSigmoid", "Mul"] for ops in hardswish_convs)
    log = next(tmp_path.glob("*.programs.jsonl")).read_text().splitlines()
    assert json.loads(log[1])["float_units"] == table.float_units


def test_each_program_is_priced_at_the_speed_its_probe_tells(tmp_path):
    """Programs profiled while the machine ran at another speed (a probe program timed before each says
    how fast): their units are priced as if the machine had run at the profile's median speed."""
    out = tmp_path / "ctx.json"
    argv = ["profile", "--in-context", "--device", "host-ctx", "--backend", "onnxruntime", "--space", TINY,
            "--out", str(out), "--limit", "3"]
    assert main(argv) == 0
    log_path = tmp_path / f"ctx.{TINY}.programs.jsonl"
    header, *records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(records) == 3 and all(record["probe_ms"] > 0 for record in records)
    for record, probe_ms in zip(records, [1.0, 2.0, 4.0], strict=True):  # the machine slowed to 1/2, then 1/4
        record["probe_ms"] = probe_ms
        record["units"] = {key: [3.0] * len(times) for key, times in record["units"].items()}
    log_path.write_text("".join(json.dumps(line) + "\n" for line in [header, *records]))
    out.unlink()
    assert main(argv) == 0  # every program is in the log: the table is built from it alone
    expected: dict[str, list[float]] = {}
    for record in records:
        for key, times in record["units"].items():
            expected.setdefault(key, []).extend(3.0 * 2.0 / record["probe_ms"] for _ in times)  # median probe: 2 ms
    table = LatencyTable.load(out)
    assert set(table.entries) == set(expected) and table.probe_ms == 2.0  # the speed validate compares with
    for key, prices in expected.items():
        assert table.entries[key].median == pytest.approx(statistics.median(prices))
    del records[1]["probe_ms"]
    log_path.write_text("".join(json.dumps(line) + "\n" for line in [header, *records]))
    assert main(argv) == 2  # a log of an older version cannot be priced this way
