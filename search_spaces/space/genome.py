"""Genomes: architectures as fixed-length vectors of choice indices, so that a whole population is
sampled, mutated, crossed and encoded with a handful of numpy operations (Once-for-All's evolution
at numpy speed).

Gene order: resolution, width_mult, fpn_channels, mask_channels, dyn_layers, then per stage its depth,
its SE switch and the kernel and expand ratio of every block up to the deepest depth. Genes of blocks
beyond a stage's depth are latent, as in Once-for-All: they do not change the architecture, they
are inherited and mutated, and a mutation that deepens the stage exposes them. `canonical` zeroes
them, so two genomes of one architecture have one canonical form.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from search_spaces.common.errors import InvalidValueError
from search_spaces.space.arch_config import ArchConfig
from search_spaces.space.registry import get_space
from search_spaces.space.spec import SpaceSpec

GLOBAL_GENES = {"resolution": "resolutions", "width_mult": "width_mults", "fpn_channels": "fpn_channels",
                "mask_channels": "mask_channels", "dyn_layers": "dyn_layers"}


@dataclass(frozen=True)
class Gene:
    name: str  # also the Optuna parameter name (nas/arch_params.py)
    choices: tuple
    stage: int | None = None  # block genes: the stage whose depth decides whether they are active
    block: int | None = None


class GenomeSpace:
    """The genes of one space and vectorised operations on `(n, len(genes))` int arrays."""

    def __init__(self, spec: SpaceSpec):
        self.spec = spec
        genes = [Gene(name, getattr(spec, field)) for name, field in GLOBAL_GENES.items()]
        for s in range(len(spec.stages)):
            genes += [Gene(f"depth{s}", spec.depths), Gene(f"se{s}", spec.se)]
            for b in range(spec.max_depth):
                genes += [Gene(f"kernel{s}_{b}", spec.kernels, s, b), Gene(f"expand{s}_{b}", spec.expands, s, b)]
        self.genes = tuple(genes)
        self.index = {g.name: i for i, g in enumerate(genes)}
        self.cardinality = np.array([len(g.choices) for g in genes])
        depth_gene = [self.index[f"depth{s}"] for s in range(len(spec.stages))]
        block = [i for i, g in enumerate(genes) if g.block is not None]
        self._block_genes = np.array(block)
        self._block_depth_gene = np.array([depth_gene[genes[i].stage] for i in block])
        self._block_position = np.array([genes[i].block for i in block])
        self._depth_values = np.array(spec.depths)
        # encoding: one-hot per gene, except SE as one 0/1 column (the predictor's historic layout)
        self._codes = [np.array([[float(c)] for c in g.choices], dtype=np.float32) if g.name.startswith("se")
                       else np.eye(len(g.choices), dtype=np.float32) for g in genes]

    def __len__(self) -> int:
        return len(self.genes)

    @property
    def encoding_length(self) -> int:
        """Width of `one_hot` vectors."""
        return sum(code.shape[1] for code in self._codes)

    # ---------------------------------------------------------------- structure
    def active(self, genomes: np.ndarray) -> np.ndarray:
        """Bool mask: genes that take part in the architecture (block genes within their stage's depth)."""
        genomes = np.atleast_2d(genomes)
        mask = np.ones(genomes.shape, dtype=bool)
        depth = self._depth_values[genomes[:, self._block_depth_gene]]
        mask[:, self._block_genes] = self._block_position < depth
        return mask

    def canonical(self, genomes: np.ndarray) -> np.ndarray:
        genomes = np.atleast_2d(genomes)
        return np.where(self.active(genomes), genomes, 0)

    def keys(self, genomes: np.ndarray) -> list[bytes]:
        """One hashable key per architecture (memoisation across genomes with different latent genes)."""
        canonical = self.canonical(genomes).astype(np.int8)
        return [row.tobytes() for row in canonical]

    # ---------------------------------------------------------------- conversion
    def decode(self, genome: np.ndarray) -> ArchConfig:
        value = {g.name: g.choices[int(i)] for g, i in zip(self.genes, genome, strict=True)}
        return self.from_params(value)

    def from_params(self, params: dict[str, Any]) -> ArchConfig:
        """The architecture named by gene values (latent block genes may be missing)."""
        stages = range(len(self.spec.stages))
        depths = tuple(params[f"depth{s}"] for s in stages)
        return ArchConfig(space=self.spec.name, **{name: params[name] for name in GLOBAL_GENES}, depths=depths,
                          kernels=tuple(tuple(params[f"kernel{s}_{b}"] for b in range(depths[s])) for s in stages),
                          expands=tuple(tuple(params[f"expand{s}_{b}"] for b in range(depths[s])) for s in stages),
                          se=tuple(params[f"se{s}"] for s in stages))

    def params(self, arch: ArchConfig) -> dict[str, Any]:
        """Gene values of the active genes of `arch`."""
        params = {name: getattr(arch, name) for name in GLOBAL_GENES}
        for s, depth in enumerate(arch.depths):
            params[f"depth{s}"], params[f"se{s}"] = depth, arch.se[s]
            for b in range(depth):
                params[f"kernel{s}_{b}"], params[f"expand{s}_{b}"] = arch.kernels[s][b], arch.expands[s][b]
        return params

    def encode(self, arch: ArchConfig) -> np.ndarray:
        """The canonical genome of `arch` (latent genes 0)."""
        if arch.space != self.spec.name:
            raise InvalidValueError(f"architecture of space '{arch.space}' is not a member of '{self.spec.name}'")
        genome = np.zeros(len(self.genes), dtype=np.int64)
        for name, value in self.params(arch).items():
            genome[self.index[name]] = self.genes[self.index[name]].choices.index(value)
        return genome

    def one_hot(self, genomes: np.ndarray) -> np.ndarray:
        """Fixed-length float32 encodings for accuracy predictors; latent genes encode as zeros."""
        genomes = np.atleast_2d(genomes)
        active = self.active(genomes)
        return np.concatenate([code[genomes[:, i]] * active[:, i, None] for i, code in enumerate(self._codes)],
                              axis=1)

    def features(self, archs: list[ArchConfig]) -> np.ndarray:
        """`one_hot` of architectures (the accuracy predictor's input)."""
        return self.one_hot(np.stack([self.encode(a) for a in archs]))

    # ---------------------------------------------------------------- variation (Once-for-All's operators)
    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Every gene drawn uniformly."""
        return rng.integers(0, self.cardinality, size=(n, len(self.genes)))

    def mutate(self, genomes: np.ndarray, rng: np.random.Generator, prob: float) -> np.ndarray:
        """Resample each gene with probability `prob`."""
        redraw = rng.random(genomes.shape) < prob
        return np.where(redraw, rng.integers(0, self.cardinality, size=genomes.shape), genomes)

    def crossover(self, a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Each gene from either parent with equal probability."""
        return np.where(rng.random(a.shape) < 0.5, a, b)


@cache
def _genome_space(spec: SpaceSpec) -> GenomeSpace:
    return GenomeSpace(spec)


def genome_space(space: str | SpaceSpec) -> GenomeSpace:
    return _genome_space(get_space(space))
