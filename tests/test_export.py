import json

import pytest

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
