"""Best searched student vs best hand-designed backbone, same table, budget and scorer (issue F).

For each target and budget, `run_search` (evolution, NASWOT proxy, seed 0) with `include_fixed`:
every listed timm backbone runs at the largest resolution that fits, with the best student's head,
priced on the same table and scored by the same proxy. Prints a Markdown table for the README.

usage: python benchmarks/fixed_vs_searched.py [--cases iphone13:5,iphone13:10,x86-2core-ort-2t:60]
                                              [--generations 5]
"""

from __future__ import annotations

import argparse
import json
import tempfile

import optuna

from nas.search.run import run_search
from nas.search.settings import SearchSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="iphone13:5,iphone13:10,x86-2core-ort-2t:60,x86-2core-ort-2t:120")
    parser.add_argument("--generations", type=int, default=5)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print("| target | budget | searched: score @ ms | best hand-designed: backbone, px, score @ ms "
          "| searched − fixed |")
    print("|---|---|---|---|---|")
    for case in args.cases.split(","):
        target, budget = case.rsplit(":", 1)
        settings = SearchSettings(targets=(target,), budgets_ms=(float(budget),), generations=args.generations,
                                  include_fixed=True)
        with tempfile.TemporaryDirectory() as tmp:
            run_search(settings, tmp, progress=False)
            best = json.loads(open(f"{tmp}/best_arch.json").read())
        fixed = best.get("best_fixed")
        hand = (f"{fixed['backbone'].removeprefix('fixed:')}, {fixed['arch']['resolution']}, {fixed['score']:.2f} @ "
                f"{fixed['predicted_latency_ms']:.2f}" if fixed else "none fits")
        gap = f"{fixed['searched_minus_fixed_score']:+.2f}" if fixed else "—"
        print(f"| {target} | {float(budget):g} ms | {best['score']:.2f} @ {best['predicted_latency_ms']:.2f} | {hand} "
              f"| {gap} |", flush=True)


if __name__ == "__main__":
    main()
