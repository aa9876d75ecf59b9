import pytest
import torch

from search_spaces.tracing_check import calibrate_bn

TINY = "tracenet_tiny"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture
def calibrate():
    """BN statistics from data, so BatchNorm is not the identity in exactness tests."""
    return lambda model, seed=0: calibrate_bn(model, torch.Generator().manual_seed(seed))
