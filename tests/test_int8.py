"""Int8 programs through latency: quantized units on both runtimes, int8 tables and their precision."""

import csv as csv_module
import json

import onnx
import pytest
import torch

from nas.cli.main import main
from nas.latency.op_keys import OpKey
from nas.latency.op_kinds import op_module
from nas.latency.predict import predict_latency
from nas.latency.profiling.backends import get_backend
from nas.latency.profiling.profiler import profile
from nas.latency.setting import LatencySetting
from nas.latency.table import LatencyTable, LatencyTableError, PrecisionMismatchError
from nas.latency.validate import random_archs
from search_spaces.common.errors import InvalidValueError
from search_spaces.space import ArchConfig

TINY = "tracenet_tiny"
CONV_HSWISH = OpKey.parse("conv[act=hardswish,cin=16,cout=32,d=1,g=1,k=1,s=1]@16x16")
CONV_RELU = OpKey.parse("conv[act=relu,cin=16,cout=32,d=1,g=1,k=3,s=1]@16x16")
ADD = OpKey.parse("eltwise[c=16,fn=add]@16x16")


def _close_to_float(out: torch.Tensor, reference: torch.Tensor) -> bool:
    """Off the float output by int8 rounding: on average within 2 % of its range (a wrong memory order
    is off by ~30 %), and not the float output itself. The mean, not the max: ONNX Runtime's u8s8
    kernels on x86 without VNNI saturate a few sums (its documented VPMADDUBSW overflow)."""
    span = float(reference.max() - reference.min())
    diff = (torch.as_tensor(out).float().reshape(reference.shape) - reference).abs()
    return 0 < float(diff.mean()) <= 0.02 * span


@pytest.mark.parametrize("key", [CONV_HSWISH, CONV_RELU, ADD], ids=str)
def test_a_quantized_unit_lowers_and_runs_on_executorch_xnnpack(key):
    module, inputs = op_module(key)
    with torch.no_grad():
        reference = module.eval()(*inputs)
    runtime = get_backend("executorch-xnnpack", 1, "int8")
    run = runtime.prepare(module, inputs)  # its outputs live in the program's memory while it does
    (out,) = run()
    assert _close_to_float(out.contiguous(), reference)
    # XNNPACK's quantizer annotates conv + ReLU and add, not hardswish: that op alone stays float
    expected = ["hardswish"] if key == CONV_HSWISH else []
    assert runtime.lowerings[repr(module)].float_ops == expected


@pytest.mark.parametrize("key", [CONV_HSWISH, ADD], ids=str)
def test_a_quantized_unit_lowers_and_runs_on_onnxruntime(key):
    module, inputs = op_module(key)
    with torch.no_grad():
        reference = module.eval()(*inputs)
    runtime = get_backend("onnxruntime", 1, "int8")
    model = runtime.program(module, inputs)
    ops = {node.op_type for node in onnx.load_from_string(model).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    (out,) = runtime.prepare(module, inputs)()
    assert _close_to_float(torch.from_numpy(out), reference)
    # ONNX Runtime has int8 kernels for conv and add; it runs hardswish as a float HardSigmoid and Mul
    expected = {"HardSigmoid", "Mul"} if key == CONV_HSWISH else set()
    assert set(runtime.lowerings[repr(module)].float_ops) == expected


def test_int8_is_refused_where_a_runtime_has_no_int8_path():
    with pytest.raises(InvalidValueError, match="int8 is for onnxruntime and executorch-xnnpack"):
        get_backend("torch", 1, "int8")
    with pytest.raises(InvalidValueError, match="unknown precision"):
        get_backend("onnxruntime", 1, "bf16")


def test_an_int8_table_records_its_float_ops_and_prices_int8_programs_only(tmp_path, capsys, tiny_table_path):
    out = tmp_path / "int8.json"
    table = profile([CONV_HSWISH, ADD], out, "host-int8", "onnxruntime", 1, precision="int8", progress=False,
                    max_seconds=0.05)
    loaded = LatencyTable.load(out)
    assert loaded.precision == "int8" and loaded.device["dtype"] == "int8"
    assert loaded.float_units == table.float_units == {CONV_HSWISH.config: ["HardSigmoid", "Mul"]}
    # resuming it at another precision would mix two kinds of programs in one table
    with pytest.raises(LatencyTableError, match="dtype='int8', not 'float32'"):
        profile([ADD], out, "host-int8", "onnxruntime", 1, progress=False)
    arch = ArchConfig.sample(0, TINY)
    with pytest.raises(PrecisionMismatchError, match="prices fp32 programs, not int8"):
        predict_latency(arch, LatencyTable.load(tiny_table_path), LatencySetting(precision="int8"))
    assert main(["latency", "validate", "--target", str(tiny_table_path), "--backend", "onnxruntime",
                 "--precision", "int8", "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert "prices fp32 programs, not int8" in err and err.count("\n") == 1


def test_measured_int8_programs_calibrate_an_int8_table(tmp_path, capsys, tiny_table_path):
    csv = tmp_path / "int8.csv"
    assert main(["latency", "measure", "--backend", "onnxruntime", "--precision", "int8", "--space", TINY,
                 "--n", "3", "--rounds", "1", "--out", str(csv)]) == 0
    assert "3 int8 programs" in capsys.readouterr().out
    rows = csv.read_text().splitlines()
    assert len(rows) == 4 and all(float(r.rsplit(",", 1)[1]) > 0 for r in rows[1:])
    out = tmp_path / "cal.json"
    assert main(["latency", "calibrate", "--base", str(tiny_table_path), "--measurements", str(csv),
                 "--models", "global", "--precision", "int8", "--runtime", "onnxruntime", "--out", str(out)]) == 0
    calibrated = LatencyTable.load(out)
    assert calibrated.precision == "int8" and calibrated.provenance == "calibrated"
    arch = ArchConfig.sample(0, TINY)
    assert predict_latency(arch, calibrated, LatencySetting(precision="int8")).latency_ms > 0
    with pytest.raises(PrecisionMismatchError):
        predict_latency(arch, calibrated, LatencySetting())
    # the architectures validate draws for the same seed
    archs = [ArchConfig.from_json(row["arch"]) for row in csv_module.DictReader(rows)]
    assert archs == random_archs(3, 0, TINY)


def test_bench_times_the_int8_program(tmp_path, capsys):
    arch = tmp_path / "arch.json"
    arch.write_text(ArchConfig.sample(0, TINY).to_json())
    assert main(["bench", "--arch", str(arch), "--backend", "onnxruntime", "--precision", "int8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["precision"] == "int8" and report["measured_ms"] > 0 and report["table"] is None
