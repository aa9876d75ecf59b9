"""`nas search`: latency-aware architecture search for one or several targets."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from nas.cli.common import add_space_arg, fraction_pair, positive_int, window_fraction
from nas.latency.setting import PRECISIONS, parse_image_size
from nas.search.run import run_search
from nas.search.scores.validity import evidence_line
from nas.search.settings import ALGORITHMS, SearchSettings, load_settings, parse_budget
from search_spaces.common.errors import InvalidValueError
from search_spaces.space import ArchConfig

DEFAULTS = SearchSettings(targets=("-",), budgets_ms=(1.0,))
# options a resumed run may change; the others must match the stored settings
RESUMABLE = {"generations", "trials", "workers", "ray_address"}
SETTING_OPTIONS = ("algo", "space", "seed", "population", "generations", "trials", "image_size", "tap", "window",
                   "precision",
                   "workers", "ray_address", "storage", "include_fixed")

EPILOG = """examples:
  nas search --target iphone13 --budget 5ms
  nas search --target iphone13,x86-2core-ort-2t --budget 5ms,40ms --algo nsga2
  nas search --target iphone13 --budget 5ms --image-size 1024x768 --workers 2
  nas search --resume runs/search/iphone13-5ms-20261122-101500 --generations 20
  optuna-dashboard sqlite:///runs/search/iphone13-5ms-20261122-101500/study.db

output (in --out): best_arch.json (arch, target, budget_ms, predicted_latency_ms, score, score_kind,
table, seed, latency_setting), pareto.csv, pareto.png, study.db (Optuna RDB storage: every trial of nsga2 and
tpe; evolution's parents, Pareto front and state), search_config.json and search.log; with several targets,
one folder per target holds its result files."""


def _budgets(text: str) -> tuple[float, ...]:
    try:
        return tuple(parse_budget(b) for b in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search", help="search the best student under a latency budget on a target",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Latency-aware search over the weight-sharing space: every candidate is traced into the op "
                    "keys one tap runs, priced on the target's latency table (the constraint) and scored. The "
                    "latency is for a reference setting: a 4:3 image whose long side is the arch's resolution "
                    "(or --image-size), one tap at the image centre (--tap) and the whole output (--window 0.5 "
                    "prices TraceNet's fixed window of half the resolution instead). Without --supernet or "
                    "--predictor the score is the NASWOT "
                    "training-free proxy on real photos: it ranks architectures, it is not an accuracy.")
    parser.add_argument("--target", help="latency table name (nas latency tables) or .json path; comma-separate "
                                         "several targets")
    parser.add_argument("--budget", type=_budgets, help="latency budget per target: 5ms, 5 (ms) or 0.005s; one "
                                                        "for all targets or comma-separated, one per target")
    parser.add_argument("--algo", choices=ALGORITHMS, help=f"search algorithm (default {DEFAULTS.algo})")
    add_space_arg(parser)
    parser.add_argument("--seed", type=int, help=f"random seed; a run is deterministic for it (default "
                                                 f"{DEFAULTS.seed})")
    parser.add_argument("--population", type=positive_int, help=f"evolution population and Optuna batch size "
                                                                 f"(default {DEFAULTS.population})")
    parser.add_argument("--generations", type=positive_int, help=f"evolution generations after the first "
                                                                 f"population (default {DEFAULTS.generations})")
    parser.add_argument("--trials", type=positive_int, help=f"nsga2/tpe: architectures per target (default "
                                                            f"{DEFAULTS.trials})")
    parser.add_argument("--image-size", type=parse_image_size, help="fix the network input WIDTHxHEIGHT for the "
                                                                    "latency setting (e.g. 1024x768)")
    parser.add_argument("--tap", type=fraction_pair, help="tap position as X,Y fractions of the image "
                                                           "(default 0.5,0.5)")
    parser.add_argument("--window", type=window_fraction, help="output window side as a fraction of the resolution, or "
                                                       "'full' (default full: the whole object)")
    parser.add_argument("--precision", choices=PRECISIONS, help="precision of the programs the targets price "
                                                                "(default fp32); every target table must be of it")
    score = parser.add_argument_group("score (default: the NASWOT training-free proxy on real photos)")
    score.add_argument("--supernet", metavar="CKPT", help="score = mIoU-T of each subnet under this supernet "
                                                          "checkpoint, BN recalibrated per subnet (needs --data)")
    score.add_argument("--data", metavar="SPEC", help="validation data for --supernet: grabcut:PATH, davis:PATH "
                                                      "or synthetic:N[:SIZE]")
    score.add_argument("--predictor", metavar="FILE", help="score = an accuracy predictor (nas predictor fit)")
    parser.add_argument("--include-fixed", action="store_true", default=None,
                        help="also run the hand-designed timm backbones (nas space show --fixed) at the largest "
                             "resolution that fits, with the best student's head, under the same table and scorer")
    parser.add_argument("--workers", type=positive_int, help="score candidates on N Ray workers (default 1: in "
                                                             "this process)")
    parser.add_argument("--ray-address", help="Ray cluster address (default: a local Ray instance)")
    parser.add_argument("--storage", help="Optuna RDB URL for the studies, e.g. postgresql://... shared by a "
                                          "cluster (default: sqlite study.db in the run directory)")
    parser.add_argument("--out", help="run directory (default runs/search/<target>-<budget>-<time>)")
    parser.add_argument("--resume", metavar="DIR", help="continue the search in DIR with its stored settings")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON lines (one per target)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    # a setting left out is absent from the namespace: new runs take the default, resumed runs the stored value
    for action in parser._actions:
        if action.dest in SETTING_OPTIONS:
            action.default = argparse.SUPPRESS
    parser.set_defaults(func=_search)


def _given(args: argparse.Namespace) -> dict:
    """Settings given on the command line (options left out are None)."""
    given = {name: getattr(args, name) for name in SETTING_OPTIONS if hasattr(args, name)}
    if args.target is not None:
        given["targets"] = tuple(t.strip() for t in args.target.split(","))
    if args.budget is not None:
        given["budgets_ms"] = args.budget
    if args.predictor and args.supernet:
        raise InvalidValueError("give --supernet (with --data) or --predictor, not both")
    if bool(args.supernet) != bool(args.data):
        raise InvalidValueError("--supernet and --data go together (the supernet is scored on the data)")
    if args.predictor:
        given["scorer"] = {"name": "predictor", "path": str(Path(args.predictor).resolve())}
    elif args.supernet:
        given["scorer"] = {"name": "supernet", "checkpoint": str(Path(args.supernet).resolve()), "data": args.data,
                           "window": given.get("window", DEFAULTS.window)}
    return given


def _settings(args: argparse.Namespace) -> tuple[SearchSettings, Path]:
    given = _given(args)
    if args.resume:
        run_dir = Path(args.resume)
        stored = load_settings(run_dir)
        changed = sorted(n for n, v in given.items() if n not in RESUMABLE and v != getattr(stored, n))
        if changed:
            raise InvalidValueError(f"--resume keeps the stored settings; cannot change {', '.join(changed)} "
                             f"(only {', '.join(sorted(RESUMABLE))})")
        return SearchSettings.from_dict(stored.to_dict() | given), run_dir
    if "targets" not in given or "budgets_ms" not in given:
        raise InvalidValueError("--target and --budget are required (or --resume DIR)")
    settings = SearchSettings(**given)
    if args.out:
        return settings, Path(args.out)
    budgets = "+".join(f"{b:g}ms" for b in settings.budgets_ms)
    name = f"{'+'.join(Path(t).stem for t in settings.targets)}-{budgets}-{time.strftime('%Y%m%d-%H%M%S')}"
    return settings, Path("runs") / "search" / name


def _compact(arch: ArchConfig) -> str:
    blocks = " ".join("/".join(f"k{k}e{e}" for k, e in zip(ks, es, strict=True)) + ("+se" if se else "")
                      for ks, es, se in zip(arch.kernels, arch.expands, arch.se, strict=True))
    return (f"res {arch.resolution}, width {arch.width_mult:g}, stages [{blocks}], fpn {arch.fpn_channels}, "
            f"mask {arch.mask_channels}, head layers {arch.dyn_layers}")


def _search(args: argparse.Namespace) -> int:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings, run_dir = _settings(args)
    started = time.perf_counter()
    results = run_search(settings, run_dir, resume=bool(args.resume), progress=not args.quiet)
    elapsed = time.perf_counter() - started
    for result in results:
        best = json.loads(result.files["best_arch"].read_text())
        if args.json:
            print(json.dumps(best | {"files": {k: str(v) for k, v in result.files.items()},
                                     "study": settings.storage or str(run_dir / "study.db"), "seconds": elapsed}))
            continue
        table = best["table"]
        error = (f"{100 * table['error_mape']:.1f}% calibration error (leave-one-out)"
                 if table["error_mape"] is not None else "error not stored in the table")
        proxy = " — a training-free proxy, not an accuracy" if best["score_kind"] == "proxy" else ""
        print(f"{result.target}: best of {result.evaluated} architectures ({settings.algo}, seed {settings.seed})")
        print(f"  arch      {_compact(result.best.arch)}")
        print(f"  latency   {result.best.latency_ms:.3f} ms predicted ≤ budget {result.budget_ms:g} ms "
              f"({table['name']}: {table['provenance']} table, {error})")
        print(f"  score     {result.best.score:.4f} by {best['score_name']} ({best['score_kind']}){proxy}")
        evidence = evidence_line(best["score_name"])
        if evidence:
            print(f"  evidence  {evidence}")
        print(f"  pareto    {len(result.front)} architectures on the front")
        if settings.include_fixed:
            fixed = best.get("best_fixed")
            if fixed is None:
                print("  fixed     no hand-designed backbone was priced, fits and scored (see best_arch.json 'fixed')")
            else:
                print(f"  fixed     best hand-designed: {fixed['backbone']} at {fixed['predicted_latency_ms']:.3f} ms, "
                      f"score {fixed['score']:.4f}; the searched student is "
                      f"{fixed['searched_minus_fixed_score']:+.4f} ahead")
        print(f"  files     {result.files['best_arch'].parent}/{{best_arch.json,pareto.csv,pareto.png}}")
    if not args.json:
        storage = settings.storage or f"sqlite:///{run_dir / 'study.db'}"
        print(f"studies in {storage} (view: optuna-dashboard {storage}); {elapsed:.0f} s")
    return 0
