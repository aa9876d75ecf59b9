"""Do the search's ranking signals order architectures the way training does?

Architectures of `tracenet_mbv3` at one resolution (the space's smallest, 512) are drawn at evenly
spaced quantiles of their predicted latency on one shipped target (full-frame setting). Each is
trained stand-alone with one fixed recipe (same data, steps, seed, ground-truth teacher) and
evaluated on GrabCut with the RITM protocol (mIoU after 1 click, NoC@85 with 20 clicks). Kendall
tau and Spearman are reported between that trained quality and each ranking signal: NASWOT (the
default `nas search` score), the supernet score (a supernet trained with the sandwich rule on the
same data; its step count is chosen so its forward-backward passes equal `--supernet-runs`
stand-alone trainings), the accuracy predictor (fitted on supernet scores of other random
architectures), FLOPs, parameters and predicted latency. Then a search-vs-random check: the best
architecture `nas search` finds at the median latency against `--random` random architectures of
the same predicted latency (within 3 %), trained the same way.

Scale: training and evaluation run at `--train-resolution` (default 192 px long side) and
`--steps` steps, a small-scale run that fits a CPU; the signals are computed on the architectures
at 512. Every trained architecture's result is appended to `OUT/results.jsonl` as it finishes (and
the signals go to `OUT/signals.json`), so an interrupted run resumes where it stopped. Needs the
DAVIS and GrabCut sets (`--train`, `--eval`).

usage: python benchmarks/score_validity.py --out runs/score_validity [--target iphone13] [--archs 12]
           [--random 3] [--steps 200] [--train-resolution 192] [--threads 1] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau, spearmanr

from distill.data.datasets import labelled, load_dataset
from distill.training.config import ExperimentConfig
from distill.training.engine import Trainer
from nas.evaluation.noc import noc_protocol
from nas.evaluation.predictors import StudentPredictor
from nas.latency.predict import predict_latency
from nas.latency.setting import LatencySetting
from nas.latency.table import resolve_target
from nas.search.run import run_search
from nas.search.scores.naswot import NaswotScorer
from nas.search.scores.predictor import fit_predictor
from nas.search.scores.supernet import SupernetScorer
from nas.search.settings import SearchSettings
from search_spaces.space import ArchConfig, get_space, registered_space
from search_spaces.students.complexity import count_params, student_flops
from search_spaces.students.student import TraceNetStudent

BASE_SPACE, SIGNAL_RESOLUTION = "tracenet_mbv3", 512
SETTING = LatencySetting(window=None)  # the default whole-object output
SIGNALS = ("naswot", "supernet", "predictor", "flops", "params", "latency_ms")


def at_resolution(arch: ArchConfig, resolution: int) -> ArchConfig:
    """The same network in the one-resolution copy of its space (registered by `spaces`)."""
    return ArchConfig.from_dict(arch.to_dict() | {"space": f"{BASE_SPACE}_r{resolution}", "resolution": resolution})


@contextlib.contextmanager
def spaces(*resolutions: int):
    """One-resolution copies of the base space: the signals' (512) and the training resolution's."""
    base = get_space(BASE_SPACE)
    with contextlib.ExitStack() as stack:
        for r in dict.fromkeys(resolutions):
            stack.enter_context(registered_space(dataclasses.replace(
                base, name=f"{BASE_SPACE}_r{r}", resolutions=(r,), description=f"{BASE_SPACE} at {r} px only")))
        yield


def spread_archs(n: int, table, seed: int, pool: int = 600) -> list[ArchConfig]:
    """`n` architectures at evenly spaced quantiles of predicted latency among `pool` random ones."""
    rng = np.random.default_rng(seed)
    space = f"{BASE_SPACE}_r{SIGNAL_RESOLUTION}"
    candidates = list(dict.fromkeys(ArchConfig.sample(rng, space) for _ in range(pool)))
    latency = np.array([predict_latency(a, table, SETTING).latency_ms for a in candidates])
    order = np.argsort(latency)
    picks = order[np.round((np.arange(n) + 0.5) / n * (len(order) - 1)).astype(int)]
    return [candidates[i] for i in picks]


def random_at_latency(target_ms: float, n: int, table, seed: int, tolerance: float = 0.03) -> list[ArchConfig]:
    rng = np.random.default_rng(seed)
    space, found = f"{BASE_SPACE}_r{SIGNAL_RESOLUTION}", []
    for _ in range(200_000):
        arch = ArchConfig.sample(rng, space)
        if abs(predict_latency(arch, table, SETTING).latency_ms / target_ms - 1) <= tolerance and arch not in found:
            found.append(arch)
            if len(found) == n:
                return found
    raise RuntimeError(f"fewer than {n} random architectures within {tolerance:.0%} of {target_ms:.2f} ms")


def experiment(args: argparse.Namespace, space: str, arch: str | None, steps: int) -> ExperimentConfig:
    """The one fixed recipe every architecture (and the supernet) is trained with."""
    return ExperimentConfig.from_dict({
        "student": {"space": space} | ({"arch": arch} if arch else {}),
        "teacher": "gt",
        "data": {"train": args.train, "limit": args.images, "workers": 0},
        "prompts": {"max_rounds": 1},
        "train": {"steps": steps, "batch_size": args.batch_size, "lr": 2e-3, "weight_decay": 0.01,
                  "warmup_steps": max(1, steps // 10), "checkpoint_every": steps, "log_every": steps,
                  "image_every": 10 * steps, "seed": 0, "device": args.device}})


def train_and_evaluate(args: argparse.Namespace, arch: ArchConfig, out: Path, grabcut: list) -> dict:
    run = out / "runs" / hashlib.sha1(arch.to_json().encode()).hexdigest()[:12]
    run.mkdir(parents=True, exist_ok=True)
    trained = at_resolution(arch, args.train_resolution)
    (run / "arch.json").write_text(trained.to_json())
    start = time.perf_counter()
    summary = Trainer(experiment(args, trained.space, str(run / "arch.json"), args.steps), run,
                      resume=(run / "state.pt").exists(), progress=False).fit()
    train_s = time.perf_counter() - start
    result = noc_protocol(StudentPredictor(summary["checkpoint"], window=None), grabcut, max_clicks=20,
                          progress=False).summary()
    return {"miou_at_1": result["miou_at_1"], "noc85": result["noc85"], "train_s": train_s,
            "train_iou_last": summary.get("iou_last")}


def signals(args: argparse.Namespace, archs: list[ArchConfig], table, out: Path) -> dict[str, list[float]]:
    """Every ranking signal of `archs` (architectures at the signal resolution)."""
    values: dict[str, list[float]] = {"naswot": NaswotScorer().scores(archs)}
    models = [TraceNetStudent(a).eval() for a in archs]
    values["flops"] = [float(student_flops(m, SETTING.input_hw(m.arch), SETTING.tap_xy(m.arch))) for m in models]
    values["params"] = [float(count_params(m)) for m in models]
    values["latency_ms"] = [predict_latency(a, table, SETTING).latency_ms for a in archs]
    supernet = out / "supernet"
    if not (supernet / "supernet.pt").exists():
        space = f"{BASE_SPACE}_r{args.train_resolution}"
        per_step = 2 + experiment(args, space, None, 1).supernet.random_subnets  # sandwich: largest + smallest + random
        Trainer(experiment(args, space, None, max(1, args.steps * args.supernet_runs // per_step)), supernet,
                supernet=True, resume=(supernet / "state.pt").exists(), progress=False).fit()
    scorer = SupernetScorer(str(supernet / "supernet.pt"), args.train, images=32, taps=4, window=None)
    values["supernet"] = scorer.scores([at_resolution(a, args.train_resolution) for a in archs])
    rng = np.random.default_rng(1)
    pairs = [ArchConfig.sample(rng, f"{BASE_SPACE}_r{args.train_resolution}") for _ in range(args.predictor_pairs)]
    predictor, report = fit_predictor(pairs, np.array(scorer.scores(pairs)), epochs=300)
    trained = [at_resolution(a, args.train_resolution) for a in archs]
    values["predictor"] = [float(v) for v in predictor.predict(trained)]
    values["predictor_heldout_spearman"] = [report.heldout_spearman]
    return values


def correlations(quality: np.ndarray, values: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {name: {"kendall_tau": float(kendalltau(values[name], quality).statistic),
                   "spearman": float(spearmanr(values[name], quality).statistic)} for name in SIGNALS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/score_validity"))
    parser.add_argument("--target", default="iphone13", help="shipped table the latency range comes from")
    parser.add_argument("--archs", type=int, default=12, help="architectures spread over the latency range")
    parser.add_argument("--random", type=int, default=3, help="random architectures at the searched best's latency")
    parser.add_argument("--steps", type=int, default=200, help="training steps per architecture")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--images", type=int, default=300, help="training images (the first N of --train)")
    parser.add_argument("--train-resolution", type=int, default=192, help="long side of training and evaluation")
    parser.add_argument("--supernet-runs", type=int, default=4,
                        help="supernet compute, in stand-alone trainings (forward-backward passes)")
    parser.add_argument("--predictor-pairs", type=int, default=60, help="random (arch, supernet score) pairs")
    parser.add_argument("--train", default="davis:../shared/data/DAVIS")
    parser.add_argument("--eval", default="grabcut:../shared/data/GrabCut")
    parser.add_argument("--eval-images", type=int, default=None, help="evaluate on the first N (default all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--evidence", type=Path, help="also write the correlations `nas search` quotes "
                                                      "(nas/search/scores/validity.json)")
    parser.add_argument("--machine", default="2-core CPU", help="where it ran, for --evidence")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    table = resolve_target(args.target)
    grabcut = labelled(load_dataset(args.eval, args.eval_images), args.eval)
    with spaces(SIGNAL_RESOLUTION, args.train_resolution):
        spread = spread_archs(args.archs, table, seed=0)
        budget = float(np.median([predict_latency(a, table, SETTING).latency_ms for a in spread]))
        search_dir = args.out / "search"
        if not (search_dir / "best_arch.json").exists():
            run_search(SearchSettings(targets=(args.target,), budgets_ms=(budget,),
                                      space=f"{BASE_SPACE}_r{SIGNAL_RESOLUTION}", window=None), search_dir,
                       resume=(search_dir / "search_config.json").exists(), progress=False)
        searched = ArchConfig.from_dict(json.loads((search_dir / "best_arch.json").read_text())["arch"])
        searched_ms = predict_latency(searched, table, SETTING).latency_ms
        randoms = random_at_latency(searched_ms, args.random, table, seed=1)
        roles = [("spread", a) for a in spread] + [("searched", searched)] + [("random", a) for a in randoms]
        results_file = args.out / "results.jsonl"
        done = {}
        if results_file.exists():
            for line in results_file.read_text().splitlines():
                row = json.loads(line)
                done[row["arch"]] = row
        for role, arch in roles:
            key = arch.to_json()
            if key in done:
                continue
            row = {"role": role, "arch": key} | train_and_evaluate(args, arch, args.out, grabcut)
            done[key] = row
            with open(results_file, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{role:8s} mIoU@1 {row['miou_at_1']:.3f} NoC@85 {row['noc85']:5.2f} ({row['train_s']:.0f} s)",
                  flush=True)
        archs = [a for _, a in roles]
        cached = args.out / "signals.json"
        if cached.exists():
            values = json.loads(cached.read_text())
        else:
            values = signals(args, archs, table, args.out)
            cached.write_text(json.dumps(values))
        rows = [done[a.to_json()] | {name: values[name][i] for name in SIGNALS} for i, a in enumerate(archs)]
        quality = {"miou_at_1": np.array([r["miou_at_1"] for r in rows]),
                   "neg_noc85": -np.array([r["noc85"] for r in rows])}
        report = {
            "scale": {"train_resolution": args.train_resolution, "signal_resolution": SIGNAL_RESOLUTION,
                      "steps": args.steps, "batch_size": args.batch_size, "images": args.images, "train": args.train,
                      "eval": args.eval, "threads": args.threads, "device": args.device,
                      "supernet_runs": args.supernet_runs, "predictor_pairs": args.predictor_pairs,
                      "predictor_heldout_spearman": values["predictor_heldout_spearman"][0],
                      "target": args.target, "search_budget_ms": budget},
            "architectures": rows,
            "correlation_with_miou_at_1": correlations(quality["miou_at_1"], values),
            "correlation_with_neg_noc85": correlations(quality["neg_noc85"], values),
            "search_vs_random": {
                "searched": {k: done[searched.to_json()][k] for k in ("miou_at_1", "noc85")}
                | {"latency_ms": searched_ms},
                "random": [{k: done[a.to_json()][k] for k in ("miou_at_1", "noc85")}
                           | {"latency_ms": predict_latency(a, table, SETTING).latency_ms} for a in randoms]},
        }
        (args.out / "report.json").write_text(json.dumps(report, indent=1))
        if args.evidence:
            args.evidence.write_text(json.dumps({
                "date": datetime.date.today().isoformat(),
                "scale": {"architectures": len(rows), "space": BASE_SPACE, "steps": args.steps,
                          "train_resolution": args.train_resolution, "machine": args.machine} | report["scale"]
                     | {"train": args.train.split(":")[0], "eval": args.eval.split(":")[0]},  # the sets, not paths
                "kendall_tau_miou_at_1": {k: v["kendall_tau"] for k, v in report["correlation_with_miou_at_1"].items()},
                "spearman_miou_at_1": {k: v["spearman"] for k, v in report["correlation_with_miou_at_1"].items()},
                "kendall_tau_neg_noc85": {k: v["kendall_tau"] for k, v in report["correlation_with_neg_noc85"].items()},
                "search_vs_random": report["search_vs_random"]}, indent=1) + "\n")
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"\n{len(rows)} architectures, trained at {args.train_resolution} px for {args.steps} steps")
    print("| signal | tau (mIoU@1) | Spearman (mIoU@1) | tau (-NoC@85) | Spearman (-NoC@85) |")
    print("|---|---|---|---|---|")
    for name in SIGNALS:
        a, b = report["correlation_with_miou_at_1"][name], report["correlation_with_neg_noc85"][name]
        print(f"| {name} | {a['kendall_tau']:+.2f} | {a['spearman']:+.2f} | {b['kendall_tau']:+.2f} "
              f"| {b['spearman']:+.2f} |")


if __name__ == "__main__":
    main()
