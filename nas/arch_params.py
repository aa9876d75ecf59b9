"""ArchConfig <-> Optuna parameters: every choice of a space as a fixed-length set of categoricals.

Blocks beyond a stage's depth are still suggested (so every trial has the same parameters, which
Optuna's samplers prefer) and ignored when the config is built, as Once-for-All's encoding does.
"""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution

from search_spaces.arch_config import ArchConfig
from search_spaces.space import SpaceSpec, get_space

GLOBAL_CHOICES = ("resolution", "width_mult", "fpn_channels", "mask_channels", "dyn_layers")
_SPEC_FIELD = {"resolution": "resolutions", "width_mult": "width_mults", "fpn_channels": "fpn_channels",
               "mask_channels": "mask_channels", "dyn_layers": "dyn_layers"}


def distributions(space: str | SpaceSpec) -> dict[str, CategoricalDistribution]:
    spec = get_space(space)
    dists = {name: CategoricalDistribution(getattr(spec, _SPEC_FIELD[name])) for name in GLOBAL_CHOICES}
    for s in range(len(spec.stages)):
        dists[f"depth{s}"] = CategoricalDistribution(spec.depths)
        dists[f"se{s}"] = CategoricalDistribution(spec.se)
        for b in range(spec.max_depth):
            dists[f"kernel{s}_{b}"] = CategoricalDistribution(spec.kernels)
            dists[f"expand{s}_{b}"] = CategoricalDistribution(spec.expands)
    return dists


def arch_from_params(space: str | SpaceSpec, params: dict) -> ArchConfig:
    spec = get_space(space)
    stages = range(len(spec.stages))
    depths = tuple(params[f"depth{s}"] for s in stages)
    return ArchConfig(space=spec.name, **{name: params[name] for name in GLOBAL_CHOICES}, depths=depths,
                      kernels=tuple(tuple(params[f"kernel{s}_{b}"] for b in range(depths[s])) for s in stages),
                      expands=tuple(tuple(params[f"expand{s}_{b}"] for b in range(depths[s])) for s in stages),
                      se=tuple(params[f"se{s}"] for s in stages))


def suggest_arch(trial: optuna.Trial, space: str | SpaceSpec) -> ArchConfig:
    params = {name: trial.suggest_categorical(name, dist.choices) for name, dist in distributions(space).items()}
    return arch_from_params(space, params)


def arch_params(arch: ArchConfig) -> tuple[dict, dict[str, CategoricalDistribution]]:
    """The parameters (active blocks only) and their distributions, to record an arch as a trial."""
    dists = distributions(arch.spec)
    params = {name: getattr(arch, name) for name in GLOBAL_CHOICES}
    for s, depth in enumerate(arch.depths):
        params[f"depth{s}"], params[f"se{s}"] = depth, arch.se[s]
        for b in range(depth):
            params[f"kernel{s}_{b}"], params[f"expand{s}_{b}"] = arch.kernels[s][b], arch.expands[s][b]
    return params, {name: dists[name] for name in params}
