"""Every case of `benchmarks/reliability.py`: bad input, interruptions and concurrent runs end as
promised (one line and exit 2, work kept, nothing half-written, every request answered)."""

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "reliability", Path(__file__).resolve().parents[1] / "benchmarks" / "reliability.py")
reliability = importlib.util.module_from_spec(_spec)
sys.modules["reliability"] = reliability  # its dataclasses look their module up by name
_spec.loader.exec_module(reliability)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return reliability.tiny_table(tmp_path_factory.mktemp("reliability"))


CASES = [case.name for case in reliability.cases(Path("unused"))]


@pytest.mark.parametrize("name", CASES)
def test_case_ends_as_promised(name, table, tmp_path):
    [case] = [c for c in reliability.cases(table) if c.name == name]
    ok, observed = case.check(tmp_path)
    assert ok, f"{case.name}: expected {case.expected}; observed {observed}"
