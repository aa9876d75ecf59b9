import json

import pytest
import torch

from nas.cli.main import main
from nas.deploy.export import export_student
from nas.latency.setting import LatencySetting
from search_spaces import ArchConfig, TraceNetStudent

TINY = "tracenet_tiny"


@pytest.fixture(scope="module")
def tiny_student():
    return TraceNetStudent(ArchConfig.sample(2, TINY))


@pytest.mark.parametrize("fmt", ["onnx", "executorch", "torchscript"])
def test_export_parity_with_pytorch(tmp_path, tiny_student, fmt):
    info = export_student(tiny_student, fmt, tmp_path, LatencySetting(image_size=(96, 64), tap=(0.2, 0.7)))
    assert (tmp_path / info["file"]).stat().st_size > 0
    assert info["parity_max_abs_diff"] is not None and info["parity_max_abs_diff"] < 1e-4
    stored = json.loads((tmp_path / "export.json").read_text())
    assert stored["inputs"]["clicks"]["shape"] == [1, 4, 3] and stored["setting"]["image_hw"] == [64, 96]
    crop = stored["inputs"]["image_crop"]
    y0, y1, x0, x1 = crop["box_yx"]
    assert crop["shape"] == [1, 3, y1 - y0, x1 - x0]  # the traced input region, not the whole image


def test_coreml_converts_here_and_says_prediction_needs_macos(tmp_path, tiny_student):
    info = export_student(tiny_student, "coreml", tmp_path)
    assert (tmp_path / "model.mlpackage").is_dir()
    assert info["parity_max_abs_diff"] is None and "macOS" in info["parity"]


def test_bench_reports_latency_memory_and_the_table(tmp_path, tiny_student, tiny_table_path, capsys):
    arch = tmp_path / "arch.json"
    arch.write_text(tiny_student.arch.to_json())
    assert main(["bench", "--arch", str(arch), "--backend", "onnxruntime", "--threads", "1", "--target",
                 str(tiny_table_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["measured_ms"] > 0 and report["runs"] >= 10 and report["table"] == "tiny-unit"
    assert report["predicted_ms"] > 0 and report["peak_memory_mb"] is not None and report["peak_memory_mb"] >= 0


def test_export_cli_and_errors(tmp_path, tiny_student, capsys):
    arch = tmp_path / "arch.json"
    arch.write_text(tiny_student.arch.to_json())
    assert main(["export", "--arch", str(arch), "--format", "onnx", "--out", str(tmp_path / "o")]) == 0
    assert "max |Δ| vs PyTorch" in capsys.readouterr().out
    assert main(["export", "--arch", str(tmp_path / "missing.json"), "--format", "onnx", "--out", str(tmp_path)]) == 2
    assert main(["export", "--arch", str(arch), "--format", "onnx", "--window", "3", "--out",
                 str(tmp_path / "w")]) == 2
    assert not (tmp_path / "w").exists()


@pytest.fixture(scope="module")
def calibrated_student(tiny_student):
    """The tiny student with BN statistics from data, so int8 activations span realistic ranges."""
    import torch

    from search_spaces.students.tracing_check import calibrate_bn

    calibrate_bn(tiny_student, torch.Generator().manual_seed(0))
    return tiny_student.eval()


@pytest.mark.parametrize("fmt", ["executorch", "onnx"])
def test_int8_export_runs_on_the_runtime_with_a_quantization_parity_report(tmp_path, calibrated_student, fmt,
                                                                         capsys):
    arch = tmp_path / "arch.json"
    arch.write_text(calibrated_student.arch.to_json())
    from search_spaces import save_student

    checkpoint = save_student(calibrated_student, tmp_path / "student.pt")
    assert main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--precision", "int8",
                 "--out", str(tmp_path / "q"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    stored = json.loads((tmp_path / "q" / "export.json").read_text())
    assert stored == info and (tmp_path / "q" / info["file"]).stat().st_size == info["program_bytes"]
    report = info["precision_parity"]
    assert info["precision"] == "int8" and info["quantization"]["calibration_data"] == "bundled photos"
    assert report["images"] == 4  # one tap on each bundled photo
    # quantized (not a float program under another name), and close to the float program
    float_info = export_student(calibrated_student, fmt, tmp_path / "f")
    assert 0 < report["max_abs_logit_diff"] and report["mask_iou_mean"] > 0.5
    assert float_info["precision"] == "fp32"
    if fmt == "executorch":  # the runtime computes the quantized PT2E graph, rounding its own way: it
        # differs from that graph by no more than the graph differs from float
        quantization_error = max(report["max_abs_logit_diff"], report["max_abs_iou_logit_diff"])
        assert info["parity_max_abs_diff"] <= 2 * quantization_error
    # every convolution runs int8; the click encoding's arithmetic (arange, amax) stays float
    kept = info["quantization"]["float_ops"]
    assert not any(op.startswith(("conv", "Conv", "/backbone")) and "Conv" in op for op in kept)
    assert not any(op.startswith("conv") for op in kept) and any(op.startswith(("arange", "/Sub", "/Equal"))
                                                                  for op in kept), kept


def test_fp16_export_runs_on_executorch_with_a_parity_report(tmp_path, calibrated_student, capsys):
    arch = tmp_path / "arch.json"
    arch.write_text(calibrated_student.arch.to_json())
    assert main(["export", "--arch", str(arch), "--format", "executorch", "--precision", "fp16",
                 "--out", str(tmp_path / "h"), "--json"]) == 0
    capsys.readouterr()
    # the CLI's student has fresh BN statistics; the parity is checked on the calibrated one
    before = {name: value.clone() for name, value in calibrated_student.state_dict().items()}
    info = export_student(calibrated_student, "executorch", tmp_path / "h2", precision="fp16")
    assert json.loads((tmp_path / "h2" / "export.json").read_text()) == info
    assert info["precision"] == "fp16" and info["inputs"]["image_crop"]["dtype"] == "float16"
    report = info["precision_parity"]
    # float16 rounds (it is not float32 under another name) but keeps the masks
    assert report["images"] == 4 and 0 < report["max_abs_logit_diff"] < 0.1 and report["mask_iou_mean"] > 0.95
    assert (tmp_path / "h2" / "model.pte").stat().st_size == info["program_bytes"]
    # the student it exported from is float32 again, value for value
    after = calibrated_student.state_dict()
    assert all(after[name].dtype == value.dtype and torch.equal(after[name], value) for name, value in before.items())


def test_int8_export_errors(tmp_path, tiny_student, capsys):
    arch = tmp_path / "arch.json"
    arch.write_text(tiny_student.arch.to_json())
    for args, message in ((["--format", "onnx", "--precision", "int8", "--calibration-data",
                            f"grabcut:{tmp_path / 'none'}"], "calibration data"),
                          (["--format", "coreml", "--precision", "int8"], "int8 export is for executorch and onnx"),
                          (["--format", "onnx", "--precision", "fp16"], "fp16 export is for executorch;"),
                          (["--format", "onnx", "--calibration-data", "grabcut:x"], "add --precision int8")):
        assert main(["export", "--arch", str(arch), "--out", str(tmp_path / "q"), *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not (tmp_path / "q").exists()
