"""Search efficiency: best score reached vs wall time for evolution, NSGA-II and TPE (issue C benchmark).

Every algorithm runs `nas search`'s code path (`run_search`) on the same target, budget, latency
setting, score (the default NASWOT proxy) and number of evaluated architectures; the best feasible
score so far is timed through `run_search`'s `on_best` hook.
Writes search_efficiency.png and search_efficiency.csv into --out and prints a summary table.

usage: python benchmarks/search_efficiency.py [--target iphone13] [--budget 5ms] [--evaluations 136] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import optuna

from nas.search.run import run_search
from nas.search.settings import SearchSettings, parse_budget

ALGOS = ("evolution", "nsga2", "tpe")


def timed_search(settings: SearchSettings) -> tuple[list[tuple[float, float]], int]:
    """(seconds, best score) at every improvement and at the end; architectures evaluated."""
    trace: list[tuple[float, float]] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        [result] = run_search(settings, tmp, progress=False, on_best=lambda target, best: trace.append(
            (time.perf_counter() - start, best.score)))
    trace.append((time.perf_counter() - start, trace[-1][1]))
    return trace, result.evaluated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="iphone13")
    parser.add_argument("--budget", default="5ms")
    parser.add_argument("--evaluations", type=int, default=136, help="architectures per algorithm")
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench/search_efficiency")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    generations = max(1, round((args.evaluations - args.population) / (args.population - args.population // 4)))
    traces, evaluated = {}, {}
    for algo in ALGOS:
        settings = SearchSettings(targets=(args.target,), budgets_ms=(parse_budget(args.budget),), algo=algo,
                                  seed=args.seed, population=args.population, generations=generations,
                                  trials=args.evaluations)
        traces[algo], evaluated[algo] = timed_search(settings)

    with open(out / "search_efficiency.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["algo", "seconds", "best_score"])
        for algo, trace in traces.items():
            writer.writerows([algo, f"{t:.3f}", f"{b:.6g}"] for t, b in trace)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for algo, trace in traces.items():
        ax.step([t for t, _ in trace], [b for _, b in trace], where="post", label=algo)
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("best feasible NASWOT score")
    ax.set_title(f"{args.target} <= {args.budget}, {args.evaluations} architectures each, seed {args.seed}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "search_efficiency.png")

    print(f"target {args.target}, budget {args.budget}, NASWOT proxy, seed {args.seed}")
    print(f"{'algo':<10} {'evaluated':>9} {'final best':>10} {'s to 99.9% of final':>20} {'total s':>8}")
    for algo, trace in traces.items():
        final = trace[-1][1]
        reach = next(t for t, b in trace if b >= final - 1e-3 * abs(final))
        print(f"{algo:<10} {evaluated[algo]:>9} {final:>10.3f} {reach:>20.1f} {trace[-1][0]:>8.1f}")
    print(f"plot and CSV in {out}")


if __name__ == "__main__":
    main()
