import dataclasses
import itertools
import json

import numpy as np
import pytest

from search_spaces import ArchConfig, ArchConfigError, SpaceSpec, StageSpec, UnknownSpaceError
from search_spaces.space import get_space, list_spaces, registered_space

TINY = "tracenet_tiny"

MICRO = SpaceSpec(
    name="test_micro", stages=tuple(StageSpec(8, 2, "relu") for _ in range(4)), resolutions=(64,),
    width_mults=(1.0,), depths=(1, 2), kernels=(3, 5), expands=(2,), fpn_channels=(8,), mask_channels=(4,),
    dyn_layers=(1,), se=(False,))


@pytest.fixture
def micro():
    """The micro space, registered only while the test runs."""
    with registered_space(MICRO) as spec:
        yield spec
    assert "test_micro" not in list_spaces()


def test_round_trip_json_and_dict():
    for seed in range(20):
        arch = ArchConfig.sample(seed, TINY)
        assert ArchConfig.from_json(arch.to_json()) == arch
        assert ArchConfig.from_dict(json.loads(json.dumps(arch.to_dict()))) == arch
        assert hash(ArchConfig.from_json(arch.to_json())) == hash(arch)
    # a result file that wraps the config under "arch" is accepted too
    arch = ArchConfig.largest(TINY)
    assert ArchConfig.from_json(json.dumps({"arch": arch.to_dict(), "score": 1.0})) == arch


def test_is_immutable():
    arch = ArchConfig.smallest(TINY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        arch.resolution = 128


@pytest.mark.parametrize("field, value, needle", [
    ("resolution", 100, "resolution=100"),
    ("width_mult", 0.3, "width_mult=0.3"),
    ("fpn_channels", 12, "fpn_channels=12"),
    ("dyn_layers", 4, "dyn_layers=4"),
    ("depths", [1, 2, 3, 1, 1], "depths[2]=3"),
    ("se", [False, False, "yes", False, False], "se[2]='yes'"),
])
def test_invalid_choice_names_field_and_allowed_values(field, value, needle):
    data = ArchConfig.smallest(TINY).to_dict() | {field: value}
    with pytest.raises(ArchConfigError) as err:
        ArchConfig.from_dict(data)
    message = str(err.value)
    assert needle in message and "allowed values" in message
    assert "\n" not in message


def test_invalid_block_choice_and_block_count():
    data = ArchConfig.smallest(TINY).to_dict()
    data["kernels"][1] = [4]
    with pytest.raises(ValueError, match=r"kernels\[1\]\[0\]=4 .*allowed values: \[3, 5, 7\]"):
        ArchConfig.from_dict(data)
    data = ArchConfig.smallest(TINY).to_dict()
    data["expands"][0] = [2, 2]  # depth of stage 0 is 1
    with pytest.raises(ValueError, match=r"expands\[0\] must list one value per block"):
        ArchConfig.from_dict(data)


def test_malformed_input_errors():
    with pytest.raises(ArchConfigError, match="not valid JSON"):
        ArchConfig.from_json("{nope")
    with pytest.raises(ArchConfigError, match="unknown architecture field"):
        ArchConfig.from_dict(ArchConfig.smallest(TINY).to_dict() | {"colour": "red"})
    with pytest.raises(ArchConfigError, match="missing field"):
        ArchConfig.from_dict({"space": TINY})
    with pytest.raises(UnknownSpaceError, match="unknown space 'nope'; available:"):
        ArchConfig.sample(0, "nope")
    # an int where bools/ints are expected, bools are not ints
    with pytest.raises(ArchConfigError):
        ArchConfig.from_dict(ArchConfig.smallest(TINY).to_dict() | {"resolution": True})


def test_largest_smallest_and_members():
    spec = get_space(TINY)
    big, small = ArchConfig.largest(TINY), ArchConfig.smallest(TINY)
    assert big.resolution == max(spec.resolutions) and small.resolution == min(spec.resolutions)
    assert all(d == max(spec.depths) for d in big.depths) and all(big.se) and not any(small.se)
    assert all(k == max(spec.kernels) for ks in big.kernels for k in ks)


def test_space_size_matches_enumeration(micro):
    spec = get_space("test_micro")
    per_stage = []
    for depth in spec.depths:
        for kernels in itertools.product(spec.kernels, repeat=depth):
            for expands in itertools.product(spec.expands, repeat=depth):
                per_stage.append((depth, kernels, expands))
    members = set()
    for stages in itertools.product(per_stage, repeat=len(spec.stages)):
        members.add(ArchConfig(space="test_micro", resolution=64, width_mult=1.0,
                               depths=[s[0] for s in stages], kernels=[s[1] for s in stages],
                               expands=[s[2] for s in stages], se=[False] * 4, fpn_channels=8,
                               mask_channels=4, dyn_layers=1))
    assert len(members) == spec.size() == ArchConfig.space_size("test_micro") == 6**4
    rng = np.random.default_rng(0)
    samples = {ArchConfig.sample(rng, "test_micro") for _ in range(5000)}
    assert samples <= members and len(samples) > 0.8 * len(members)  # sampling reaches most of the space
    assert get_space("tracenet_mbv3").size() == 5 * 3 * 4 * 3 * 3 * (2 * (9**2 + 9**3 + 9**4)) ** 5


def test_sample_se_switch():
    assert not any(ArchConfig.sample(3, TINY, se=False).se)
    assert all(ArchConfig.sample(3, TINY, se=True).se)
