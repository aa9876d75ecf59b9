"""`nas export` and `nas bench`: the student's one-tap program on phone runtimes, and its cost here."""

from __future__ import annotations

import argparse
import json

from nas.cli.common import fraction_pair, positive_int, read_arch, window_fraction
from nas.latency.profiling.backends import BACKENDS
from nas.latency.setting import PRECISIONS, LatencySetting, parse_image_size
from search_spaces.common.errors import InvalidValueError


def _add_model_and_setting(parser: argparse.ArgumentParser) -> None:
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--checkpoint", help="student checkpoint (student.pt)")
    who.add_argument("--arch", help="architecture JSON (random weights: for latency and format checks)")
    parser.add_argument("--image-size", type=parse_image_size,
                        help="network input WIDTHxHEIGHT (default: 4:3 with the long side = resolution)")
    parser.add_argument("--tap", type=fraction_pair, default=(0.5, 0.5), help="tap as X,Y fractions (default 0.5,0.5)")
    parser.add_argument("--window", type=window_fraction, default=LatencySetting.window,
                        help="output window as a fraction of the resolution, or 'full' (default full: the whole "
                             "object)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def register(subparsers: argparse._SubParsersAction) -> None:
    from nas.deploy.export import FORMATS

    export = subparsers.add_parser(
        "export", help="export a student's one-tap program (onnx, executorch, coreml, torchscript)",
        description="Export the student frozen to one setting (image size, tap cell, output window): inputs are "
                    "the image cropped to the traced region and the clicks, outputs the window's mask logits and "
                    "the IoU logit. The export is checked for parity with PyTorch where the runtime runs here "
                    "(ONNX Runtime, ExecuTorch, TorchScript); Core ML converts here but predicts only on macOS. "
                    "export.json records the input sizes, crop box, output cells and the parity.",
        epilog="example: nas export --checkpoint runs/distill/X/student.pt --format executorch --out export/")
    _add_model_and_setting(export)
    export.add_argument("--format", required=True, choices=list(FORMATS))
    export.add_argument("--out", required=True, help="output folder")
    export.add_argument("--clicks", type=positive_int, default=4, help="click rows of the program (default 4)")
    export.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="int8: post-training W8A8 quantization (executorch: PT2E + XNNPACK quantizer; onnx: "
                             "ONNX Runtime static QDQ); fp16: the executorch program in float16. Either is written "
                             "with its parity against float32 in export.json (default fp32)")
    export.add_argument("--calibration-data", metavar="SPEC",
                        help="images that calibrate int8 activations and check an int8 or fp16 program against "
                             "float32: a dataset spec (grabcut:PATH, folder:PATH, ...; default the bundled photos); "
                             "labelled data get RITM's first click as the tap")
    export.set_defaults(func=_export)

    bench = subparsers.add_parser(
        "bench", help="measure tap-to-mask latency and peak memory here, next to the table's prediction",
        description="Time the student's one-tap program on a backend (warm-up, repeats until the median is "
                    "stable, outliers dropped) and its peak memory, and print the prediction of the shipped "
                    "measured table for this runtime and thread count (or --target).",
        epilog="example: nas bench --arch best_arch.json --backend onnxruntime --threads 2")
    _add_model_and_setting(bench)
    bench.add_argument("--backend", choices=BACKENDS, default="onnxruntime", help="default %(default)s")
    bench.add_argument("--threads", type=positive_int, default=1, help="default %(default)s")
    bench.add_argument("--precision", choices=PRECISIONS, default="fp32",
                       help="int8: time the program quantized W8A8 as the backend's runtime quantizes it, calibrated "
                            "on its example inputs; fp16 (executorch-xnnpack): its float16 copy; compared with a "
                            "table of that precision (default fp32)")
    bench.add_argument("--target", help="latency table to compare with (default: the matching host table)")
    bench.set_defaults(func=_bench)


def _model_and_setting(args: argparse.Namespace, precision: str = "fp32"):
    from search_spaces.students.checkpoint import load_student
    from search_spaces.students.student import TraceNetStudent

    model = load_student(args.checkpoint) if args.checkpoint else TraceNetStudent(read_arch(args.arch))
    return model, LatencySetting(image_size=args.image_size, tap=args.tap, window=args.window, precision=precision)


def _export(args: argparse.Namespace) -> int:
    from nas.deploy.export import export_student

    model, setting = _model_and_setting(args)  # a float setting: export converts the program it writes
    if args.calibration_data and args.precision == "fp32":
        raise InvalidValueError("--calibration-data is for an int8 or fp16 export; add --precision int8 or fp16")
    info = export_student(model, args.format, args.out, setting, args.clicks, args.precision, args.calibration_data)
    if args.json:
        print(json.dumps(info))
    elif info["precision"] != "fp32":
        report = info["precision_parity"]
        print(f"{args.out}/{info['file']} ({info['runtime']}, {info['precision']}): "
              f"{info['program_bytes'] / 2**20:.2f} MiB (float32 weights {info['weights_bytes_float'] / 2**20:.2f} "
              f"MiB); vs float32 on {report['images']} images: mask IoU {report['mask_iou_mean']:.3f} (min "
              f"{report['mask_iou_min']:.3f}), max |Δ logit| {report['max_abs_logit_diff']:.3f}")
    else:
        parity = (f"max |Δ| vs PyTorch {info['parity_max_abs_diff']:.2e}" if info["parity_max_abs_diff"] is not None
                  else info["parity"])
        print(f"{args.out}/{info['file']} ({info['runtime']}): image crop {info['inputs']['image_crop']['shape']}, "
              f"clicks {info['inputs']['clicks']['shape']} -> logits {info['outputs']['mask_logits']['shape']}; "
              f"{parity}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from nas.deploy.bench import bench
    from nas.latency.table import resolve_target

    model, setting = _model_and_setting(args, args.precision)
    report = bench(model, args.backend, args.threads, setting, resolve_target(args.target) if args.target else None)
    if args.json:
        print(json.dumps(report))
        return 0
    memory = f"{report['peak_memory_mb']:.1f} MiB" if report["peak_memory_mb"] is not None else "not measured"
    print(f"{args.backend} {report['runtime_version']}, {args.threads} thread(s), {args.precision}: "
          f"{report['measured_ms']:.3f} ms median (p90 {report['measured_p90_ms']:.3f}, {report['runs']} runs); "
          f"inference memory +{memory} above the loaded model (float32 weights {report['weights_mb']:.1f} MiB)")
    if report["table"]:
        print(f"  table {report['table']} predicts {report['predicted_ms']:.3f} ms "
              f"({100 * report['prediction_error']:+.1f} %)")
        if report["other_cpu"]:
            print(f"  note: the table was {report['other_cpu']}")
    else:
        print(f"  no shipped measured {args.precision} table for this runtime and thread count (pass --target)")
    return 0
