"""Export a student to a phone runtime as its static one-tap program (`TracedTap`), with a parity check.

The program is frozen to one setting, the same reference setting latencies are quoted for
(`LatencySetting`: by default a 4:3 image whose long side is the resolution, the tap at the image
centre, the whole output). Its inputs are the image cropped to the traced
input region (1, 3, h, w), normalised as `Segmenter` does, and a fixed number of click rows
(1, N, 3) `[x, y, label]` in full-image pixels, the tap first and unused rows labelled -1; its
outputs are the window's mask logits (1, 1, cells_h, cells_w) at stride 8 and the IoU logit.
`export.json` beside the file records all of it, with the parity against PyTorch.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from nas.deploy.quantize import CalibrationItem, calibration_items, precision_parity
from nas.latency.profiling.backends import (
    export_coreml,
    export_executorch,
    export_onnx,
    half_inputs,
    half_precision,
    lower_to_xnnpack,
    onnx_feeds,
    package_version,
)
from nas.latency.profiling.quantized import float_ops, qdq_float_nodes, quantize_onnx, quantize_pt2e
from nas.latency.setting import PRECISIONS, REFERENCE_SETTING, LatencySetting
from search_spaces.common.errors import InvalidValueError
from search_spaces.common.files import atomic_write
from search_spaces.students.student import MASK_STRIDE, TraceNetStudent
from search_spaces.students.traced_tap import TracedTap

FORMATS = {"onnx": "model.onnx", "executorch": "model.pte", "coreml": "model.mlpackage", "torchscript": "model.pt"}
# formats a reduced-precision program is written in (fp16: XNNPACK's float16 kernels; ONNX Runtime's CPU
# provider has none on x86)
PRECISION_FORMATS = {"int8": ("executorch", "onnx"), "fp16": ("executorch",)}


def _max_diff(reference: tuple[torch.Tensor, ...], outputs: list) -> float:
    return max(float((r - torch.as_tensor(o).reshape(r.shape)).abs().max()) for r, o in zip(reference, outputs,
                                                                                             strict=True))


def export_student(model: TraceNetStudent, fmt: str, out_dir: str | Path, setting: LatencySetting = REFERENCE_SETTING,
                   clicks: int = 4, precision: str = "fp32", calibration_data: str | None = None) -> dict:
    """Write `out_dir/FORMATS[fmt]` and `out_dir/export.json`; returns the latter's content.

    `precision="int8"`: post-training W8A8 quantization (`nas/latency/profiling/quantized.py`) for the executorch and
    onnx formats, calibrated on `calibration_data` (a dataset spec; None: the bundled photos). `"fp16"`: the
    executorch program in float16 (its inputs too). Either is checked against the float program on those
    images (`precision_parity`)."""
    if fmt not in FORMATS:
        raise InvalidValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if clicks < 1:
        raise InvalidValueError(f"an exported program takes at least one click (the tap), got {clicks}")
    if precision not in PRECISIONS:
        raise InvalidValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision != "fp32" and fmt not in PRECISION_FORMATS[precision]:
        raise InvalidValueError(f"{precision} export is for {' and '.join(PRECISION_FORMATS[precision])}; "
                                f"{fmt} exports float32")
    arch = model.arch
    image_hw, tap_xy = setting.input_hw(arch), setting.tap_xy(arch)
    program = TracedTap(model.eval(), image_hw, tap_xy, setting.window_px(arch)).eval()
    image_crop, click_rows = program.example_inputs(clicks)
    click_rows[0, 1:, 2] = -1.0  # unused rows are padding
    inputs = (image_crop, click_rows)
    with torch.no_grad():
        reference = program(*inputs)
    out = Path(out_dir)
    path = out / FORMATS[fmt]
    if precision != "fp32":
        items = calibration_items(program, image_hw, tap_xy, clicks, calibration_data)
        return _export_reduced(program, precision, fmt, out, path, items, calibration_data, _describe(
            program, fmt, path, setting, image_hw, tap_xy, image_crop, click_rows, reference))
    parity, runtime = None, None
    if fmt == "onnx":
        data = export_onnx(program, inputs)
        atomic_write(path, lambda f: f.write(data))
        import onnxruntime

        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        parity = _max_diff(reference, session.run(None, onnx_feeds(session, inputs)))
        runtime = f"onnxruntime {onnxruntime.__version__}"
    elif fmt == "executorch":
        data = export_executorch(program, inputs)
        atomic_write(path, lambda f: f.write(data))
        from executorch.runtime import Runtime

        method = Runtime.get().load_program(data).load_method("forward")
        parity, runtime = _max_diff(reference, method.execute(list(inputs))), \
            f"executorch {package_version('executorch')} (XNNPACK)"
    elif fmt == "torchscript":
        with torch.no_grad():
            scripted = torch.jit.trace(program, inputs)
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer)
        atomic_write(path, lambda f: f.write(buffer.getvalue()))
        loaded = torch.jit.load(io.BytesIO(buffer.getvalue()))
        with torch.no_grad():
            parity, runtime = _max_diff(reference, list(loaded(*inputs))), f"torch {torch.__version__}"
    else:
        mlmodel = export_coreml(program, inputs)
        with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
            mlmodel.save(str(Path(tmp) / path.name))
            out.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(path, ignore_errors=True)
            shutil.move(str(Path(tmp) / path.name), path)
        runtime = f"coremltools {package_version('coremltools')}"
        if sys.platform == "darwin":
            names = [i.name for i in mlmodel.get_spec().description.input]
            result = mlmodel.predict({n: t.numpy() for n, t in zip(names, inputs, strict=True)})
            parity = _max_diff(reference, list(result.values()))
    info = _describe(program, fmt, path, setting, image_hw, tap_xy, image_crop, click_rows, reference) | {
        "runtime": runtime, "parity_max_abs_diff": parity,
        "parity": "checked against PyTorch" if parity is not None else "not run: Core ML prediction needs macOS"}
    atomic_write(out / "export.json", lambda f: f.write(json.dumps(info, indent=1).encode()))
    return info


def _describe(program: TracedTap, fmt: str, path: Path, setting: LatencySetting, image_hw: tuple[int, int],
              tap_xy: tuple[float, float], image_crop: torch.Tensor, click_rows: torch.Tensor,
              reference: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """What export.json says about the program's inputs, outputs and setting."""
    box, cells = program.input_box, program.cells
    return {
        "format": fmt, "file": path.name, "arch": program.model.arch.to_dict(), "precision": "fp32",
        "setting": setting.describe() | {"image_hw": list(image_hw), "tap_xy": list(tap_xy)},
        "inputs": {"image_crop": {"shape": list(image_crop.shape), "box_yx": [box.y0, box.y1, box.x0, box.x1],
                                  "normalisation": "ImageNet mean/std on 0..1 RGB, as Segmenter"},
                   "clicks": {"shape": list(click_rows.shape), "rows": "[x, y, label] in full-image pixels; label 1 "
                                                                      "positive, 0 negative, -1 unused; tap first"}},
        "outputs": {"mask_logits": {"shape": list(reference[0].shape), "stride": MASK_STRIDE,
                                    "cells_yx": [cells.y0, cells.y1, cells.x0, cells.x1]},
                    "iou_logit": {"shape": list(reference[1].shape)}},
    }


@dataclass(frozen=True)
class _Lowered:
    """A reduced-precision program: its bytes, the runtime's outputs on each parity feed (mask logits, IoU
    logit; tensors or arrays, float32), and what export.json says of it (runtime, how its parity reads,
    the precision's own fields)."""
    data: bytes
    outputs: list[tuple]
    runtime: str
    runtime_diff: float | None
    fields: dict


def _export_reduced(program: TracedTap, precision: str, fmt: str, out: Path, path: Path,
                    items: list[CalibrationItem], data_spec: str | None, info: dict) -> dict:
    """The int8 or fp16 program, written with its parity against the float32 program on the images
    `items` (the calibration images for int8)."""
    feeds = [(i.image_crop, i.clicks) for i in items]
    with torch.no_grad():
        reference = [program(*f) for f in feeds]
    lowered = (_lower_int8(program, fmt, feeds, data_spec) if precision == "int8"
               else _lower_fp16(program, feeds, data_spec, info))
    atomic_write(path, lambda f: f.write(lowered.data))
    info = info | {
        "precision": precision, "runtime": lowered.runtime, "parity_max_abs_diff": lowered.runtime_diff,
        **lowered.fields,
        "precision_parity": precision_parity(reference, lowered.outputs),
        "weights_bytes_float": 4 * sum(p.numel() for p in program.parameters()),
        "program_bytes": len(lowered.data)}
    atomic_write(out / "export.json", lambda f: f.write(json.dumps(info, indent=1).encode()))
    return info


def _lower_int8(program: TracedTap, fmt: str, feeds: list[tuple[torch.Tensor, ...]],
                calibration_data: str | None) -> _Lowered:
    """The W8A8 program, calibrated on `feeds`; for ExecuTorch, with the runtime's difference from the
    quantized graph it lowered."""
    if fmt == "executorch":
        from executorch.runtime import Runtime

        graph = quantize_pt2e(program, feeds)
        data = lower_to_xnnpack(graph, feeds[0]).to_executorch().buffer
        method = Runtime.get().load_program(data).load_method("forward")
        outputs = [tuple(method.execute(list(f))) for f in feeds]
        with torch.no_grad():
            runtime_diff = max(_max_diff(graph(*f), o) for f, o in zip(feeds, outputs, strict=True))
        kept = float_ops(graph)
        scheme = "PT2E, XNNPACKQuantizer: int8 weights symmetric per channel, int8 activations per tensor"
        runtime = f"executorch {package_version('executorch')} (XNNPACK)"
    else:
        import onnxruntime

        data = quantize_onnx(export_onnx(program, feeds[0]), feeds)
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        outputs = [tuple(session.run(None, onnx_feeds(session, f))) for f in feeds]
        runtime_diff, kept = None, qdq_float_nodes(data)
        scheme = "ONNX Runtime quantize_static, QDQ: int8 weights per channel, uint8 activations"
        runtime = f"onnxruntime {onnxruntime.__version__}"
    return _Lowered(data, outputs, runtime, runtime_diff, {
        "parity": "int8 program against the float program on the calibration images (precision_parity)",
        "quantization": {"scheme": scheme, "calibration_data": calibration_data or "bundled photos",
                         "calibration_images": len(feeds), "float_ops": kept}})


def _lower_fp16(program: TracedTap, feeds: list[tuple[torch.Tensor, ...]], parity_data: str | None,
                info: dict) -> _Lowered:
    """The float16 ExecuTorch program: float16 inputs and outputs, run here on `feeds`."""
    from executorch.runtime import Runtime

    with half_precision(program):
        data = lower_to_xnnpack(program, half_inputs(feeds[0])).to_executorch().buffer
    method = Runtime.get().load_program(data).load_method("forward")
    outputs = [tuple(o.float() for o in method.execute(list(half_inputs(f)))) for f in feeds]
    return _Lowered(data, outputs, f"executorch {package_version('executorch')} (XNNPACK)", None, {
        "parity": "float16 program against the float32 program on the parity images (precision_parity)",
        "inputs": {name: spec | {"dtype": "float16"} for name, spec in info["inputs"].items()},
        "parity_data": {"data": parity_data or "bundled photos", "images": len(feeds)}})
