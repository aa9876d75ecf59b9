"""Once-for-All's search scenario, timed with TraceNAS's evolutionary search (issue C benchmark).

Once-for-All searches its MobileNetV3 space for a Samsung Note10 under 25 ms with an accuracy
predictor (an MLP with 3 hidden layers of 400) and a per-block latency table; its paper reports
22 s on a CPU for that search (evolution: population 100, 500 generations, parents 25 %,
mutations 50 %, mutation probability 0.1). We run the same search on the same table: the real
Note10 per-block tables imported from ../shared/latency_reference/ofa_note10 (read at run time),
with TraceNAS's `Evolution`, `ScorePool` and an `AccuracyPredictor` of the same size.

The predictor's weights are fitted here on synthetic pairs (a fixed random linear function of the
architecture encoding): no Once-for-All accuracy data ships with TraceNAS, and the search's wall
time does not depend on what the predictor learnt. Our space uses OFA's per-block choices (depth
2-4, kernel 3/5/7, expand 3/4/6, OFA's fixed SE and activation per stage) at resolutions 160, 192
and 224 (TraceNAS spaces need multiples of 32; OFA also searches the 16-px steps between).

Reported: time to the final best (convergence) and total time of the 500 generations, once with an
in-memory Optuna study (Once-for-All persists nothing either) and once with the SQLite study `nas search`
writes (evolution records its parents, Pareto front and state there, at most every 5 s).

usage: python benchmarks/ofa_evolution_speed.py [--budget 25] [--generations 500] [--population 100]
"""

from __future__ import annotations

import argparse
import glob
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna

from nas.latency.importers import import_tables, ofa_net_keys
from nas.search.algorithms import Evolution, Outcome, SearchProblem
from nas.search.scores.predictor import fit_predictor, save_predictor
from nas.search.scoring import ScorePool
from search_spaces.space import ArchConfig, SpaceSpec, StageSpec, genome_space, register_space

SHARED = Path(__file__).resolve().parents[2] / "shared" / "latency_reference" / "ofa_note10"
PUBLISHED_SECONDS = 22.0  # Once-for-All (Cai et al., ICLR 2020): search on CPU with the accuracy predictor
# Once-for-All MobileNetV3 w1.2: output channels, stride, activation and SE of each stage
OFA_STAGES = ((32, 2, "relu", False), (48, 2, "relu", True), (96, 2, "hswish", False), (136, 1, "hswish", True),
              (192, 2, "hswish", True))
SPACE = register_space(SpaceSpec(
    name="ofa_mbv3_w12", description="Once-for-All MobileNetV3 w1.2 per-block choices (benchmark only)",
    stages=tuple(StageSpec(c, s, act) for c, s, act, _ in OFA_STAGES), resolutions=(160, 192, 224),
    width_mults=(1.0,), depths=(2, 3, 4), kernels=(3, 5, 7), expands=(3, 4, 6), fpn_channels=(32,),
    mask_channels=(8,), dyn_layers=(1,), se=(False,), stem_channels=24))


def ofa_net_config(arch: ArchConfig) -> dict:
    """The architecture as an OFA net.config (OFA's fixed SE and activation per stage)."""
    blocks, cin = [{"mobile_inverted_conv": {"in_channels": 24, "out_channels": 24, "kernel_size": 3, "stride": 1,
                                             "expand_ratio": 1, "act_func": "relu", "use_se": False},
                    "shortcut": {}}], 24
    for (cout, stride, act, se), ks, es in zip(OFA_STAGES, arch.kernels, arch.expands, strict=True):
        for b, (k, e) in enumerate(zip(ks, es, strict=True)):
            s = stride if b == 0 else 1
            blocks.append({"mobile_inverted_conv": {
                "in_channels": cin, "out_channels": cout, "kernel_size": k, "stride": s, "expand_ratio": e,
                "mid_channels": int(np.ceil(cin * e / 8) * 8), "act_func": "h_swish" if act == "hswish" else "relu",
                "use_se": se}, "shortcut": {} if (s == 1 and cin == cout) else None})
            cin = cout
    return {"first_conv": {"in_channels": 3, "out_channels": 24}, "blocks": blocks,
            "final_expand_layer": {"in_channels": 192, "out_channels": 1152},
            "feature_mix_layer": {"in_channels": 1152, "out_channels": 1536},
            "classifier": {"in_features": 1536, "out_features": 1000}}


class Note10Latency:
    """Once-for-All's latency estimator: a per-block table lookup, summed over the active blocks.

    Prices whole generations as arrays: the table's price of every block choice at every position and
    resolution is looked up once (`lut`), so a genome's latency is a gather and a sum."""

    def __init__(self, table):
        self.table = table
        space, spec = genome_space(SPACE), SPACE
        self.res_gene = space.index["resolution"]
        self.kernel_genes = np.array([[space.index[f"kernel{s}_{b}"] for b in range(spec.max_depth)]
                                      for s in range(len(spec.stages))])
        self.expand_genes = np.array([[space.index[f"expand{s}_{b}"] for b in range(spec.max_depth)]
                                      for s in range(len(spec.stages))])
        shape = (len(spec.resolutions), len(spec.stages), spec.max_depth, len(spec.kernels), len(spec.expands))
        self.lut, self.fixed = np.zeros(shape), np.zeros(len(spec.resolutions))
        for r, resolution in enumerate(spec.resolutions):
            for k, kernel in enumerate(spec.kernels):
                for e, expand in enumerate(spec.expands):
                    uniform = ArchConfig(SPACE.name, resolution, 1.0, (spec.max_depth,) * len(spec.stages),
                                         ((kernel,) * spec.max_depth,) * len(spec.stages),
                                         ((expand,) * spec.max_depth,) * len(spec.stages),
                                         (False,) * len(spec.stages), 32, 8, 1)
                    prices = [table.latency(key)[0] for key in ofa_net_keys(ofa_net_config(uniform), resolution)]
                    # first conv and first block, the searched blocks stage by stage, then the fixed tail
                    self.lut[r, :, :, k, e] = np.reshape(prices[2:-4], (len(spec.stages), spec.max_depth))
                    self.fixed[r] = table.overhead_ms + sum(prices[:2]) + sum(prices[-4:])

    def __call__(self, arch: ArchConfig) -> float:
        return self.table.predict(ofa_net_keys(ofa_net_config(arch), arch.resolution)).total_ms

    def of_genomes(self, space, genomes: np.ndarray) -> np.ndarray:
        active = space.active(genomes)[:, self.kernel_genes]
        res = genomes[:, self.res_gene]
        blocks = self.lut[res[:, None, None], np.arange(len(SPACE.stages))[:, None], np.arange(SPACE.max_depth),
                          genomes[:, self.kernel_genes], genomes[:, self.expand_genes]]
        return self.fixed[res] + (blocks * active).sum(axis=(1, 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=25.0)
    parser.add_argument("--generations", type=int, default=500)
    parser.add_argument("--population", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    table = import_tables(sorted(glob.glob(str(SHARED / "*_lookup_table.yaml"))), "ofa", "note10")
    latency = Note10Latency(table)
    space = genome_space(SPACE)
    check = space.sample(np.random.default_rng(1), 500)
    exact = np.array([latency(space.decode(g)) for g in check])
    assert np.allclose(latency.of_genomes(space, check), exact, rtol=1e-12), "block lookup differs from the table"
    rng = np.random.default_rng(123)
    archs = [ArchConfig.sample(rng, SPACE) for _ in range(2000)]
    features = space.features(archs)
    weights = np.random.default_rng(7).normal(size=features.shape[1])
    model, report = fit_predictor(archs, features @ weights, epochs=200)
    print(f"OFA scenario: Note10 per-block table (vectorised lookup = table prediction on 500 architectures), "
          f"budget {args.budget:g} ms, MLP 3x400 predictor, population {args.population}, {args.generations} "
          f"generations, seed {args.seed}; published Once-for-All: {PUBLISHED_SECONDS:.0f} s "
          f"(goal <= {PUBLISHED_SECONDS / 10:.1f} s)")
    with tempfile.TemporaryDirectory() as tmp:
        path = save_predictor(model, Path(tmp) / "predictor.pt", report, source="synthetic pairs")
        pool = ScorePool({"name": "predictor", "path": str(path)})
        for storage in ("in-memory", "sqlite"):
            url = f"sqlite:///{tmp}/study.db" if storage == "sqlite" else None
            study = optuna.create_study(storage=url or optuna.storages.InMemoryStorage(), direction="maximize")
            outcome, trace, total = timed_evolution(SearchProblem(SPACE.name, latency, args.budget, pool, study,
                                                                  args.seed, args.population), args.generations)
            best = max(outcome.candidates, key=lambda c: c.score)
            print(f"  study {storage}: evaluated {outcome.evaluated} architectures, recorded {len(study.trials)}; "
                  f"best {best.score:.4f} at {best.latency_ms:.2f} ms (<= {args.budget:g}); time to the final best "
                  f"{trace[-1][0]:.2f} s; all generations {total:.2f} s")


def timed_evolution(problem: SearchProblem, generations: int) -> tuple[Outcome, list[tuple[float, float]], float]:
    """Run the evolution; return its outcome, (seconds, best score) at every improvement and the total seconds."""
    trace: list[tuple[float, float]] = []
    start = time.perf_counter()

    def on_progress(proposed: int, best) -> None:
        if best is not None and (not trace or best.score > trace[-1][1]):
            trace.append((time.perf_counter() - start, best.score))

    problem.on_progress = on_progress
    outcome = Evolution(generations).run(problem)
    return outcome, trace, time.perf_counter() - start

if __name__ == "__main__":
    main()
