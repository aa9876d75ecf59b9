import pytest
import torch

from search_spaces.students.tracing_check import calibrate_bn

TINY = "tracenet_tiny"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture
def calibrate():
    """BN statistics from data, so BatchNorm is not the identity in exactness tests."""
    return lambda model, seed=0: calibrate_bn(model, torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def tiny_table_path(tmp_path_factory):
    """A complete table for the tiny space: latency proportional to output area x output channels."""
    from nas.latency.profiling.profiler import profile_keys
    from nas.latency.table import Entry, LatencyTable

    table = LatencyTable(device={"name": "tiny-unit", "runtime": "torch", "threads": 1}, provenance="measured",
                         space=TINY)
    for key in profile_keys(TINY):
        attrs = dict(key.attrs)
        ms = key.out_hw[0] * key.out_hw[1] * int(attrs.get("cout", attrs.get("c", attrs.get("f", 8)))) * 1e-5
        table.add(str(key), Entry(count=1, mean=ms, median=ms, p90=ms, std=0.0))
    return table.save(tmp_path_factory.mktemp("tables") / "tiny-unit.json")


@pytest.fixture
def interrupted_and_resumed(tmp_path, monkeypatch):
    """`run(config, check=None)`: train `config` straight through, and again with Ctrl-C at step 2 then a
    resume; returns (straight, resumed) trainers. `check(trainer, batch)` sees every batch of the
    interrupted run."""
    from distill.training.engine import Trainer

    def run(config, check=None):
        straight = Trainer(config, tmp_path / "straight", progress=False)
        straight.fit()
        original = Trainer._step_losses

        def crash_at_step_3(self, batch):
            if check is not None:
                check(self, batch)
            if self.step == 2:
                raise KeyboardInterrupt
            return original(self, batch)

        with monkeypatch.context() as patch:
            patch.setattr(Trainer, "_step_losses", crash_at_step_3)
            with pytest.raises(KeyboardInterrupt):
                Trainer(config, tmp_path / "resumed", progress=False).fit()
        resumed = Trainer(config, tmp_path / "resumed", resume=True, progress=False)
        assert resumed.step == 2
        resumed.fit()
        return straight, resumed

    return run
