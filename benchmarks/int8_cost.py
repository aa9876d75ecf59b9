"""What int8 (W8A8 post-training quantization) costs and buys on each runtime of this machine, and
what float16 costs where a runtime runs it (ExecuTorch-XNNPACK).

Three parts, each printed as a table (`--json`: one object):

1. Latency and size: the two README students (`benchmarks/*_best_arch.json`) and one fixed backbone
   (`--fixed`), float32 and int8 on ONNX Runtime and ExecuTorch-XNNPACK (and float16 on the latter) at
   `--threads`: the
   one-tap program at the reference setting, timed as `nas bench` times it (3 interleaved passes,
   fastest kept), and the size of the program the runtime loads. Latency does not depend on the
   weights, so these students have random weights (BN statistics from data).
2. Quality (`--checkpoint` and `--grabcut`): a trained student's float and int8 programs on each
   runtime, quantized on the bundled photos (`nas export`'s default), evaluated with RITM's protocol
   on GrabCut: mIoU after 1 click, NoC@85 (20 clicks), and the IoU between the float and the int8
   mask after the first click. The programs take a square image (the resolution on both sides) so
   that every photo fits, and 20 click rows.
3. Search (`--budget`): the best architecture `nas search` finds against the float and the int8
   table of one runtime at the same budget, and the rank correlation of the two tables over 200
   random architectures. Needs an int8 table of that runtime (`--int8-table`, `--float-table`).

usage: python benchmarks/int8_cost.py [--checkpoint student.pt --grabcut PATH] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from distill.data.datasets import labelled, load_dataset
from nas.deploy.quantize import calibration_items
from nas.evaluation.clicker import RitmClicker, foreground
from nas.evaluation.noc import noc_protocol
from nas.latency.predict import predict_latency
from nas.latency.profiling.backends import (
    PRECISION_BACKENDS,
    export_onnx,
    get_backend,
    lower_executorch,
    lower_to_xnnpack,
)
from nas.latency.profiling.profiler import measure
from nas.latency.profiling.quantized import quantize_onnx, quantize_pt2e
from nas.latency.setting import LatencySetting
from nas.latency.table import resolve_target
from nas.latency.validate import random_archs
from nas.search.run import run_search
from nas.search.settings import SearchSettings
from search_spaces.space import ArchConfig
from search_spaces.students.checkpoint import load_student
from search_spaces.students.segmenter import resize_long_side
from search_spaces.students.student import MASK_STRIDE, TraceNetStudent
from search_spaces.students.traced_tap import TracedTap
from search_spaces.students.tracing_check import calibrate_bn

HERE = Path(__file__).parent
STUDENTS = {"iphone13 5 ms": HERE / "iphone13_5ms_best_arch.json",
            "x86-2core-ort-2t 15 ms": HERE / "x86-2core-ort-2t_15ms_best_arch.json"}
RUNTIMES = ("onnxruntime", "executorch-xnnpack")
PRECISIONS = ("fp32", "int8")  # of the quality part
NOC_CLICKS = 20


def _student(arch: ArchConfig) -> TraceNetStudent:
    model = TraceNetStudent(arch)
    calibrate_bn(model, torch.Generator().manual_seed(0))
    return model.eval()


def cost(models: dict[str, TraceNetStudent], threads: int, rounds: int = 3) -> list[dict]:
    """Measured latency (fastest of `rounds` interleaved passes) and program size, per model, runtime and
    precision, at the reference setting."""
    rows, runs = [], []
    for backend in RUNTIMES:
        for precision in ("fp32", *(p for p, backends in PRECISION_BACKENDS.items() if backend in backends)):
            runtime = get_backend(backend, threads, precision)
            setting = LatencySetting(precision=precision)
            for name, model in models.items():
                program = setting.program(model)
                runs.append(runtime.prepare(program, program.example_inputs()))
                lowering = runtime.lowerings[repr(program)]
                rows.append({"model": name, "backend": backend, "precision": precision, "threads": threads,
                             "program_mb": lowering.program_bytes / 2**20, "float_ops": len(lowering.float_ops),
                             "round_ms": []})
    for _ in range(rounds):
        for row, run in zip(rows, runs, strict=True):
            row["round_ms"].append(measure(run).median)
    for row in rows:
        row["measured_ms"] = min(row["round_ms"])
    return rows


class ProgramPredictor:
    """A one-tap program of a square full-output setting, run by a runtime, behind the evaluation's
    predictor interface: images resized as `Segmenter` resizes them and zero-padded to the square."""

    def __init__(self, name: str, program: TracedTap, run):
        self.name, self.program, self.run = name, program, run
        self.side = program.model.arch.resolution

    def start(self, sample):
        return sample.image

    def logits(self, image: np.ndarray, clicks: list) -> np.ndarray:
        h, w = image.shape[:2]
        x = resize_long_side(image, self.side)
        nh, nw = x.shape[-2:]
        x = F.pad(x, (0, self.side - nw, 0, self.side - nh))
        tap = next(i for i, click in enumerate(clicks) if click[2])  # the first positive click leads
        ordered = [clicks[tap], *clicks[:tap], *clicks[tap + 1:]]
        rows = [[(cx + 0.5) * nw / w - 0.5, (cy + 0.5) * nh / h - 0.5, 1.0 if pos else 0.0] for cx, cy, pos in ordered]
        rows += [[0.0, 0.0, -1.0]] * (NOC_CLICKS - len(rows))
        mask_logits = torch.as_tensor(np.asarray(self.run(x.contiguous(), torch.tensor([rows]))[0]))
        up = F.interpolate(mask_logits.reshape(1, 1, *mask_logits.shape[-2:]), scale_factor=float(MASK_STRIDE),
                           mode="bilinear", align_corners=False)[..., :nh, :nw]
        return F.interpolate(up, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()


def _runners(program: TracedTap, backend: str, calibration: list) -> dict:
    """The float and int8 program of `backend`, each as a callable (image_crop, clicks) -> outputs."""
    example = calibration[0]
    if backend == "onnxruntime":
        import onnxruntime

        float_onnx = export_onnx(program, example)

        def session_runner(model: bytes):
            session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
            names = [i.name for i in session.get_inputs()]
            return lambda *inputs: session.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})

        return {"fp32": session_runner(float_onnx), "int8": session_runner(quantize_onnx(float_onnx, calibration))}
    from executorch.runtime import Runtime

    def method_runner(buffer: bytes):
        program = Runtime.get().load_program(buffer)  # the method needs its program alive
        method = program.load_method("forward")
        return lambda *inputs: (program, method.execute(list(inputs)))[1]

    float_pte = lower_executorch(program, example, try_nhwc=False)[0]
    int8_pte = lower_to_xnnpack(quantize_pt2e(program, calibration), example).to_executorch().buffer
    return {"fp32": method_runner(float_pte), "int8": method_runner(int8_pte)}


def quality(checkpoint: str, grabcut: str, limit: int | None) -> list[dict]:
    model = load_student(checkpoint).eval()
    r = model.arch.resolution
    setting = LatencySetting(image_size=(r, r))
    program = TracedTap(model, setting.input_hw(model.arch), setting.tap_xy(model.arch), None).eval()
    calibration = [(i.image_crop, i.clicks) for i in calibration_items(program, (r, r), setting.tap_xy(model.arch),
                                                                       NOC_CLICKS)]
    samples = labelled(load_dataset(grabcut, limit), grabcut)
    rows = []
    for backend in RUNTIMES:
        predictors = {p: ProgramPredictor(f"{backend} {p}", program, run)
                      for p, run in _runners(program, backend, calibration).items()}
        results = {p: noc_protocol(pred, samples, NOC_CLICKS, progress=False) for p, pred in predictors.items()}
        agreement = []
        for sample in samples:
            click = RitmClicker(sample.mask, sample.ignore).next_click(np.zeros(sample.mask.shape, bool))
            a, b = (foreground(predictors[p].logits(sample.image, [click])) for p in PRECISIONS)
            union = (a | b).sum()
            agreement.append(1.0 if union == 0 else (a & b).sum() / union)
        for precision, result in results.items():
            summary = result.summary()
            rows.append({"backend": backend, "precision": precision, "images": summary["images"],
                         "miou_at_1": summary["miou_at_1"], "noc85": summary["noc85"],
                         "float_int8_mask_iou": float(np.mean(agreement)) if precision == "int8" else None})
    return rows


def search_change(float_table: str, int8_table: str, budget_ms: float, space: str) -> dict:
    """The best architectures found against each table at one budget, and how the tables rank 200 archs."""
    found = {}
    for precision, target in (("fp32", float_table), ("int8", int8_table)):
        settings = SearchSettings(targets=(target,), budgets_ms=(budget_ms,), space=space, precision=precision)
        with tempfile.TemporaryDirectory() as out:
            (result,) = run_search(settings, out, progress=False)
        found[precision] = result.best
    tables = {p: resolve_target(t) for p, t in (("fp32", float_table), ("int8", int8_table))}
    archs = random_archs(200, 0, space)
    lat = {p: [predict_latency(a, t, LatencySetting(precision=p)).latency_ms for a in archs] for p, t in tables.items()}
    cross = predict_latency(found["fp32"].arch, tables["int8"], LatencySetting(precision="int8")).latency_ms
    return {"float_table": float_table, "int8_table": int8_table, "budget_ms": budget_ms,
            "same_arch": found["fp32"].arch == found["int8"].arch,
            "float_best": {"arch": found["fp32"].arch.to_dict(), "latency_ms": found["fp32"].latency_ms,
                           "int8_latency_ms": cross, "score": found["fp32"].score},
            "int8_best": {"arch": found["int8"].arch.to_dict(), "latency_ms": found["int8"].latency_ms,
                          "score": found["int8"].score},
            "spearman_float_vs_int8": float(spearmanr(lat["fp32"], lat["int8"]).statistic),
            "median_int8_over_float": float(np.median(np.array(lat["int8"]) / np.array(lat["fp32"])))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fixed", default="fixed:mobilenetv3_large_100", help="the fixed backbone's space")
    parser.add_argument("--checkpoint", help="a trained student (student.pt) for the quality part")
    parser.add_argument("--grabcut", help="GrabCut folder (dataset spec grabcut:PATH) for the quality part")
    parser.add_argument("--limit", type=int, help="GrabCut images to evaluate (default all)")
    parser.add_argument("--one-resolution", type=int, metavar="R",
                        help="the checkpoint's space is score_validity.py's one-resolution copy at R px (its "
                             "trained students)")
    parser.add_argument("--float-table", default="x86-2core-ort-1t")
    parser.add_argument("--int8-table", help="int8 table of the float table's runtime, for the search part")
    parser.add_argument("--budget", type=float, default=40.0, help="search budget in ms (default 40)")
    parser.add_argument("--skip-cost", action="store_true", help="leave out part 1")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report: dict = {}
    if not args.skip_cost:
        models = {name: _student(ArchConfig.from_dict(json.loads(path.read_text())["arch"]))
                  for name, path in STUDENTS.items()}
        models[args.fixed] = _student(ArchConfig.sample(0, args.fixed))
        report["cost"] = cost(models, args.threads)
    if args.checkpoint and args.grabcut:
        from score_validity import spaces

        with spaces(*([args.one_resolution] if args.one_resolution else [])):
            report["quality"] = quality(args.checkpoint, f"grabcut:{args.grabcut}", args.limit)
    if args.int8_table:
        report["search"] = search_change(args.float_table, args.int8_table, args.budget,
                                         resolve_target(args.float_table).space)
    if args.json:
        print(json.dumps(report))
        return
    for row in report.get("cost", []):
        print(f"{row['model']:<32} {row['backend']:<20} {row['precision']:<5} {row['measured_ms']:8.2f} ms "
              f"{row['program_mb']:7.2f} MiB  float ops {row['float_ops']}")
    for row in report.get("quality", []):
        iou = row["float_int8_mask_iou"]
        agree = "" if iou is None else f"  float-vs-int8 mask IoU {iou:.3f}"
        print(f"{row['backend']:<20} {row['precision']:<5} mIoU@1 {row['miou_at_1']:.3f}  NoC@85 {row['noc85']:.2f}"
              f"  ({row['images']} images){agree}")
    if "search" in report:
        s = report["search"]
        print(f"search at {s['budget_ms']:g} ms: same architecture {s['same_arch']}; float pick "
              f"{s['float_best']['latency_ms']:.2f} ms float / {s['float_best']['int8_latency_ms']:.2f} ms int8; int8 "
              f"pick {s['int8_best']['latency_ms']:.2f} ms int8; Spearman float vs int8 table "
              f"{s['spearman_float_vs_int8']:.3f}, median int8/float {s['median_int8_over_float']:.2f}")


if __name__ == "__main__":
    main()
