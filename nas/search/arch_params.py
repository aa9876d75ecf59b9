"""ArchConfig <-> Optuna parameters: the genes of a space (`search_spaces/genome.py`) as categoricals.

Blocks beyond a stage's depth are still suggested (so every trial has the same parameters, which
Optuna's samplers prefer) and ignored when the config is built, as Once-for-All's encoding does.
"""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution

from search_spaces.space import ArchConfig, SpaceSpec, genome_space


def distributions(space: str | SpaceSpec) -> dict[str, CategoricalDistribution]:
    return {gene.name: CategoricalDistribution(gene.choices) for gene in genome_space(space).genes}


def suggest_arch(trial: optuna.Trial, space: str | SpaceSpec) -> ArchConfig:
    params = {name: trial.suggest_categorical(name, dist.choices) for name, dist in distributions(space).items()}
    return genome_space(space).from_params(params)


def arch_params(arch: ArchConfig) -> tuple[dict, dict[str, CategoricalDistribution]]:
    """The parameters (active genes only) and their distributions, to record an arch as a trial."""
    params, dists = genome_space(arch.spec).params(arch), distributions(arch.spec)
    return params, {name: dists[name] for name in params}
