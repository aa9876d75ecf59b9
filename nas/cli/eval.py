"""`nas eval`: the interactive (RITM NoC) and one-tap (TraceNet) protocols for students and teachers."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from nas.cli.common import positive_int, window_fraction


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="NoC / mIoU-T evaluation of a student or a teacher on a dataset",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Evaluate a student checkpoint or a teacher with one protocol. noc: RITM's click simulator "
                    "(next click at the deepest point of the larger error region, border counting as boundary, "
                    "probability threshold 0.49), NoC@85/90 (max clicks when never reached) and mIoU after k "
                    "clicks. tracenet: mIoU-T over uniform taps inside each instance, mTA (share of taps with "
                    "IoU >= 0.85, a Monte Carlo estimate of the instance area where one tap succeeds) and IoU "
                    "vs tap depth. GrabCut's uncertain band is ignored.",
        epilog="examples:\n"
               "  nas eval --checkpoint runs/distill/X/student.pt --dataset grabcut:data/GrabCut --protocol noc\n"
               "  nas eval --teacher gt --dataset davis:data/DAVIS --protocol tracenet --json\n\n"
               "output (in --out): per_image.csv, summary.json (noc85, noc90, miou_at_1, ... or miou_t, mta, "
               "robustness) and miou_vs_clicks.png or robustness.png")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--checkpoint", help="student checkpoint (student.pt)")
    who.add_argument("--teacher", help="teacher spec: gt, sam:vit_b:CKPT, tracenas:CKPT, ...")
    parser.add_argument("--dataset", required=True, help="grabcut:PATH, davis:PATH, coco:ANN.json:IMAGES, ...")
    parser.add_argument("--protocol", choices=("noc", "tracenet"), default="noc", help="default %(default)s")
    parser.add_argument("--max-clicks", type=positive_int, default=20, help="noc: clicks per image (default 20)")
    parser.add_argument("--taps", type=positive_int, default=16, help="tracenet: taps per instance (default 16)")
    parser.add_argument("--window", type=window_fraction, default=None,
                        help="student output window as a fraction of the resolution (default: full frame)")
    parser.add_argument("--limit", type=positive_int, help="evaluate the first N samples only")
    parser.add_argument("--seed", type=int, default=0, help="tracenet: tap seed (default 0)")
    parser.add_argument("--out", help="output folder (default runs/eval/<protocol>-<time>)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    from distill.data.datasets import DatasetError, labelled, load_dataset
    from nas.evaluation.noc import noc_protocol
    from nas.evaluation.predictors import StudentPredictor, TeacherPredictor
    from nas.evaluation.report import write_report
    from nas.evaluation.tracenet import tracenet_protocol

    predictor = StudentPredictor(args.checkpoint, args.window) if args.checkpoint else TeacherPredictor(args.teacher)
    dataset = load_dataset(args.dataset, args.limit)
    samples = labelled(dataset, args.dataset)
    if dataset.skipped:  # a benchmark figure is over the whole set, or it is not that benchmark's figure
        raise DatasetError(f"{dataset.skipped} image(s) of {args.dataset} could not be read (see the warnings "
                           "above); an evaluation runs on every image")
    out = Path(args.out) if args.out else Path("runs") / "eval" / f"{args.protocol}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.protocol == "noc":
        result = noc_protocol(predictor, samples, args.max_clicks, progress=not args.quiet)
    else:
        result = tracenet_protocol(predictor, samples, args.taps, args.seed, progress=not args.quiet)
    summary = result.summary() | {"predictor": predictor.name, "dataset": args.dataset, "protocol": args.protocol}
    out.mkdir(parents=True, exist_ok=True)
    files = write_report(out, result, summary)
    if args.json:
        print(json.dumps(summary | {"files": {k: str(v) for k, v in files.items()}}))
    elif args.protocol == "noc":
        print(f"{predictor.name} on {args.dataset} ({summary['images']} images): NoC@85 {summary['noc85']:.2f}, "
              f"NoC@90 {summary['noc90']:.2f}, mIoU@1 {summary['miou_at_1']:.3f} -> {out}")
    else:
        print(f"{predictor.name} on {args.dataset} ({summary['instances']} instances x {args.taps} taps): "
              f"mIoU-T {summary['miou_t']:.3f}, mTA {summary['mta']:.3f} (IoU >= 0.85) -> {out}")
    return 0
