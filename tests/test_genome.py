import numpy as np
import pytest

from search_spaces import ArchConfig
from search_spaces.space import genome_space, get_space

TINY = "tracenet_tiny"


def test_encode_decode_round_trip_and_latent_genes():
    space = genome_space(TINY)
    rng = np.random.default_rng(0)
    for seed in range(30):
        arch = ArchConfig.sample(seed, TINY)
        genome = space.encode(arch)
        assert space.decode(genome) == arch
        # latent genes (blocks beyond a stage's depth) do not change the architecture or its key
        noisy = np.where(space.active(genome)[0], genome, space.sample(rng, 1)[0])
        assert space.decode(noisy) == arch and space.keys(noisy) == space.keys(genome)
    with pytest.raises(ValueError, match="not a member"):
        space.encode(ArchConfig.smallest("tracenet_mbv3"))


def test_active_mask_follows_depth():
    space = genome_space(TINY)
    spec = get_space(TINY)
    arch = ArchConfig.smallest(TINY)  # every stage at the smallest depth
    active = space.active(space.encode(arch))[0]
    for gene, on in zip(space.genes, active, strict=True):
        assert on == (gene.block is None or gene.block < spec.depths[0])


def test_one_hot_is_fixed_length_injective_and_zero_for_latent_blocks():
    space = genome_space(TINY)
    archs = [ArchConfig.sample(seed, TINY) for seed in range(200)]
    codes = space.features(archs)
    assert codes.shape == (200, space.encoding_length) and codes.dtype == np.float32
    assert set(np.unique(codes)) <= {0.0, 1.0}
    by_code = {}
    for arch, code in zip(archs, codes, strict=True):
        by_code.setdefault(code.tobytes(), set()).add(arch)
    assert all(len(found) == 1 for found in by_code.values())
    # hand check: the smallest member encodes its first choice everywhere it is active
    small = space.features([ArchConfig.smallest(TINY)])[0]
    spec = get_space(TINY)
    blocks_on = len(spec.stages) * spec.depths[0] * 2
    assert small.sum() == 5 + len(spec.stages) * (1 + int(spec.se[0])) + blocks_on


def test_vectorised_variation_is_deterministic_and_stays_in_the_space():
    space = genome_space(TINY)
    rng = np.random.default_rng(1)
    a, b = space.sample(rng, 50), space.sample(rng, 50)
    again = [space.mutate(a, np.random.default_rng(5), 0.5) for _ in range(2)]
    assert np.array_equal(*again)
    assert np.array_equal(space.mutate(a, rng, 0.0), a)
    assert (space.mutate(a, rng, 1.0) != a).any()
    kids = space.crossover(a, b, rng)
    assert ((kids == a) | (kids == b)).all()
    assert ((kids == a).mean() > 0.3) and ((kids == b).mean() > 0.3)
    for genome in space.mutate(kids, rng, 0.3):
        space.decode(genome)  # constructing validates membership
    assert ((0 <= kids) & (kids < space.cardinality)).all()
