"""`nas predictor`: gather (arch, supernet score) pairs and fit an accuracy predictor on them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nas.cli.common import positive_int
from nas.search.scores.predictor import fit_predictor, read_pairs, save_predictor
from nas.search.scoring import ScorePool
from search_spaces.common.errors import InvalidValueError
from search_spaces.common.files import exclusive
from search_spaces.space import ArchConfig


def _hidden(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer widths, got {text!r}") from None
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"layer widths must be positive, got {text!r}")
    return widths


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predictor", help="accuracy predictor: collect supernet scores, fit an MLP",
        description="An accuracy predictor replaces the supernet score in a search (nas search --predictor): "
                    "collect (arch, mIoU-T) pairs from a trained supernet, then fit an MLP on them.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    actions.required = True

    collect = actions.add_parser(
        "collect", help="score random subnets with a supernet into a pairs file",
        description="Score N uniformly sampled subnets of the supernet's space with the supernet scorer (BN "
                    "recalibrated per subnet, mIoU-T on fixed taps) and append one JSON line per subnet to "
                    "--out. Rerunning with the same --out and --seed continues where it stopped.",
        epilog="example: nas predictor collect --supernet supernet.pt --data davis:../shared/data/DAVIS --n 300 "
               "--out pairs.jsonl")
    collect.add_argument("--supernet", required=True, help="supernet checkpoint (nas train-supernet)")
    collect.add_argument("--data", required=True, help="grabcut:PATH, davis:PATH or synthetic:N[:SIZE]")
    collect.add_argument("--n", type=positive_int, default=200, help="subnets to score (default %(default)s)")
    collect.add_argument("--out", required=True, help="pairs file (JSON lines), appended to")
    collect.add_argument("--seed", type=int, default=0, help="subnet sampling seed (default %(default)s)")
    collect.add_argument("--images", type=positive_int, default=32, help="validation images (default %(default)s)")
    collect.add_argument("--taps", type=positive_int, default=4, help="taps per instance (default %(default)s)")
    collect.add_argument("--workers", type=positive_int, default=1, help="Ray workers (default %(default)s)")
    collect.set_defaults(func=_collect)

    fit = actions.add_parser(
        "fit", help="fit an MLP predictor and report its held-out rank correlation",
        description="Fit an MLP (Once-for-All's 3 hidden layers of 400 by default) from the fixed-length "
                    "architecture encoding to the score; report Spearman and MAE on held-out pairs.",
        epilog="example: nas predictor fit pairs.jsonl --out predictor.pt && nas search --target iphone13 "
               "--budget 5ms --predictor predictor.pt")
    fit.add_argument("pairs", help="pairs file written by 'nas predictor collect'")
    fit.add_argument("--out", required=True, help="predictor file to write")
    fit.add_argument("--hidden", type=_hidden, default=(400, 400, 400), help="hidden widths (default 400,400,400)")
    fit.add_argument("--epochs", type=positive_int, default=500, help="full-batch Adam steps (default %(default)s)")
    fit.add_argument("--heldout", type=float, default=0.2, help="held-out share (default %(default)s)")
    fit.add_argument("--seed", type=int, default=0, help="split and initialisation seed (default %(default)s)")
    fit.add_argument("--json", action="store_true", help="print the report as JSON")
    fit.set_defaults(func=_fit)


def _collect(args: argparse.Namespace) -> int:
    recipe = {"name": "supernet", "checkpoint": args.supernet, "data": args.data, "images": args.images,
              "taps": args.taps}
    out = Path(args.out)
    with exclusive(out):  # one process appends to a pairs file at a time
        _collect_into(out, ScorePool(recipe, args.workers), args)
    return 0


def _collect_into(out: Path, pool: ScorePool, args: argparse.Namespace) -> None:
    try:
        space = pool.scorer.supernet.spec.name
        done = len(read_pairs(out)[0]) if out.is_file() else 0
        rng = np.random.default_rng(args.seed)
        archs = [ArchConfig.sample(rng, space) for _ in range(args.n)][done:]
        with open(out, "a") as f, tqdm(total=args.n, initial=done, desc="supernet scores", unit="arch") as bar:
            for start in range(0, len(archs), args.workers):
                batch = archs[start:start + args.workers]
                for arch, score in zip(batch, pool.scores(batch), strict=True):
                    f.write(json.dumps({"arch": arch.to_dict(), "score": score}) + "\n")
                    f.flush()
                    bar.update()
    finally:
        pool.close()
    print(f"{args.n} pairs in {args.out} ({pool.scorer.description})")


def _fit(args: argparse.Namespace) -> int:
    if not 0 < args.heldout < 1:
        raise InvalidValueError(f"--heldout must be a share in (0, 1), got {args.heldout}")
    archs, scores = read_pairs(args.pairs)
    model, report = fit_predictor(archs, scores, args.hidden, args.heldout, args.epochs, seed=args.seed)
    save_predictor(model, args.out, report, source=str(args.pairs))
    if args.json:
        print(json.dumps(report.to_dict() | {"out": args.out}))
    else:
        print(f"fitted on {report.n_train} pairs; held out {report.n_heldout}: Spearman "
              f"{report.heldout_spearman:.3f}, MAE {report.heldout_mae:.4f} -> {args.out}")
    return 0
