"""Float16 programs: ExecuTorch-XNNPACK runs them (units, measured programs, a calibrated fp16 table);
the runtimes without float16 kernels here refuse them."""

import pytest
import torch

from nas.cli.main import main
from nas.latency.op_keys import OpKey
from nas.latency.op_kinds import op_module
from nas.latency.predict import predict_latency
from nas.latency.profiling.backends import get_backend
from nas.latency.profiling.profiler import profile
from nas.latency.setting import LatencySetting
from nas.latency.table import LatencyTable, PrecisionMismatchError
from search_spaces.common.errors import InvalidValueError
from search_spaces.space import ArchConfig

TINY = "tracenet_tiny"
CONV_HSWISH = OpKey.parse("conv[act=hardswish,cin=16,cout=32,d=1,g=1,k=1,s=1]@16x16")
ADD = OpKey.parse("eltwise[c=16,fn=add]@16x16")


@pytest.mark.parametrize("key", [CONV_HSWISH, ADD], ids=str)
def test_a_float16_unit_lowers_and_runs_on_executorch_xnnpack(key):
    module, inputs = op_module(key)
    with torch.no_grad():
        reference = module.eval()(*inputs)
    runtime = get_backend("executorch-xnnpack", 1, "fp16")
    run = runtime.prepare(module, inputs)  # its outputs live in the program's memory while it does
    (out,) = run()
    assert out.dtype == torch.float16
    # float16 rounding: a relative error of ~1e-3, far from a wrong memory order, and not float32 itself
    diff = (out.float().contiguous() - reference).abs()
    assert 0 < float(diff.max()) <= 1e-2 * float(reference.abs().max())
    assert runtime.lowerings[repr(module)].float_ops == []
    # the caller's module stays float32
    assert all(p.dtype == torch.float32 for p in module.parameters())


def test_float16_is_refused_where_a_runtime_has_no_float16_kernels():
    for backend in ("onnxruntime", "torch"):
        with pytest.raises(InvalidValueError, match=f"{backend} does not run fp16 programs here; fp16 is for "
                                                    "executorch-xnnpack"):
            get_backend(backend, 1, "fp16")


def test_a_float16_table_is_profiled_and_prices_float16_programs_only(tmp_path):
    out = tmp_path / "fp16.json"
    profile([CONV_HSWISH, ADD], out, "host-fp16", "executorch-xnnpack", 1, precision="fp16", progress=False,
            max_seconds=0.05)
    table = LatencyTable.load(out)
    assert table.precision == "fp16" and table.device["dtype"] == "float16" and table.float_units == {}
    assert table.latency(CONV_HSWISH)[0] > 0 and not table.missing([CONV_HSWISH, ADD])


def test_measured_float16_programs_calibrate_a_float16_table(tmp_path, capsys, tiny_table_path):
    csv = tmp_path / "fp16.csv"
    assert main(["latency", "measure", "--backend", "executorch-xnnpack", "--precision", "fp16", "--space", TINY,
                 "--n", "3", "--rounds", "1", "--out", str(csv)]) == 0
    assert "3 fp16 programs" in capsys.readouterr().out
    out = tmp_path / "cal.json"
    assert main(["latency", "calibrate", "--base", str(tiny_table_path), "--measurements", str(csv),
                 "--models", "global", "--precision", "fp16", "--runtime", "executorch-xnnpack",
                 "--out", str(out)]) == 0
    calibrated = LatencyTable.load(out)
    assert calibrated.precision == "fp16" and calibrated.device["dtype"] == "float16"
    arch = ArchConfig.sample(0, TINY)
    assert predict_latency(arch, calibrated, LatencySetting(precision="fp16")).latency_ms > 0
    for other in ("fp32", "int8"):
        with pytest.raises(PrecisionMismatchError, match=f"prices fp16 programs, not {other}"):
            predict_latency(arch, calibrated, LatencySetting(precision=other))
