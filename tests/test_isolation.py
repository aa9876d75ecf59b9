"""Nothing in TraceNAS changes process-wide state behind the caller's back: tracing rules, the space
registry, torch's thread count and a Ray session belong to the object or block that uses them."""

import pytest
import torch
from torch import nn

from nas.latency.profiling.backends import get_backend
from search_spaces import DEFAULT_RULES, ReceptiveFieldTracer, TracingError
from search_spaces.common.resources import ray_session, torch_threads
from search_spaces.space import get_space, list_spaces


class Shrink(nn.Module):  # a user's per-pixel module built from a function the default rules do not know
    def forward(self, x):
        return torch.nn.functional.hardshrink(x)


def test_extending_tracing_rules_changes_only_the_tracer_given_them():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Shrink(), nn.Conv2d(4, 4, 3, padding=1))
    with pytest.raises(TracingError, match="hardshrink"):
        ReceptiveFieldTracer(net)
    rules = DEFAULT_RULES.with_pointwise(Shrink)
    assert ReceptiveFieldTracer(net, rules).output_sizes((16, 16)) == [(16, 16)]
    assert Shrink not in DEFAULT_RULES.pointwise_modules
    with pytest.raises(TracingError, match="hardshrink"):  # the default rules are as they were
        ReceptiveFieldTracer(net)


def test_fixed_spaces_do_not_join_the_registry():
    before = list_spaces()
    assert get_space("fixed:mobilenetv2_100") is get_space("fixed:mobilenetv2_100")  # made once, cached
    assert list_spaces() == before


def test_a_torch_backend_borrows_the_thread_count():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(torch.get_num_threads())
            return x

    previous = torch.get_num_threads()
    with torch_threads(2):
        run = get_backend("torch", 1).prepare(Probe(), (torch.zeros(1),))
        run()
        assert seen == [1] and torch.get_num_threads() == 2
    assert torch.get_num_threads() == previous


def test_a_ray_session_started_by_the_caller_keeps_running():
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    with ray_session(num_cpus=1, configure_logging=False):  # nobody's session yet: started, then shut down
        assert ray.is_initialized()
    assert not ray.is_initialized()
    ray.init(num_cpus=1, include_dashboard=False, configure_logging=False)
    try:
        with ray_session():
            pass
        assert ray.is_initialized()  # the caller's own session survives
    finally:
        ray.shutdown()
